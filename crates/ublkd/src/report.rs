//! The description of a device printed by `add --json` and `list`.

use serde::Serialize;
use ublk::features;
use ublk::uapi::ublksrv_ctrl_dev_info;

use crate::state::{DeviceState, pid_alive};

#[derive(Debug, Serialize)]
pub struct DeviceReport {
    pub id: u32,
    pub block_device: String,
    pub char_device: String,
    /// live, quiesced, fail-io, dead (driver state), or orphan (no daemon serves it).
    pub state: String,
    pub pid: i32,
    pub queues: u16,
    pub depth: u16,
    pub max_io: u32,
    pub size: Option<u64>,
    pub target: Option<String>,
    pub spec: Option<crate::spec::TargetSpec>,
    pub mode: Option<String>,
    /// How requests reach the daemon: batch (UBLK_F_BATCH_IO) or per-tag commands.
    pub io_cmds: &'static str,
    pub flags: Vec<String>,
    /// `add --name`, if given.
    pub name: Option<String>,
    /// Generated at add; udev links it as /dev/disk/by-id/ublk-SERIAL.
    pub serial: Option<String>,
    /// The uid owning an unprivileged device (none: root's).
    pub owner: Option<u32>,
}

impl DeviceReport {
    pub fn new(info: &ublksrv_ctrl_dev_info, st: Option<&DeviceState>) -> DeviceReport {
        let pid = if info.ublksrv_pid > 0 {
            info.ublksrv_pid
        } else {
            st.map(|s| s.pid).unwrap_or(0)
        };
        let mut state = features::state_name(info.state).to_string();
        if state == "live" && !pid_alive(pid) {
            state = "orphan".into();
        }
        DeviceReport {
            id: info.dev_id,
            block_device: format!("/dev/ublkb{}", info.dev_id),
            char_device: format!("/dev/ublkc{}", info.dev_id),
            state,
            pid,
            queues: info.nr_hw_queues,
            depth: info.queue_depth,
            max_io: info.max_io_buf_bytes,
            size: st.map(|s| s.size),
            target: st.map(|s| s.target.describe()),
            spec: st.map(|s| s.target.clone()),
            mode: st.map(|s| s.mode.name().to_string()),
            io_cmds: if info.flags & ublk::uapi::UBLK_F_BATCH_IO != 0 {
                "batch"
            } else {
                "per-tag"
            },
            flags: features::names(info.flags),
            name: st.and_then(|s| s.name.clone()),
            serial: st.and_then(|s| s.serial.clone()),
            owner: (info.flags & ublk::uapi::UBLK_F_UNPRIVILEGED_DEV != 0)
                .then_some(info.owner_uid),
        }
    }
}

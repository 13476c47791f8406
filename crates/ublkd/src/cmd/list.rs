//! `ublkd list`: the devices the driver knows, with what our state files add. Root sees every
//! device; a user sees the unprivileged devices they own (the driver answers nobody else).

use std::process::ExitCode;

use clap::Args;
use targets::size::format_size;
use ublk::Control;

use crate::cmd::{device_error, not_ours};
use crate::report::DeviceReport;
use crate::state;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this device.
    #[arg(short = 'n', long = "number")]
    id: Option<u32>,
    /// Print JSON (an array of devices).
    #[arg(long)]
    json: bool,
}

/// Ids of the ublk devices that exist now (from /dev/ublkcN nodes).
pub fn device_ids() -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/sys/class/ublk-char")
        .or_else(|_| std::fs::read_dir("/dev"))
        .map(|rd| {
            rd.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("ublkc")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

pub fn run(a: ListArgs) -> ExitCode {
    let mut ctrl = match Control::open() {
        Ok(c) => c,
        Err(e) => return crate::fail(e),
    };
    let ids = match a.id {
        Some(id) => vec![id],
        None => device_ids(),
    };
    let mut reports = Vec::new();
    for id in ids {
        match ctrl.get_dev_info(id) {
            Ok(info) => reports.push(DeviceReport::new(
                &info,
                state::load_owned(id, info.owner_uid).as_ref(),
            )),
            // Gone meanwhile, or someone else's: a user sees only their own devices.
            Err(e)
                if a.id.is_none() && (e.raw_os_error() == Some(libc::ENODEV) || not_ours(&e)) => {}
            Err(e) => return crate::fail(device_error(id, &e)),
        }
    }
    if a.json {
        return crate::out::print(serde_json::to_string_pretty(&reports).unwrap_or_default());
    }
    let mut text = format!(
        "{:<4} {:<14} {:<12} {:<16} {:<8} {:>6} {:>6} {:>7} {:<10} {:<8} {:>8} {:>6}  TARGET",
        "ID",
        "DEVICE",
        "NAME",
        "SERIAL",
        "STATE",
        "QUEUES",
        "DEPTH",
        "SIZE",
        "MODE",
        "IO_CMDS",
        "PID",
        "OWNER"
    );
    for r in &reports {
        text += &format!(
            "\n{:<4} {:<14} {:<12} {:<16} {:<8} {:>6} {:>6} {:>7} {:<10} {:<8} {:>8} {:>6}  {}",
            r.id,
            r.block_device,
            r.name.as_deref().unwrap_or("-"),
            r.serial.as_deref().unwrap_or("-"),
            r.state,
            r.queues,
            r.depth,
            r.size.map(format_size).unwrap_or_else(|| "?".into()),
            r.mode.as_deref().unwrap_or("?"),
            r.io_cmds,
            r.pid,
            r.owner.map_or("root".to_string(), |u| u.to_string()),
            r.target.as_deref().unwrap_or("(no state file)")
        );
    }
    crate::out::print(text)
}

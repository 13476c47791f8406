//! Per-device state files: who serves a device and what it serves, so `list` can describe it
//! and a recovering daemon can reopen the same target. Root's are in /run/ublkd; a non-root
//! user's (unprivileged devices) in `$XDG_RUNTIME_DIR/ublkd`, which only that user can write.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use ublk::BufMode;

use crate::device_args::Recovery;
use crate::identity::Identity;
use crate::spec::TargetSpec;

/// Where this user's state files live (UBLKD_STATE_DIR overrides it).
pub fn state_dir() -> Result<PathBuf, String> {
    if let Some(d) = std::env::var_os("UBLKD_STATE_DIR") {
        return Ok(PathBuf::from(d));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(PathBuf::from("/run/ublkd"));
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => Ok(PathBuf::from(d).join("ublkd")),
        _ => Err("XDG_RUNTIME_DIR is not set: a non-root user's device state lives in $XDG_RUNTIME_DIR/ublkd (set it, or UBLKD_STATE_DIR)".into()),
    }
}

/// `state_dir()` for the functions below. Commands that write state check `state_dir()` first;
/// without one, a path under /dev/null stands in: it can never be created, so nothing is
/// written anywhere else.
pub fn dir() -> PathBuf {
    state_dir().unwrap_or_else(|_| PathBuf::from("/dev/null/ublkd"))
}

/// Where root finds the state file of an unprivileged device owned by `uid`: that user's
/// runtime directory as systemd-logind makes it (`/run/user/UID`).
fn owner_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/run/user/{uid}/ublkd"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    pub id: u32,
    pub pid: i32,
    pub target: TargetSpec,
    pub queues: u16,
    pub depth: u16,
    pub max_io: u32,
    pub mode: BufMode,
    pub size: u64,
    pub block_device: String,
    pub log: PathBuf,
    #[serde(default = "default_recovery")]
    pub recovery: Recovery,
    #[serde(default)]
    pub busy_poll_us: Option<u64>,
    #[serde(default)]
    pub pin_queues: bool,
    /// What tells the daemon apart from a later process with the same pid (absent in state
    /// files of older versions: their pid is never signalled on its word alone).
    #[serde(default)]
    pub identity: Option<Identity>,
    /// The `--restart` supervisor watching the daemon, if any.
    #[serde(default)]
    pub supervisor_pid: Option<i32>,
    #[serde(default)]
    pub supervisor_identity: Option<Identity>,
    /// How many daemons took the device over after the first.
    #[serde(default)]
    pub recoveries: u32,
    /// `add --name` (unique among live devices).
    #[serde(default)]
    pub name: Option<String>,
    /// Generated at `add`, kept by every later daemon (absent in older state files).
    #[serde(default)]
    pub serial: Option<String>,
}

fn default_recovery() -> Recovery {
    Recovery::Off
}

impl DeviceState {
    /// How the device's queue threads run, for a daemon taking it over.
    pub fn tuning(&self) -> ublk::QueueTuning {
        crate::device_args::queue_tuning(self.busy_poll_us, self.pin_queues)
    }

    /// The state of a device this process now serves.
    pub fn new(
        dev: &ublk::Device,
        target: TargetSpec,
        size: u64,
        recovery: Recovery,
    ) -> DeviceState {
        let id = dev.id();
        DeviceState {
            id,
            pid: std::process::id() as i32,
            target,
            queues: dev.info.nr_hw_queues,
            depth: dev.info.queue_depth,
            max_io: dev.info.max_io_buf_bytes,
            mode: dev.mode,
            size,
            block_device: format!("/dev/ublkb{id}"),
            log: log_path_for(id),
            recovery,
            busy_poll_us: None,
            pin_queues: false,
            identity: Identity::current(),
            supervisor_pid: None,
            supervisor_identity: None,
            recoveries: 0,
            name: None,
            serial: None,
        }
    }
}

pub fn path_for(id: u32) -> PathBuf {
    dir().join(format!("{id}.json"))
}

pub fn log_path_for(id: u32) -> PathBuf {
    dir().join(format!("{id}.log"))
}

/// Write atomically (temp file + rename), so readers never see half a file.
pub fn save(s: &DeviceState) -> io::Result<()> {
    save_in(&state_dir().map_err(io::Error::other)?, s)
}

pub fn load(id: u32) -> Option<DeviceState> {
    load_path(&path_for(id))
}

/// The state of device `id` owned by `owner_uid`: ours, or for root, the owner's (an
/// unprivileged device's daemon keeps it in its user's runtime directory).
pub fn load_owned(id: u32, owner_uid: u32) -> Option<DeviceState> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    load(id).or_else(|| {
        (root && owner_uid != 0)
            .then(|| load_path(&owner_dir(owner_uid).join(format!("{id}.json"))))
            .flatten()
    })
}

pub fn remove(id: u32) {
    let _ = std::fs::remove_file(path_for(id));
}

/// Ids with a state file.
pub fn all_ids() -> Vec<u32> {
    ids_in(&dir())
}

// The same, in a given directory (the functions above use `state_dir()`; tests their own).

fn save_in(dir: &Path, s: &DeviceState) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.json.tmp", s.id));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(s).map_err(io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join(format!("{}.json", s.id)))
}

fn load_path(p: &Path) -> Option<DeviceState> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

fn ids_in(dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<u32> = rd
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    v.sort();
    v
}

/// Whether `pid` is a live process (not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised name) is the state; Z/X are dead.
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = DeviceState {
            id: 7,
            pid: std::process::id() as i32,
            target: serde_json::from_str(r#"{"type":"null","size":4096}"#).unwrap(),
            queues: 1,
            depth: 2,
            max_io: 4096,
            mode: BufMode::Copy,
            size: 4096,
            block_device: "/dev/ublkb7".into(),
            log: "/x".into(),
            recovery: Recovery::Reissue,
            busy_poll_us: None,
            pin_queues: false,
            identity: crate::identity::Identity::current(),
            supervisor_pid: None,
            supervisor_identity: None,
            recoveries: 0,
            name: Some("db".into()),
            serial: Some("0123456789abcdef".into()),
        };
        let dir = d.path();
        let file = dir.join("7.json");
        save_in(dir, &s).unwrap();
        assert_eq!(ids_in(dir), vec![7]);
        assert_eq!(load_path(&file).unwrap().target, s.target);
        assert_eq!(load_path(&file).unwrap().identity, s.identity);
        assert_eq!(load_path(&file).unwrap().name.as_deref(), Some("db"));
        assert_eq!(
            load_path(&file).unwrap().serial.as_deref(),
            Some("0123456789abcdef")
        );
        assert!(pid_alive(s.pid));
        assert!(!pid_alive(0));
        std::fs::remove_file(&file).unwrap();
        assert!(ids_in(dir).is_empty());
    }
}

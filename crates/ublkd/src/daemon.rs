//! Which live process serves a device, and which supervises it: from the driver's pid and the
//! state file, each checked (identity.rs) before anyone signals it.

use crate::identity::{Pidfd, cmdline, holds_char_dev, parent};
use crate::state::DeviceState;

/// The process serving device `id`, verified: the state file's pid if the process still has
/// the recorded identity, else the driver's `ublksrv_pid` or the state file's pid (an older state
/// file records no identity) if that process holds the device's char device. `None` when no
/// process can be shown to be the daemon: it is gone, or its pid now names another process.
pub fn find_daemon(id: u32, ublksrv_pid: i32, st: Option<&DeviceState>) -> Option<Pidfd> {
    if let Some(st) = st
        && let Some(ident) = &st.identity
        && let Some(p) = Pidfd::verified(st.pid, |p| ident.matches(p))
    {
        return Some(p);
    }
    let mut pids = vec![ublksrv_pid];
    pids.extend(st.map(|s| s.pid).filter(|p| *p != ublksrv_pid));
    pids.into_iter()
        .find_map(|pid| Pidfd::verified(pid, |p| holds_char_dev(p, id)))
}

/// The `--restart` supervisor of device `id`, verified: the recorded identity, or (older state
/// files) the parent of the verified daemon, running `ublkd supervise`.
pub fn find_supervisor(st: Option<&DeviceState>, daemon: Option<&Pidfd>) -> Option<Pidfd> {
    let st = st?;
    let pid = st.supervisor_pid?;
    match &st.supervisor_identity {
        Some(ident) => Pidfd::verified(pid, |p| ident.matches(p)),
        None => {
            let daemon = daemon?.pid();
            Pidfd::verified(pid, |p| {
                parent(daemon) == Some(p) && cmdline(p).iter().any(|a| a == "supervise")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    fn state_for(pid: i32) -> DeviceState {
        serde_json::from_value(serde_json::json!({
            "id": 7, "pid": pid,
            "target": {"type": "null", "size": 4096, "logical_block": 512},
            "queues": 1, "depth": 2, "max_io": 4096, "mode": "copy", "size": 4096,
            "block_device": "/dev/ublkb7", "log": "/x",
            "supervisor_pid": pid
        }))
        .unwrap()
    }

    /// A stale state file (its daemon and supervisor long gone) whose pids now name an unrelated
    /// live process: nothing may take that process for the daemon or the supervisor.
    #[test]
    fn stale_state_file_never_names_an_unrelated_process() {
        let mut child = sleeper();
        let pid = child.id() as i32;
        // Old format: no identities recorded; the process does not hold /dev/ublkc7.
        let mut st = state_for(pid);
        assert!(st.identity.is_none() && st.supervisor_identity.is_none());
        assert!(find_daemon(7, pid, Some(&st)).is_none());
        assert!(find_daemon(7, 0, Some(&st)).is_none());
        assert!(find_supervisor(Some(&st), None).is_none());
        // Identities recorded by the dead daemon and supervisor (here: this test process's).
        st.identity = Identity::current();
        st.supervisor_identity = Identity::current();
        assert!(find_daemon(7, 0, Some(&st)).is_none());
        assert!(find_supervisor(Some(&st), None).is_none());
        // The process really recorded is found.
        st.identity = Identity::of(pid);
        st.supervisor_identity = Identity::of(pid);
        assert_eq!(find_daemon(7, 0, Some(&st)).map(|p| p.pid()), Some(pid));
        assert!(find_supervisor(Some(&st), None).is_some());
        assert!(
            child.try_wait().unwrap().is_none(),
            "still running: never signalled"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

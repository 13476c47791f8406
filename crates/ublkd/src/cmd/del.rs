//! `ublkd del`: stop a device's daemon (SIGTERM: it stops and deletes its device) or, when no
//! daemon serves the device any more, stop and delete it ourselves. Stale state files go too.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ublk::Control;

use crate::state::{self, pid_alive};

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct DelArgs {
    /// The device to delete.
    #[arg(short = 'n', long = "number")]
    id: Option<u32>,
    /// Delete every ublk device, and clean up stale state files.
    #[arg(short = 'a', long)]
    all: bool,
}

fn gone(ctrl: &mut Control, id: u32) -> bool {
    matches!(ctrl.get_dev_info(id), Err(e) if e.raw_os_error() == Some(libc::ENODEV))
}

/// Delete one device. Returns an error message for the user.
fn delete(ctrl: &mut Control, id: u32) -> Result<(), String> {
    let info = match ctrl.get_dev_info(id) {
        Ok(i) => i,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            state::remove(id);
            return Err(format!("device {id} does not exist"));
        }
        Err(e) => return Err(format!("device {id}: {e}")),
    };
    let pid = if info.ublksrv_pid > 0 {
        info.ublksrv_pid
    } else {
        state::load(id).map(|s| s.pid).unwrap_or(0)
    };
    // A --restart supervisor would bring the daemon back: stop it first (it passes SIGTERM on
    // to the daemon and exits once the device is gone).
    if let Some(sup) = state::load(id)
        .and_then(|s| s.supervisor_pid)
        .filter(|p| pid_alive(*p))
    {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(sup, libc::SIGTERM) };
    } else if pid_alive(pid) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if pid_alive(pid) {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Stop waiting early if the daemon dies without finishing (killed mid-way).
        while Instant::now() < deadline && !gone(ctrl, id) && pid_alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !gone(ctrl, id) && pid_alive(pid) {
            tracing::warn!("daemon {pid} of device {id} did not stop in 30 s; killing it");
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    if !gone(ctrl, id) {
        let _ = ctrl.stop_dev(id);
        match ctrl.del_dev(id, ublk::device::DEL_DEV_LIMIT) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => return Err(format!("deleting device {id}: {e}")),
        }
    }
    state::remove(id);
    Ok(())
}

pub fn run(a: DelArgs) -> ExitCode {
    let mut ctrl = match Control::open() {
        Ok(c) => c,
        Err(e) => return crate::fail(e),
    };
    if let Some(id) = a.id {
        return match delete(&mut ctrl, id) {
            Ok(()) => ExitCode::SUCCESS,
            Err(m) => crate::fail(m),
        };
    }
    let mut ids = crate::cmd::list::device_ids();
    ids.extend(state::all_ids());
    ids.sort();
    ids.dedup();
    let mut failed = false;
    for id in ids {
        if gone(&mut ctrl, id) {
            state::remove(id); // stale: no device behind it
            continue;
        }
        if let Err(m) = delete(&mut ctrl, id) {
            eprintln!("ublkd: error: {m}");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

//! `ublkd del`: stop a device's daemon (SIGTERM: it stops and deletes its device) or, when no
//! daemon serves the device any more, stop and delete it ourselves. Stale state files go too.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ublk::Control;

use crate::process;
use crate::state;

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
    // Only a process shown to be the daemon (or the supervisor) is ever signalled: a pid from
    // the driver or the state file may name another process by now.
    let st = state::load(id);
    let daemon = process::find_daemon(id, info.ublksrv_pid, st.as_ref());
    // A --restart supervisor would bring the daemon back: stop it first (it passes SIGTERM on
    // to the daemon and exits once the device is gone).
    if let Some(sup) = process::find_supervisor(st.as_ref(), daemon.as_ref()) {
        let _ = sup.signal(libc::SIGTERM);
    } else if let Some(d) = &daemon {
        let _ = d.signal(libc::SIGTERM);
    }
    if let Some(d) = &daemon {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Stop waiting early if the daemon dies without finishing (killed mid-way).
        while Instant::now() < deadline && !gone(ctrl, id) && !d.exited() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !gone(ctrl, id) && !d.exited() {
            tracing::warn!(
                "daemon {} of device {id} did not stop in 30 s; killing it",
                d.pid()
            );
            let _ = d.signal(libc::SIGKILL);
            d.wait_exit(Duration::from_secs(5));
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

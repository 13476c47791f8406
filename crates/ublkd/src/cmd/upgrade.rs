//! `ublkd upgrade`: hand a running device to a new daemon (this binary) without an I/O error.
//! QUIESCE_DEV (Linux 6.16+) lets in-flight requests finish and holds new ones; the old daemon
//! sees its fetches aborted, finds the device quiesced and exits leaving it in place; a new daemon
//! recovers it and the held requests flow again. Kernels without QUIESCE are refused: stopping
//! the old daemon there would fail in-flight I/O.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ublk::uapi::{UBLK_F_QUIESCE, UBLK_S_DEV_LIVE};
use ublk::Control;

use crate::state::{self, pid_alive};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// The device to hand over.
    #[arg(short = 'n', long = "number")]
    pub id: u32,
    /// Print the new daemon's description as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: UpgradeArgs) -> ExitCode {
    let id = a.id;
    let mut ctrl = match Control::open() {
        Ok(c) => c,
        Err(e) => return crate::fail(e),
    };
    let info = match ctrl.get_dev_info(id) {
        Ok(i) => i,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            return crate::fail(format!("device {id} does not exist"))
        }
        Err(e) => return crate::fail(format!("device {id}: {e}")),
    };
    if info.flags & UBLK_F_QUIESCE == 0 {
        return crate::fail(format!(
            "device {id} cannot be quiesced (kernel without UBLK_F_QUIESCE, Linux < 6.16, or --recovery off): refusing a live upgrade that could fail I/O"
        ));
    }
    if info.state != UBLK_S_DEV_LIVE {
        return crate::fail(format!(
            "device {id} is not live; use 'ublkd recover -n {id}'"
        ));
    }
    let Some(st) = state::load(id) else {
        return crate::fail(format!(
            "device {id} has no state file: cannot tell which target to reopen"
        ));
    };
    let old_pid = st.pid;
    // A supervisor would race us to recover the device: it will see the old daemon exit cleanly
    // (status 0) and end; the new daemon is not supervised.
    let t0 = Instant::now();
    if let Err(e) = ctrl.quiesce_dev(id, 10_000) {
        return crate::fail(format!("QUIESCE_DEV {id}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pid_alive(old_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if pid_alive(old_pid) {
        return crate::fail(format!(
            "old daemon {old_pid} did not exit after the quiesce; the device stays quiesced (recover it with: ublkd recover -n {id})"
        ));
    }
    let args = vec![
        "serve-recover".into(),
        "--daemon".into(),
        "-n".into(),
        id.to_string(),
    ];
    let r = crate::cmd::add::spawn_daemon(args, a.json);
    tracing::info!(
        "device {id} handed from daemon {old_pid} to a new daemon in {} ms",
        t0.elapsed().as_millis()
    );
    r
}

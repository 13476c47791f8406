//! `ublkd upgrade`: hand a running device to a new daemon (this binary) without an I/O error.
//! QUIESCE_DEV (Linux 6.16+) lets in-flight requests finish and holds new ones; the old daemon
//! sees its fetches aborted, finds the device quiesced and exits leaving it in place; a new daemon
//! recovers it and the held requests flow again. Kernels without QUIESCE are refused: stopping
//! the old daemon there would fail in-flight I/O.
//!
//! Devices with batch I/O commands are not quiesced: on Linux 7.3, QUIESCE_DEV on a
//! UBLK_F_BATCH_IO device failed requests with EIO during the hand-over (the suite's upgrade test
//! showed it). Their old daemon is told to exit leaving the device instead (`HANDOVER_SIGNAL`);
//! with `--recovery reissue` the driver holds new I/O and reissues what was in flight to the
//! new daemon, exactly as after a crash. Other recovery modes would fail in-flight I/O, so they
//! are refused.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ublk::uapi::{
    UBLK_F_BATCH_IO, UBLK_F_QUIESCE, UBLK_F_USER_RECOVERY_REISSUE, UBLK_S_DEV_LIVE,
    UBLK_S_DEV_QUIESCED,
};

use crate::daemon;
use crate::state;

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
    let (mut ctrl, info) = match crate::cmd::open_device(id) {
        Ok(d) => d,
        Err(e) => return crate::fail(e),
    };
    if info.flags & ublk::uapi::UBLK_F_UNPRIVILEGED_DEV != 0 {
        return crate::fail(format!(
            "device {id} is unprivileged: the driver gives such a device no recovery, so no live upgrade"
        ));
    }
    let batch = info.flags & UBLK_F_BATCH_IO != 0;
    if batch && info.flags & UBLK_F_USER_RECOVERY_REISSUE == 0 {
        return crate::fail(format!(
            "device {id} uses batch I/O commands and was not created with --recovery reissue: refusing a live upgrade that would fail in-flight I/O"
        ));
    }
    if !batch && info.flags & UBLK_F_QUIESCE == 0 {
        return crate::fail(format!(
            "device {id} cannot be quiesced (kernel without UBLK_F_QUIESCE, Linux < 6.16, or --recovery off): refusing a live upgrade that could fail I/O"
        ));
    }
    if info.state != UBLK_S_DEV_LIVE {
        return crate::fail(format!(
            "device {id} is not live; use 'ublkd recover -n {id}'"
        ));
    }
    let Some(st) = state::load_owned(id, info.owner_uid) else {
        return crate::fail(format!(
            "device {id} has no state file: cannot tell which target to reopen"
        ));
    };
    // Signalled only once shown to be the daemon (its pid may name another process by now).
    let Some(old) = daemon::find_daemon(id, info.ublksrv_pid, Some(&st)) else {
        return crate::fail(format!(
            "cannot identify the daemon of device {id} (pid {} is gone or is another process now)",
            st.pid
        ));
    };
    let old_pid = old.pid();
    // A supervisor would race us to recover the device: it will see the old daemon exit cleanly
    // (status 0) and end; the new daemon is not supervised.
    let t0 = Instant::now();
    if batch {
        if let Err(e) = old.signal(crate::process::HANDOVER_SIGNAL) {
            return crate::fail(format!(
                "cannot signal daemon {old_pid} of device {id}: {e}"
            ));
        }
    } else if let Err(e) = ctrl.quiesce_dev(id, 10_000) {
        return crate::fail(format!("QUIESCE_DEV {id}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    if !old.wait_exit(Duration::from_secs(30)) {
        return crate::fail(format!(
            "old daemon {old_pid} did not exit after the quiesce; the device stays quiesced (recover it with: ublkd recover -n {id})"
        ));
    }
    // The driver holds the device for a new daemon once it has seen the old one's char device
    // closed; until then recovery would be refused as "not waiting for recovery".
    while Instant::now() < deadline {
        match ctrl.get_dev_info(id) {
            Ok(i) if i.state == UBLK_S_DEV_QUIESCED => break,
            Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return crate::fail(format!("device {id}: {e}")),
        }
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

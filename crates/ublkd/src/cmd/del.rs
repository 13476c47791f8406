//! `ublkd del`: stop a device and delete it, refusing one that is in use unless `--force`.
//! Every wait is bounded, so `del` always finishes. The sequence (docs/design.md, "Deleting a
//! device"):
//!
//! 1. Find the daemon and the `--restart` supervisor, each verified (`identity`): nothing else is
//!    ever signalled.
//! 2. Who uses the disk (`holders::scan`: mounts, openers, kernel holders). In use and no
//!    `--force`: refuse, naming the user; nothing has changed.
//! 3. `--force` on a device in use: the supervisor stands down, and the file systems on the disk
//!    are synced while the daemon still serves (bounded by FLUSH_LIMIT; a daemon that does not
//!    complete those writes is killed, so the driver stops waiting for it).
//! 4. `del` stops the device itself: TRY_STOP_DEV (UBLK_F_SAFE_STOP_DEV, Linux 7.0+; without
//!    `--force`), which the driver refuses with EBUSY if someone opened the disk since the scan,
//!    else STOP_DEV. The daemon keeps serving while the driver removes the disk; one that keeps
//!    the driver waiting past STOP_LIMIT is killed.
//! 5. The daemon sees its device stopped from outside, deletes it and exits; the supervisor
//!    stands down. A daemon still running after EXIT_LIMIT is killed.
//! 6. What is left (no daemon, or it died) is deleted here; DEL_DEV waits at most 3 s for the
//!    last user of the old disk (a file system still mounted on it after `--force`).

use std::cell::Cell;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use ublk::Control;
use ublk::ctrl::char_dev_exists;
use ublk::device::DEL_DEV_LIMIT;
use ublk::uapi::{UBLK_F_SAFE_STOP_DEV, UBLK_S_DEV_DEAD, UBLK_S_DEV_LIVE, UBLK_S_DEV_QUIESCED};

use crate::daemon;
use crate::holders::{self, Flushed};
use crate::identity::Pidfd;
use crate::state;

/// Syncing the file systems of a device in use, before `--force` stops it.
const FLUSH_LIMIT: Duration = Duration::from_secs(30);
/// STOP_DEV waits for the requests in flight; a daemon not completing them is killed after this.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// From the stop to the daemon's exit (its teardown is bounded at 10 s + 3 s).
const EXIT_LIMIT: Duration = Duration::from_secs(20);
/// After SIGKILL.
const KILL_LIMIT: Duration = Duration::from_secs(5);
/// For a supervisor told to stand down.
const STAND_DOWN_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct DelArgs {
    /// The device to delete.
    #[arg(
        short = 'n',
        long = "number",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    id: Option<u32>,
    /// Delete every ublk device (the same rule for each: devices in use are refused unless
    /// --force), and clean up stale state files.
    #[arg(short = 'a', long)]
    all: bool,
    /// Delete the device even if it is mounted or open: the file systems on it are synced first
    /// while its daemon still serves, then the disk goes away under its users (later I/O fails;
    /// unmount what was mounted). Bounded: seconds normally, under two minutes even when the
    /// daemon is stuck.
    #[arg(short = 'f', long)]
    force: bool,
}

fn gone(ctrl: &mut Control, id: u32) -> bool {
    matches!(ctrl.get_dev_info(id), Err(e) if e.raw_os_error() == Some(libc::ENODEV))
}

/// Kill a daemon that does not let us finish; once.
fn kill(daemon: Option<&Pidfd>, id: u32, why: &str) {
    if let Some(d) = daemon
        && !d.exited()
    {
        tracing::warn!("device {id}: {why}; killing its daemon {}", d.pid());
        let _ = d.signal(libc::SIGKILL);
        d.wait_exit(KILL_LIMIT);
    }
}

/// Tell a `--restart` supervisor to exit without touching the daemon or the device.
fn stand_down(sup: &mut Option<Pidfd>) {
    if let Some(s) = sup.take() {
        let _ = s.signal(crate::supervise::STAND_DOWN_SIGNAL);
        if !s.wait_exit(STAND_DOWN_LIMIT) {
            let _ = s.signal(libc::SIGKILL);
            s.wait_exit(KILL_LIMIT);
        }
    }
}

fn is_udev(u: &holders::Use) -> bool {
    matches!(u, holders::Use::Open { comm, .. } if comm.contains("udev"))
}

/// The users of device `id`, not counting udev, and whether udev has it open. udev opens a disk
/// to probe it (after it appears, after a writer closes it) and lets go at once, unless the
/// device holds its reads (no daemon): it gets 2 s, and is no reason to refuse a delete.
fn scan_settled(id: u32) -> (Vec<holders::Node>, Vec<holders::Use>, bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (nodes, mut uses) = holders::scan(id);
        let only_udev = uses.iter().all(is_udev);
        if uses.is_empty() || !only_udev || Instant::now() >= deadline {
            let udev = uses.iter().any(is_udev);
            uses.retain(|u| !is_udev(u));
            return (nodes, uses, udev);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Delete one device. Returns an error message for the user.
fn delete(ctrl: &mut Control, id: u32, force: bool) -> Result<(), String> {
    let info = match ctrl.get_dev_info(id) {
        Ok(i) => i,
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
            state::remove(id);
            return Err(format!("device {id} does not exist"));
        }
        Err(e) => return Err(crate::cmd::device_error(id, &e)),
    };
    if !char_dev_exists(id) {
        // DEL_DEV ran, and only waits for the last user of the old disk to let go.
        state::remove(id);
        return Err(format!(
            "device {id} is already deleted; its id stays taken until the last user of the old /dev/ublkb{id} lets go (unmount it)"
        ));
    }
    // 1. Only processes shown to be the daemon or the supervisor are ever signalled.
    let st = state::load_owned(id, info.owner_uid);
    let daemon = daemon::find_daemon(id, info.ublksrv_pid, st.as_ref());
    let mut supervisor = daemon::find_supervisor(st.as_ref(), daemon.as_ref());
    let has_disk = info.state != UBLK_S_DEV_DEAD;
    // 2. Who uses it.
    let (nodes, uses, udev) = scan_settled(id);
    if !uses.is_empty() && !force {
        let mut m = holders::describe(id, &uses);
        if daemon.is_none() && info.state == UBLK_S_DEV_QUIESCED {
            m += &format!(" (it has no daemon: 'ublkd recover -n {id}' lets held I/O finish)");
        }
        return Err(m);
    }
    // 3. Forced: sync what its users wrote while the daemon still serves.
    if !uses.is_empty() {
        stand_down(&mut supervisor);
        if info.state == UBLK_S_DEV_LIVE && daemon.is_some() {
            match holders::flush(&nodes, &uses, FLUSH_LIMIT) {
                Flushed::Done => {}
                Flushed::Failed => tracing::warn!("device {id}: syncing its users' writes failed"),
                Flushed::TimedOut => kill(
                    daemon.as_ref(),
                    id,
                    &format!(
                        "syncing its users' writes did not finish in {} s: what it has not written is lost",
                        FLUSH_LIMIT.as_secs()
                    ),
                ),
            }
        } else {
            tracing::warn!("device {id} has no daemon: the writes the driver holds for it fail");
        }
    }
    // 4. Stop it: the driver removes the disk, the daemon's fetches end. (A device without a
    // disk is stopped only for a daemon still starting it: that makes it give up.)
    if has_disk || daemon.is_some() {
        // (udev still probing it would make TRY_STOP_DEV refuse; it gets the 6.12 treatment.)
        let mut safe = !force && has_disk && !udev && info.flags & UBLK_F_SAFE_STOP_DEV != 0;
        let t0 = Instant::now();
        let killed = Cell::new(false);
        let tick = || {
            if !killed.get() && t0.elapsed() > STOP_LIMIT {
                killed.set(true);
                let why = format!(
                    "the driver still waits for its requests {} s into the stop",
                    STOP_LIMIT.as_secs()
                );
                kill(daemon.as_ref(), id, &why);
            }
        };
        let busy_until = Instant::now() + Duration::from_secs(2);
        loop {
            match ctrl.stop_dev_with(id, safe, &tick) {
                Ok(()) => break,
                Err(e) if safe && e.raw_os_error() == Some(libc::EBUSY) => {
                    // Opened since the scan: name the user if it is still there, else try
                    // again for a moment (a probe by udev comes and goes).
                    let (_, uses, udev) = scan_settled(id);
                    if !uses.is_empty() {
                        return Err(holders::describe(id, &uses));
                    }
                    if Instant::now() < busy_until {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                    if udev {
                        safe = false;
                        continue;
                    }
                    return Err(format!(
                        "device {id} is open (by something ublkd cannot name): ublkd del --force stops it anyway"
                    ));
                }
                // No disk any more: stopped meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => break,
                Err(e) => return Err(format!("stopping device {id}: {e}")),
            }
        }
    }
    // 5. The daemon deletes its stopped device and exits; the supervisor must not recover it.
    stand_down(&mut supervisor);
    if let Some(d) = &daemon
        && !d.wait_exit(EXIT_LIMIT)
    {
        let why = format!(
            "it did not exit within {} s of the stop",
            EXIT_LIMIT.as_secs()
        );
        kill(Some(d), id, &why);
    }
    // 6. Whatever is left: no daemon, or it did not get that far.
    let mut held = false;
    if char_dev_exists(id) {
        match ctrl.del_dev(id, DEL_DEV_LIMIT) {
            Ok(freed) => held = !freed,
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => return Err(format!("deleting device {id}: {e}")),
        }
    }
    state::remove(id);
    held |= !gone(ctrl, id);
    if held && !uses.is_empty() {
        tracing::warn!(
            "device {id} deleted; it was {}: what still uses the old disk gets I/O errors, and id {id} stays taken until it lets go",
            holders::what(id, &uses)
        );
    }
    Ok(())
}

pub fn run(a: DelArgs) -> ExitCode {
    let mut ctrl = match Control::open() {
        Ok(c) => c,
        Err(e) => return crate::fail(e),
    };
    if let Some(id) = a.id {
        return match delete(&mut ctrl, id, a.force) {
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
        // A user's --all means their own devices.
        if let Err(e) = ctrl.get_dev_info(id)
            && crate::cmd::not_ours(&e)
        {
            continue;
        }
        if let Err(m) = delete(&mut ctrl, id, a.force) {
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

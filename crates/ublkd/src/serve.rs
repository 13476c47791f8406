//! The daemon of one device: open the target, create the device, serve until SIGTERM/SIGINT or
//! until the device is stopped from outside, then remove it and its state file.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use targets::Target;
use ublk::Device;

use crate::device_args::DeviceArgs;
use crate::process::{HANDOVER_SIGNAL, block_daemon_signals, redirect_output, wait_signal};
use crate::registry::AnyTarget;
use crate::report::DeviceReport;
use crate::resize::RESIZE_SIGNAL;
use crate::state::{self, DeviceState};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub dev: DeviceArgs,
    /// Started by `add`: print the ready line on stdout, then log to the device's log file.
    #[arg(long)]
    pub daemon: bool,
}

pub fn run(a: ServeArgs) -> ExitCode {
    let sigs = block_daemon_signals();
    let spec = match a.dev.target.to_spec() {
        Ok(s) => s,
        Err(e) => return crate::fail(e),
    };
    let mut opts = match a.dev.options() {
        Ok(o) => o,
        Err(e) => return crate::fail(e),
    };
    // Checked again here, where it counts (another add may have taken the name meanwhile).
    if let Some(n) = &a.dev.name
        && let Err(e) = crate::naming::check_new_name(n)
    {
        return crate::fail(e);
    }
    let target = match spec.open() {
        Ok(t) => Arc::new(t),
        Err(e) => return crate::fail(e),
    };
    let geo = target.geometry();
    let mut notes = target.notes();
    // An NBD server without multi-conn allows one connection, so one queue.
    let (queues, clamp_note) = clamp_queues(opts.queues as usize, target.max_queues(), "queue");
    notes.extend(clamp_note);
    opts.queues = queues as u16;
    let dev = match Device::create(target.clone(), &opts) {
        Ok(d) => d,
        Err(e) => return crate::fail(e),
    };
    let mut st = DeviceState::new(&dev, spec, geo.size, a.dev.recovery());
    st.busy_poll_us = a.dev.busy_poll_us;
    st.pin_queues = a.dev.pin_queues;
    st.name = a.dev.name.clone();
    st.serial = Some(crate::naming::new_serial());
    serve_device(dev, target, st, &sigs, a.daemon, notes)
}

/// Hidden `serve-recover`: the daemon that takes over a device whose daemon died or handed it
/// over (upgrade), reopening the target recorded in its state file.
#[derive(Debug, Args)]
pub struct RecoverServeArgs {
    #[arg(short = 'n', long = "number")]
    pub id: u32,
    #[arg(long)]
    pub daemon: bool,
}

pub fn run_recover(a: RecoverServeArgs) -> ExitCode {
    let sigs = block_daemon_signals();
    let Some(old) = state::load(a.id) else {
        return crate::fail(format!(
            "device {} has no state file {}: cannot tell which target to reopen",
            a.id,
            state::path_for(a.id).display()
        ));
    };
    if let Some(d) = crate::daemon::find_daemon(a.id, 0, Some(&old))
        && d.pid() != std::process::id() as i32
    {
        return crate::fail(format!(
            "device {} is still served by pid {}",
            a.id,
            d.pid()
        ));
    }
    let target = match old.target.open() {
        Ok(t) => Arc::new(t),
        Err(e) => return crate::fail(e),
    };
    let geo = target.geometry();
    let notes = target.notes();
    // A backing that grew since (an NBD export, an RBD image, a file) is served at the device's
    // size: the kernel sends nothing beyond it, and `ublkd resize -n ID` follows later. One that
    // shrank would lose data: refuse.
    if geo.size < old.size {
        return crate::fail(format!(
            "target shrank from {} to {} bytes; refusing to recover",
            old.size, geo.size
        ));
    }
    if geo.size > old.size {
        let (id, was, now) = (a.id, old.size, geo.size);
        tracing::warn!(
            "device {id}: the target grew from {was} to {now} bytes; serving {was} until `ublkd resize -n {id}`"
        );
    }
    let dev = match Device::recover(target.clone(), a.id, old.tuning()) {
        Ok(d) => d,
        Err(e) => return crate::fail(e),
    };
    let mut st = DeviceState::new(&dev, old.target.clone(), old.size, old.recovery);
    st.busy_poll_us = old.busy_poll_us;
    st.pin_queues = old.pin_queues;
    st.supervisor_pid = old.supervisor_pid;
    st.supervisor_identity = old.supervisor_identity.clone();
    st.recoveries = old.recoveries + 1;
    st.name = old.name.clone();
    st.serial = old.serial.clone();
    tracing::info!("recovered device {} (recovery #{})", a.id, st.recoveries);
    serve_device(dev, target, st, &sigs, a.daemon, notes)
}

/// Serve a live device: write its state, report readiness, wait for a stop signal or for the
/// device to stop, then tear down. A device quiesced for a new daemon is left in place.
fn serve_device(
    mut dev: Device,
    target: Arc<AnyTarget>,
    mut st: DeviceState,
    sigs: &libc::sigset_t,
    daemon: bool,
    notes: Vec<String>,
) -> ExitCode {
    let id = st.id;
    if let Err(e) = state::save(&st) {
        tracing::warn!(
            "cannot write state file {}: {e}",
            state::path_for(id).display()
        );
    }
    // udev saw the disk appear before this state file existed: let it look again, so the
    // by-id links (contrib/udev) get the name and serial.
    crate::naming::announce(id);
    tracing::info!(
        "device {} live: {} queues x depth {}, max io {}, {} mode, recovery {:?}, target {}",
        st.block_device,
        st.queues,
        st.depth,
        st.max_io,
        st.mode.name(),
        st.recovery,
        st.target.describe()
    );
    let _control = match crate::control::serve(id, snapshotter(&dev, &st)) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                "cannot serve statistics on {}: {e}",
                crate::control::sock_path(id).display()
            );
            None
        }
    };
    let report = DeviceReport::new(&dev.info, Some(&st));
    let line = serde_json::to_string(&report).unwrap_or_default();
    if daemon {
        // The ready line tells the caller we are live; after it our output goes to the log.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        redirect_output(&st.log);
    } else {
        // Serving goes on whether or not anyone reads this.
        let _ = crate::out::print(&st.block_device);
        // Under systemd (Type=notify, contrib/ublkd@.service): the device is live, so units
        // ordered after us (the mounts on it) may start.
        crate::process::notify_ready();
    }
    for note in notes {
        tracing::info!("{note}"); // after the redirect, so a daemon's log has it too
    }
    let recoverable = dev.info.flags & ublk::uapi::UBLK_F_USER_RECOVERY != 0;
    let reason = loop {
        match wait_signal(sigs, Duration::from_millis(20)) {
            Some(HANDOVER_SIGNAL) if recoverable => {
                // Our char device closes as we exit; the driver then holds the device and
                // reissues what we had in flight to the next daemon (as after a crash).
                tracing::info!("device {id}: handing it over to a new daemon (upgrade)");
                dev.abandon();
                return ExitCode::SUCCESS;
            }
            Some(HANDOVER_SIGNAL) => {
                tracing::warn!("device {id} is not recoverable: ignoring the hand-over signal")
            }
            Some(RESIZE_SIGNAL) => crate::resize::serve_requests(&mut dev, &target, &mut st),
            Some(s) => break format!("signal {s}"),
            None => {}
        }
        if let Some(why) = dev.queue_failure() {
            if recoverable {
                // As after a crash: the driver holds the device and reissues what we had in
                // flight to the next daemon (a --restart supervisor starts one).
                tracing::error!("{why}: leaving device {id} to a recovering daemon");
                dev.abandon();
                return ExitCode::FAILURE;
            }
            break why;
        }
        // A queue thread that does not end (stuck in the target) must not keep us from seeing
        // a stop from outside: one ended queue and a dead device are enough; teardown waits for
        // the others only so long.
        if !dev.queues_finished()
            && dev.queue_ended()
            && dev.driver_state() == Some(ublk::uapi::UBLK_S_DEV_DEAD)
        {
            break "device stopped from outside".to_string();
        }
        if dev.queues_finished() {
            // Every fetch was aborted. STOP_DEV from outside leaves the device DEAD; a quiesce
            // (upgrade) leaves it LIVE until we close the char device, after which the driver
            // holds it for a new daemon. So a recoverable device that is not dead is handed over.
            let state = dev.driver_state();
            // Stopping it ourselves now would wait forever for the I/O the driver holds.
            if recoverable && state != Some(ublk::uapi::UBLK_S_DEV_DEAD) {
                tracing::info!(
                    "device {id} quiesced (driver state {state:?}): handing it over to a new daemon"
                );
                dev.abandon();
                return ExitCode::SUCCESS;
            }
            break "device stopped from outside".to_string();
        }
    };
    tracing::info!("stopping device {id} ({reason})");
    if reason.starts_with("signal") {
        sync_users(id);
    }
    let r = dev.shutdown();
    state::remove(id);
    match r {
        Ok(stats) => {
            for (q, s) in stats.iter().enumerate() {
                let batch = if s.enters > 0 {
                    s.completions as f64 / s.enters as f64
                } else {
                    0.0
                };
                tracing::info!(
                    "queue {q}: {} requests, {} errors, {} enters, {:.1} completions per enter, \
                     {} fetch re-arms, {} served inline, {} in shared memory",
                    s.requests,
                    s.errors,
                    s.enters,
                    batch,
                    s.fetch_rearms,
                    s.inlined,
                    s.shared
                );
            }
            tracing::info!("device {id} removed");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(e),
    }
}

/// What makes the device's snapshot for the control socket: its queues' counters and what
/// the state says about it.
fn snapshotter(dev: &Device, st: &DeviceState) -> impl Fn() -> stats::DeviceSnapshot + use<> {
    let counters = dev.counters().to_vec();
    let depth = st.depth as u32;
    let (id, path, target) = (st.id, st.block_device.clone(), st.target.describe());
    let recoveries = st.recoveries as u64;
    let t0 = std::time::Instant::now();
    move || stats::DeviceSnapshot {
        device: id.to_string(),
        kind: "ublk".into(),
        path: path.clone(),
        target: target.clone(),
        recoveries,
        uptime_ns: t0.elapsed().as_nanos() as u64,
        queues: counters
            .iter()
            .enumerate()
            .map(|(q, c)| c.snapshot(q as u32, depth))
            .collect(),
    }
}

/// Before a stop by signal (systemd, Ctrl-C), which goes ahead whoever uses the disk: sync the
/// file systems on it while we still serve. During STOP_DEV the driver fails the writes that
/// file systems still make to a recoverable device.
fn sync_users(id: u32) {
    let (nodes, uses) = crate::holders::scan(id);
    if uses.is_empty() {
        return;
    }
    tracing::warn!(
        "device {id} is {}: syncing before the stop; later writes fail",
        crate::holders::what(id, &uses)
    );
    let r = crate::holders::flush(&nodes, &uses, Duration::from_secs(30));
    if r != crate::holders::Flushed::Done {
        tracing::warn!("device {id}: sync before the stop: {r:?}");
    }
}

/// `want` queues (or export threads: `what`) lowered to what the target allows, and a note
/// saying why when it had to be.
pub(crate) fn clamp_queues(want: usize, max: usize, what: &str) -> (usize, Option<String>) {
    if want <= max {
        return (want, None);
    }
    let s = if max == 1 { "" } else { "s" };
    let why = if max == 1 {
        "server does not allow multi-conn".to_string()
    } else {
        format!("the target allows at most {max} {what}s")
    };
    (
        max,
        Some(format!("{why}: using {max} {what}{s} instead of {want}")),
    )
}

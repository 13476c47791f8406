//! The daemon of one device: open the target, create the device, serve until SIGTERM/SIGINT or
//! until the device is stopped from outside, then remove it and its state file.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use targets::Target;
use targets::size::parse_size;
use ublk::{BufMode, Device, DeviceOptions, QueueTuning};

use crate::args::TargetArgs;
use crate::report::DeviceReport;
use crate::state::{self, DeviceState};

/// Everything that defines a device; shared by `add` and the daemon.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Hardware queues (default: one per CPU, at most 4).
    #[arg(short = 'q', long)]
    pub queues: Option<u16>,
    /// Queue depth, 1..=4096.
    #[arg(short = 'd', long, default_value_t = 128)]
    pub depth: u16,
    /// Device id (default: the first free one).
    #[arg(short = 'n', long = "number")]
    pub id: Option<u32>,
    /// Largest single I/O (K/M suffixes), a power of two from 4K to 32M.
    #[arg(long, default_value = "512K", value_parser = parse_size)]
    pub max_io: u64,
    /// Where request data lives: copy (the driver copies into per-tag buffers), user-copy (we
    /// copy with pread/pwrite on the char device, UBLK_F_USER_COPY), zero-copy (the request's
    /// own pages go to the target's I/O, UBLK_F_AUTO_BUF_REG, Linux 6.17+; file and null
    /// targets), or auto: zero-copy where the kernel and target allow it, else copy.
    #[arg(long, value_enum, default_value_t = Buffers::Auto)]
    pub buffers: Buffers,
    /// How requests reach the daemon: batch (UBLK_F_BATCH_IO, Linux 7.0+: one multishot fetch
    /// delivers many requests, one command commits many results), per-tag (one fetch/commit
    /// command per request), or auto: batch where the kernel offers it.
    #[arg(long, value_enum, default_value_t = IoCmds::Auto)]
    pub io_cmds: IoCmds,
    /// Same as --buffers user-copy.
    #[arg(long, conflicts_with = "buffers")]
    pub user_copy: bool,
    /// Spin this many microseconds for completions before sleeping (lower qd1 latency, more CPU).
    #[arg(long, value_name = "USEC", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub busy_poll_us: Option<u64>,
    /// Pin each queue thread to the CPUs the driver maps to its queue (default: let the
    /// scheduler place them, which measured faster for single-job workloads).
    #[arg(long)]
    pub pin_queues: bool,
    /// What the driver does when the daemon dies: keep the device and reissue in-flight I/O to a
    /// recovering daemon (reissue), keep it and fail in-flight I/O (on), keep it but fail all I/O
    /// until recovery (fail-io, Linux 6.13+), or remove it (off).
    #[arg(long, value_enum, default_value_t = Recovery::Reissue)]
    pub recovery: Recovery,
}

/// Queue thread tuning from the options a device was created with (kept in its state file).
pub(crate) fn queue_tuning(busy_poll_us: Option<u64>, pin_queues: bool) -> QueueTuning {
    QueueTuning {
        busy_poll: busy_poll_us.map(Duration::from_micros),
        pin: pin_queues,
    }
}

/// `--buffers`: a buffer mode, or auto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Buffers {
    Auto,
    Copy,
    UserCopy,
    ZeroCopy,
}

/// `--io-cmds`: batch or per-tag I/O commands, or auto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoCmds {
    Auto,
    Batch,
    PerTag,
}

/// Recovery policy (UBLK_F_USER_RECOVERY and friends).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Recovery {
    Reissue,
    On,
    FailIo,
    Off,
}

impl Recovery {
    pub fn flags(self) -> u64 {
        use ublk::uapi::*;
        match self {
            Recovery::Reissue => UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE,
            Recovery::On => UBLK_F_USER_RECOVERY,
            Recovery::FailIo => UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_FAIL_IO,
            Recovery::Off => 0,
        }
    }
}

impl DeviceArgs {
    pub fn options(&self) -> Result<DeviceOptions, String> {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let max_io = u32::try_from(self.max_io)
            .map_err(|_| format!("--max-io {} is too large", self.max_io))?;
        if self.depth == 0 || self.depth > 4096 {
            return Err(format!("--depth {} is outside 1..=4096", self.depth));
        }
        if let Some(0) = self.queues {
            return Err("--queues must be at least 1".into());
        }
        Ok(DeviceOptions {
            dev_id: self.id,
            queues: self.queues.unwrap_or(cpus.min(4) as u16),
            depth: self.depth,
            max_io,
            mode: match (self.user_copy, self.buffers) {
                (true, _) | (_, Buffers::UserCopy) => Some(BufMode::UserCopy),
                (_, Buffers::Copy) => Some(BufMode::Copy),
                (_, Buffers::ZeroCopy) => Some(BufMode::ZeroCopy),
                (_, Buffers::Auto) => None,
            },
            batch: match self.io_cmds {
                IoCmds::Auto => None,
                IoCmds::Batch => Some(true),
                IoCmds::PerTag => Some(false),
            },
            extra_flags: self.recovery.flags(),
            tuning: queue_tuning(self.busy_poll_us, self.pin_queues),
        })
    }
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub dev: DeviceArgs,
    /// Started by `add`: print the ready line on stdout, then log to the device's log file.
    #[arg(long)]
    pub daemon: bool,
}

/// Block the stop signals in every thread; the main thread takes them with `sigtimedwait`.
pub(crate) fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set; pthread_sigmask affects this thread and the
    // threads it spawns afterwards.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The signal `ublkd upgrade` sends a daemon whose device cannot be quiesced safely (batch I/O
/// commands): leave the device to the driver, which holds its I/O for the next daemon.
pub(crate) const HANDOVER_SIGNAL: i32 = libc::SIGUSR1;

/// Block the stop signals and the hand-over signal; the serve loop takes them.
fn block_daemon_signals() -> libc::sigset_t {
    let mut set = block_stop_signals();
    // SAFETY: as in block_stop_signals.
    unsafe {
        libc::sigaddset(&mut set, HANDOVER_SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

/// Wait up to `d` for a stop signal; returns it.
pub(crate) fn wait_signal(set: &libc::sigset_t, d: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    };
    // SAFETY: valid set and timeout pointers; a null siginfo is allowed.
    let s = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (s > 0).then_some(s)
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
    let dev = match Device::create(target, &opts) {
        Ok(d) => d,
        Err(e) => return crate::fail(e),
    };
    let mut st = DeviceState::new(&dev, spec, geo.size, a.dev.recovery);
    st.busy_poll_us = a.dev.busy_poll_us;
    st.pin_queues = a.dev.pin_queues;
    serve_device(dev, st, &sigs, a.daemon, notes)
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
            "device {} has no state file in {}: cannot tell which target to reopen",
            a.id,
            state::state_dir().display()
        ));
    };
    if let Some(d) = crate::identity::find_daemon(a.id, 0, Some(&old))
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
    if geo.size != old.size {
        return crate::fail(format!(
            "target size changed from {} to {} bytes; refusing to recover",
            old.size, geo.size
        ));
    }
    let dev = match Device::recover(target, a.id, old.tuning()) {
        Ok(d) => d,
        Err(e) => return crate::fail(e),
    };
    let mut st = DeviceState::new(&dev, old.target.clone(), geo.size, old.recovery);
    st.busy_poll_us = old.busy_poll_us;
    st.pin_queues = old.pin_queues;
    st.supervisor_pid = old.supervisor_pid;
    st.supervisor_identity = old.supervisor_identity.clone();
    st.recoveries = old.recoveries + 1;
    tracing::info!("recovered device {} (recovery #{})", a.id, st.recoveries);
    serve_device(dev, st, &sigs, a.daemon, notes)
}

/// Serve a live device: write its state, report readiness, wait for a stop signal or for the
/// device to stop, then tear down. A device quiesced for a new daemon is left in place.
fn serve_device(
    mut dev: Device,
    st: DeviceState,
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
            Some(s) => break format!("signal {s}"),
            None => {}
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
                     {} fetch re-arms, {} served inline",
                    s.requests,
                    s.errors,
                    s.enters,
                    batch,
                    s.fetch_rearms,
                    s.inlined
                );
            }
            tracing::info!("device {id} removed");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(e),
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

/// Point stdout and stderr at the log file (append), stdin at /dev/null.
pub(crate) fn redirect_output(log: &std::path::Path) {
    let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    else {
        return;
    };
    let null = std::fs::File::open("/dev/null").ok();
    // SAFETY: dup2 onto the standard descriptors; both source fds are valid and stay open for
    // the duration of the calls.
    unsafe {
        libc::dup2(f.as_raw_fd(), 1);
        libc::dup2(f.as_raw_fd(), 2);
        if let Some(n) = &null {
            libc::dup2(n.as_raw_fd(), 0);
        }
    }
}

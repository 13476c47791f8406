//! The daemon of one device: open the target, create the device, serve until SIGTERM/SIGINT or
//! until the device is stopped from outside, then remove it and its state file.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use target::size::parse_size;
use target::Target;
use ublk::{BufMode, Device, DeviceOptions};

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
    /// Copy data with pread/pwrite on the char device (UBLK_F_USER_COPY) instead of letting the
    /// driver copy into per-tag buffers.
    #[arg(long)]
    pub user_copy: bool,
    /// Spin this many microseconds for completions before sleeping (lower qd1 latency, more CPU).
    #[arg(long, value_name = "USEC")]
    pub busy_poll_us: Option<u64>,
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
            mode: if self.user_copy {
                BufMode::UserCopy
            } else {
                BufMode::Copy
            },
            extra_flags: 0,
            busy_poll: self.busy_poll_us.map(Duration::from_micros),
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
    let sigs = block_stop_signals();
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
    // An NBD server without multi-conn allows one connection, so one queue.
    let (queues, clamp_note) = clamp_queues(opts.queues as usize, target.max_queues(), "queue");
    opts.queues = queues as u16;
    let dev = match Device::create(target, &opts) {
        Ok(d) => d,
        Err(e) => return crate::fail(e),
    };
    let id = dev.id();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let st = DeviceState {
        id,
        pid,
        target: spec.clone(),
        queues: dev.info.nr_hw_queues,
        depth: dev.info.queue_depth,
        max_io: dev.info.max_io_buf_bytes,
        mode: dev.mode,
        size: geo.size,
        block_device: format!("/dev/ublkb{id}"),
        log: state::log_path_for(id),
    };
    if let Err(e) = state::save(&st) {
        tracing::warn!(
            "cannot write state file {}: {e}",
            state::path_for(id).display()
        );
    }
    tracing::info!(
        "device {} live: {} queues x depth {}, max io {}, {} mode, target {}",
        st.block_device,
        st.queues,
        st.depth,
        st.max_io,
        st.mode.name(),
        spec.describe()
    );
    let report = DeviceReport::new(&dev.info, Some(&st));
    let line = serde_json::to_string(&report).unwrap_or_default();
    if a.daemon {
        // The ready line tells `add` we are live; after it our stdout/stderr go to the log.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        drop(out);
        redirect_output(&st.log);
    }
    if let Some(note) = clamp_note {
        tracing::info!("{note}"); // after the redirect, so a daemon's log has it too
    }
    let reason = loop {
        if let Some(s) = wait_signal(&sigs, Duration::from_millis(200)) {
            break format!("signal {s}");
        }
        if dev.queues_finished() {
            break "device stopped from outside".to_string();
        }
    };
    tracing::info!("stopping device {id} ({reason})");
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
                    "queue {q}: {} requests, {} errors, {} enters, {:.1} completions per enter",
                    s.requests,
                    s.errors,
                    s.enters,
                    batch
                );
            }
            tracing::info!("device {id} removed");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(e),
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
fn redirect_output(log: &std::path::Path) {
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

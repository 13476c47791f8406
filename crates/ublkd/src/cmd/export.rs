//! `ublkd export`: serve a target as an NBD export, in the foreground.
//!
//! ```text
//! ublkd export -t TYPE [TARGET OPTIONS] [--name NAME]
//!              [--listen ADDR:PORT | --socket PATH] [--read-only] [--connections N] [--allow-remote]
//!              [--busy-poll-us USEC] [--idle-timeout SECS]
//! ```
//!
//! The target options are the same as `ublkd add` (every `-t` target with its options,
//! `--read-only`, `--filter`; `ublkd export --help` lists them): one parser for both.
//! Like `qemu-nbd` or `nbdkit -f`, it runs until SIGTERM/SIGINT/SIGHUP and logs to stderr
//! (`UBLKD_LOG=debug` for more). On a stop signal it stops accepting, lets every connected client
//! finish its in-flight requests, closes, removes its Unix socket and exits 0.
//!
//! - `--listen ADDR:PORT` (default `127.0.0.1:10809`): TCP. NBD has no authentication, so an
//!   address that is not loopback is refused unless `--allow-remote` is given.
//! - `--socket PATH`: a Unix socket instead (clients use `nbd+unix:///NAME?socket=PATH`).
//! - `--name NAME`: the export name (default ""); clients asking for "" get this export too.
//! - `--read-only`: refuse writes (clients see a read-only export).
//! - `--connections N`: worker threads, each with its own io_uring runtime and target queue,
//!   serving any number of client connections (default min(2, CPUs)). With `-t nbd` and a server
//!   that does not allow multi-conn, lowered to 1.
//! - `--busy-poll-us USEC`: each worker spins up to USEC microseconds for a completion before it
//!   sleeps in the kernel. Trades a busy CPU per worker for lower latency at queue depth 1
//!   (docs/bench-nbd.md has what it buys). Off by default.
//! - `--idle-timeout SECS`: disconnect a client that sends no request for SECS seconds while it
//!   has nothing in flight (no request running, no reply unsent). Off by default: NBD has no
//!   keep-alive, and kernel and qemu clients hold idle connections to mounted disks for hours
//!   and fail the disk when the server closes one.
//!
//! Memory: each connection's requests may hold 64 MiB at once and all connections together
//! 256 MiB (buffers plus a fixed charge per request, `ExportConfig`); a client past either stops
//! being read until replies have gone out. A client that keeps the server waiting on it for 60 s
//! (reads none of its replies, stops mid-WRITE payload) is disconnected, releasing its share.
//!
//! Examples:
//! ```text
//! ublkd export -t file --path disk.img --name disk             # nbd://127.0.0.1/disk
//! ublkd export -t mem --size 1G --socket /run/mem.sock        # nbd+unix:///?socket=/run/mem.sock
//! ublkd export -t mem --size 1G --listen 0.0.0.0:10809 --allow-remote
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nbd::server::{ExportConfig, Listener, Shutdown};
use targets::Target;
use targets::size::format_size;

use crate::args::TargetArgs;
use crate::process::{block_stop_signals, wait_signal};
use crate::serve::clamp_queues;

/// `ublkd export`: the target options of `add`, plus where and how to serve it.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Export name that clients ask for (nbd://HOST:PORT/NAME); clients asking for the default
    /// export ("") get it too.
    #[arg(long, default_value = "")]
    pub name: String,
    /// TCP address to listen on. Only loopback addresses unless --allow-remote.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:10809",
        conflicts_with = "socket"
    )]
    pub listen: SocketAddr,
    /// Listen on this Unix socket instead of TCP (removed again on exit).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Worker threads serving client connections, each with its own io_uring runtime and target
    /// queue [default: min(2, CPUs)].
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Allow listening on an address other than loopback. NBD has no authentication: anyone who
    /// can reach the port can read and write the export.
    #[arg(long)]
    pub allow_remote: bool,
    /// Spin this many microseconds for completions before sleeping in the kernel: lower latency
    /// at queue depth 1 for a busy CPU per worker thread. Off by default.
    #[arg(long, value_name = "USEC", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub busy_poll_us: Option<u64>,
    /// Disconnect a client that sends no request for SECS seconds while it has nothing in
    /// flight. Off by default: kernel and qemu NBD clients keep idle connections open.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub idle_timeout: Option<u64>,
    /// Serve the export's request counters and latency histograms to Prometheus at
    /// http://ADDR/metrics (as `ublkd metrics` does for devices; `device` label = the export
    /// name, or "export"; one `queue` per worker thread). Loopback only unless --allow-remote.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
}

pub fn run(a: ExportArgs) -> ExitCode {
    // Before any thread starts, so every thread inherits the mask and only the main thread
    // takes stop signals (with sigtimedwait).
    let sigs = block_stop_signals();
    let spec = match a.target.to_spec() {
        Ok(s) => s,
        Err(e) => return crate::fail(e),
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = a.connections.unwrap_or(cpus.min(2));
    if threads == 0 || threads > 256 {
        return crate::fail(format!("--connections {threads} is outside 1..=256"));
    }
    if a.socket.is_none() && !a.listen.ip().is_loopback() && !a.allow_remote {
        return crate::fail(format!(
            "refusing to listen on {}: not a loopback address and NBD has no authentication (add --allow-remote to allow it)",
            a.listen
        ));
    }
    let metrics_addr = match &a.metrics_listen {
        Some(m) => match crate::cmd::metrics::listen_addr(m, a.allow_remote) {
            Ok(addr) => Some(addr),
            Err(e) => return crate::fail(format!("--metrics-listen: {e}")),
        },
        None => None,
    };
    let target = match spec.open() {
        Ok(t) => t,
        Err(e) => return crate::fail(e),
    };
    let geo = target.geometry();
    let (threads, note) = clamp_queues(threads, target.max_queues(), "worker thread");
    for n in target.notes().into_iter().chain(note) {
        tracing::info!("{n}");
    }
    let listener = match &a.socket {
        Some(p) => {
            Listener::bind_unix(p).map_err(|e| format!("cannot listen on {}: {e}", p.display()))
        }
        None => Listener::bind_tcp(a.listen, a.allow_remote)
            .map_err(|e| format!("cannot listen on {}: {e}", a.listen)),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => return crate::fail(e),
    };
    let shutdown = match Shutdown::new() {
        Ok(s) => s,
        Err(e) => return crate::fail(format!("cannot create the shutdown pipe: {e}")),
    };
    let (uri, where_) = match (&a.socket, listener.local_addr()) {
        (Some(p), _) => (
            format!("nbd+unix:///{}?socket={}", a.name, p.display()),
            p.display().to_string(),
        ),
        (None, Some(addr)) => (format!("nbd://{addr}/{}", a.name), addr.to_string()),
        (None, None) => (String::new(), a.listen.to_string()),
    };
    let read_only = a.target.read_only || geo.caps.read_only;
    let counters: Vec<_> = (0..threads)
        .map(|_| Arc::new(stats::QueueCounters::new()))
        .collect();
    if let Some(addr) = metrics_addr {
        let device = if a.name.is_empty() { "export" } else { &a.name };
        // Connections of a worker have no fixed depth: report none.
        let snap = crate::cmd::metrics::frontend_snapshot(
            "nbd-export",
            device,
            &where_,
            &spec.describe(),
            &counters,
            0,
        );
        if let Err(e) = crate::cmd::metrics::spawn(addr, move || stats::prom::render(&[snap()])) {
            return crate::fail(e);
        }
    }
    let cfg = ExportConfig {
        counters,
        name: a.name.clone(),
        description: spec.describe(),
        read_only,
        threads,
        busy_poll: a.busy_poll_us.map(Duration::from_micros),
        idle_timeout: a.idle_timeout.map(Duration::from_secs),
        ..Default::default()
    };
    let server = {
        let stop = shutdown.clone();
        let target = Arc::new(target);
        std::thread::Builder::new()
            .name("nbd-serve".into())
            .spawn(move || nbd::server::serve(listener, target, cfg, stop))
    };
    let server = match server {
        Ok(h) => h,
        Err(e) => return crate::fail(format!("cannot start the server thread: {e}")),
    };
    tracing::info!(
        "listening on {where_}: export {:?} ({}), size {} ({} bytes){}, {threads} worker thread{}{}; {uri}",
        a.name,
        spec.describe(),
        format_size(geo.size),
        geo.size,
        if read_only { ", read-only" } else { "" },
        if threads == 1 { "" } else { "s" },
        a.idle_timeout
            .map(|t| format!(", idle clients disconnected after {t} s"))
            .unwrap_or_default()
    );
    // Wait for a stop signal, or for the server to end on its own (a worker failed).
    let reason = loop {
        if let Some(s) = wait_signal(&sigs, Duration::from_millis(200)) {
            break Some(s);
        }
        if server.is_finished() {
            break None;
        }
    };
    if let Some(s) = reason {
        tracing::info!("signal {s}: stopping (clients finish their in-flight requests)");
    }
    shutdown.trigger();
    match server.join() {
        Ok(Ok(())) if reason.is_some() => {
            tracing::info!("export stopped");
            ExitCode::SUCCESS
        }
        Ok(Ok(())) => crate::fail("the NBD server stopped unexpectedly"),
        Ok(Err(e)) => crate::fail(format!("NBD server: {e}")),
        Err(_) => crate::fail("the NBD server thread panicked"),
    }
}

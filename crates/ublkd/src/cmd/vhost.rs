//! `ublkd vhost`: serve a target to a virtual machine as a vhost-user-blk backend, in the
//! foreground.
//!
//! ```text
//! ublkd vhost -t TYPE [TARGET OPTIONS] --socket PATH [--num-queues N] [--queue-size N]
//!             [--read-only] [--serial ID] [--filter ...] [--metrics-listen ADDR:PORT]
//! ```
//!
//! The target options are those of `ublkd add` and `export` (one parser). QEMU connects to the
//! Unix socket at PATH (`-chardev socket,path=PATH,reconnect=1 -device
//! vhost-user-blk-pci,chardev=...`, guest memory shared: `-object
//! memory-backend-memfd,share=on`). Like `export`, it runs until SIGTERM/SIGINT/SIGHUP and logs
//! to stderr; on a stop signal the queues finish their in-flight requests, the socket is
//! removed and it exits 0. A frontend that disconnects is replaced by the next one to
//! connect; with inflight tracking a restarted backend resubmits what the previous one had in
//! flight, so QEMU with `reconnect=1` carries on after `kill -9` and a new start.
//!
//! - `--num-queues N`: virtqueues offered (each served by its own thread once the guest starts
//!   it; default 4; QEMU's `num-queues` must not be larger).
//! - `--queue-size N`: the largest ring the frontend may set up (256..32768, default 1024; QEMU's
//!   `queue-size` must not be larger).
//! - `--serial ID`: what the guest reads as the disk's serial (GET_ID; at most 20 bytes).
//! - `--metrics-listen ADDR:PORT`: every virtqueue's request counters and latency histograms
//!   for Prometheus at http://ADDR/metrics, as `ublkd metrics` serves devices (`device` label:
//!   the socket's file name without its extension; `queue` = the virtqueue). Loopback only.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use targets::Target;
use targets::size::format_size;
use vhost_blk::{DeviceOptions, QueueCountersList, Shutdown};

use crate::args::TargetArgs;
use crate::process::{block_stop_signals, wait_signal};
use crate::serve::clamp_queues;

/// `ublkd vhost`: the target options of `add`, plus the socket and the device's shape.
#[derive(Debug, Args)]
pub struct VhostArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Unix socket the VMM (QEMU) connects to (a stale socket file there is replaced; removed
    /// again on exit).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Virtqueues offered to the guest, each served by its own thread.
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub num_queues: u16,
    /// Largest virtqueue the frontend may set up (a power of two, 256..32768).
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u16).range(256..=32768))]
    pub queue_size: u16,
    /// The disk's serial as the guest sees it (at most 20 bytes).
    #[arg(long, value_name = "ID", default_value = "ublkd")]
    pub serial: String,
    /// Serve every virtqueue's request counters and latency histograms to Prometheus at
    /// http://ADDR/metrics (`device` label: the socket's file name without its extension).
    /// Loopback addresses only.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
}

fn bind(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path)
        && m.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}

pub fn run(a: VhostArgs) -> ExitCode {
    let sigs = block_stop_signals();
    let spec = match a.target.to_spec() {
        Ok(s) => s,
        Err(e) => return crate::fail(e),
    };
    if !a.queue_size.is_power_of_two() {
        return crate::fail(format!(
            "--queue-size {} is not a power of two",
            a.queue_size
        ));
    }
    if a.serial.len() > vhost_blk::config::ID_BYTES {
        return crate::fail(format!(
            "--serial is {} bytes; the guest can read at most {}",
            a.serial.len(),
            vhost_blk::config::ID_BYTES
        ));
    }
    let metrics_addr = match &a.metrics_listen {
        // (Parsed as if remote were allowed, to say here why it is not.)
        Some(m) => match crate::cmd::metrics::listen_addr(m, true) {
            Ok(addr) if addr.ip().is_loopback() => Some(addr),
            Ok(addr) => {
                return crate::fail(format!(
                    "--metrics-listen: {addr} is not a loopback address: a vhost-user backend serves metrics on loopback only"
                ));
            }
            Err(e) => return crate::fail(format!("--metrics-listen: {e}")),
        },
        None => None,
    };
    let target = match spec.open() {
        Ok(t) => t,
        Err(e) => return crate::fail(e),
    };
    let geo = target.geometry();
    if geo.size < 512 || geo.size % 512 != 0 {
        return crate::fail(format!(
            "the target's size {} is not a multiple of 512 bytes (virtio-blk counts sectors)",
            geo.size
        ));
    }
    let (queues, note) = clamp_queues(a.num_queues as usize, target.max_queues(), "queue");
    for n in target.notes().into_iter().chain(note) {
        tracing::info!("{n}");
    }
    let listener = match bind(&a.socket) {
        Ok(l) => l,
        Err(e) => return crate::fail(format!("cannot listen on {}: {e}", a.socket.display())),
    };
    let shutdown = match Shutdown::new() {
        Ok(s) => s,
        Err(e) => return crate::fail(format!("cannot create the shutdown pipe: {e}")),
    };
    let read_only = a.target.read_only || geo.caps.read_only;
    let counters = QueueCountersList::new(queues);
    if let Some(addr) = metrics_addr {
        let device = a
            .socket
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vhost".into());
        let snap = crate::cmd::metrics::frontend_snapshot(
            "vhost-user-blk",
            &device,
            &a.socket.display().to_string(),
            &spec.describe(),
            &counters.0,
            // The guest picks each ring's size (up to --queue-size): no fixed depth to report.
            0,
        );
        if let Err(e) = crate::cmd::metrics::spawn(addr, move || stats::prom::render(&[snap()])) {
            let _ = std::fs::remove_file(&a.socket);
            return crate::fail(e);
        }
    }
    let opts = DeviceOptions {
        num_queues: queues as u16,
        queue_size: a.queue_size,
        read_only,
        serial: a.serial.clone(),
        counters,
    };
    let server = {
        let stop = shutdown.clone();
        let target = Arc::new(target);
        std::thread::Builder::new()
            .name("vhost-user".into())
            .spawn(move || vhost_blk::serve(listener, target, opts, stop))
    };
    let server = match server {
        Ok(h) => h,
        Err(e) => return crate::fail(format!("cannot start the server thread: {e}")),
    };
    tracing::info!(
        "vhost-user-blk on {}: {}, size {} ({} bytes){}, {queues} queue{} of up to {}",
        a.socket.display(),
        spec.describe(),
        format_size(geo.size),
        geo.size,
        if read_only { ", read-only" } else { "" },
        if queues == 1 { "" } else { "s" },
        a.queue_size,
    );
    let reason = loop {
        if let Some(s) = wait_signal(&sigs, Duration::from_millis(200)) {
            break Some(s);
        }
        if server.is_finished() {
            break None;
        }
    };
    if let Some(s) = reason {
        tracing::info!("signal {s}: stopping (queues finish their in-flight requests)");
    }
    shutdown.trigger();
    let r = server.join();
    let _ = std::fs::remove_file(&a.socket);
    match r {
        Ok(Ok(stats)) if reason.is_some() => {
            tracing::info!("stopped; {}", stats.summary());
            ExitCode::SUCCESS
        }
        Ok(Ok(_)) => crate::fail("the vhost-user server stopped unexpectedly"),
        Ok(Err(e)) => crate::fail(format!("vhost-user server: {e}")),
        Err(_) => crate::fail("the vhost-user server thread panicked"),
    }
}

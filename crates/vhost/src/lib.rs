//! A vhost-user-blk backend: the virtio-blk queues of a virtual machine served by any
//! [`Target`], from the guest's own memory.
//!
//! ```text
//! let l = UnixListener::bind("/run/ublkd/vm1.sock")?;
//! let stop = Shutdown::new()?;                          // stop.trigger() ends it
//! serve(l, Arc::new(target), DeviceOptions { .. }, stop)?;
//! ```
//!
//! The control thread (the caller of [`serve`]) accepts one frontend (QEMU) at a time and
//! answers its vhost-user messages ([`backend`]); every started virtqueue gets its own thread,
//! `rt` runtime and target queue ([`queue`]). Guest memory ([`memory`]) is mapped from the
//! frontend's files; requests ([`request`]) are parsed and checked from descriptor chains and
//! served zero-copy or through a bounce buffer ([`data`]); [`inflight`] keeps what is in flight
//! in a file the frontend holds, so a restarted backend resubmits it. [`config`] is the device
//! the guest sees. When a frontend disconnects, its rings stop (in-flight requests finish) and
//! the next connection is accepted: QEMU with `reconnect=1` comes back after a backend restart.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use targets::Target;
use vhost::vhost_user::BackendReqHandler;

pub mod backend;
pub mod config;
pub mod data;
pub mod fuzz;
pub mod inflight;
pub mod memory;
pub mod queue;
pub mod request;

pub use config::{Device, DeviceOptions, QueueCountersList};
pub use data::Stats;

/// Ends [`serve`]: a pipe written once and never read, polled by the control thread.
pub struct Shutdown {
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
    raised: AtomicBool,
}

impl Shutdown {
    pub fn new() -> io::Result<Arc<Shutdown>> {
        let (reader, writer) = std::io::pipe()?;
        Ok(Arc::new(Shutdown {
            reader,
            writer,
            raised: AtomicBool::new(false),
        }))
    }
    /// Ask the backend to stop (in-flight requests finish first).
    pub fn trigger(&self) {
        if !self.raised.swap(true, Ordering::SeqCst) {
            let _ = (&self.writer).write(&[1]);
        }
    }
    pub fn is_triggered(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }
}

/// Wait until `fd` or the shutdown pipe is readable; false on shutdown.
fn wait_readable(fd: RawFd, stop: &Shutdown) -> io::Result<bool> {
    let mut p = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.reader.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfd structs.
        let r = unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if p[1].revents != 0 {
            return Ok(false);
        }
        if p[0].revents != 0 {
            return Ok(true);
        }
    }
}

/// Serve `target` to frontends connecting on `listener`, one at a time, until `shutdown`.
/// Returns the device's request statistics.
pub fn serve<T: Target>(
    listener: UnixListener,
    target: Arc<T>,
    opts: DeviceOptions,
    shutdown: Arc<Shutdown>,
) -> io::Result<Arc<Stats>> {
    let dev = Arc::new(Device::new(target.geometry(), opts));
    let stats = Arc::new(Stats::default());
    while wait_readable(listener.as_raw_fd(), &shutdown)? {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("vhost-user: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        tracing::info!("frontend connected");
        let backend = Arc::new(Mutex::new(backend::Backend::new(
            target.clone(),
            dev.clone(),
            stats.clone(),
        )));
        let mut handler = BackendReqHandler::from_stream(stream, backend.clone());
        let conn = handler.try_clone_connection()?;
        let why = loop {
            match wait_readable(conn.as_raw_fd(), &shutdown) {
                Ok(true) => {}
                Ok(false) => break "stopping".to_string(),
                Err(e) => break e.to_string(),
            }
            match handler.handle_request() {
                Ok(()) => {}
                Err(vhost::vhost_user::Error::Disconnected)
                | Err(vhost::vhost_user::Error::PartialMessage) => {
                    break "frontend disconnected".to_string();
                }
                Err(e) => break format!("closing the connection: {e}"),
            }
        };
        // Rings stop (requests in flight complete) before the next frontend may start them.
        backend.lock().unwrap_or_else(|e| e.into_inner()).stop_all();
        drop(handler);
        tracing::info!("{why}; {}", stats.summary());
    }
    Ok(stats)
}

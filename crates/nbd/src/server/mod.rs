//! Serve a [`Target`] as an NBD export.
//!
//! ```text
//! let l = Listener::bind_tcp("127.0.0.1:10809".parse()?, false)?;   // or Listener::bind_unix
//! let stop = Shutdown::new()?;                                        // stop.trigger() ends it
//! serve(l, Arc::new(target), ExportConfig { name: "disk".into(), ..Default::default() }, stop)?;
//! ```
//!
//! `serve` starts `threads` worker threads. Each has its own `rt` runtime, opens its own queue of
//! the target (`open_queue(worker index)`), and accepts on the shared listening socket; every
//! connection is one task on the thread that accepted it, and all connections of a thread share
//! that thread's queue. Multi-conn is advertised only when the target says its queues are
//! consistent with each other (`Caps::consistent_across_queues`): then a FLUSH on any connection
//! flushes the one shared backing store and so covers writes completed on every connection.

mod conn;
mod cost;
pub mod negotiate;
pub mod request;
mod stall;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use targets::Target;

pub use negotiate::ExportInfo;

use crate::proto::tflag;
use crate::shared_budget;
use crate::sock::Sock;
use rt::local::Notify;
use rt::select::{Either, select2};

/// What to export and how much a client may use.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Export name; clients may also ask for "" (the default export).
    pub name: String,
    /// Shown by `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub description: String,
    /// Refuse writes even if the target allows them.
    pub read_only: bool,
    /// Worker threads (each with its own runtime and target queue); at least 1.
    pub threads: usize,
    /// Connections served at once over all threads; more are accepted and closed at once.
    pub max_connections: usize,
    /// Bytes one connection's requests may hold at once: data buffers, replies, and a fixed
    /// charge per request for the rest (`cost.rs`). Raised to one largest request if lower.
    pub max_in_flight_bytes: u64,
    /// The same, for all connections together: what bounds the server's request memory
    /// whatever the number of clients. A connection that finds it used up waits (stops reading
    /// requests) until replies of others are sent. Raised to one largest request if lower.
    pub max_total_in_flight_bytes: u64,
    /// Largest READ/WRITE length (the advertised maximum block size).
    pub max_payload: u32,
    /// A client must finish negotiating within this time.
    pub handshake_timeout: Duration,
    /// Disconnect a client that sends no request for this long while nothing of its is in
    /// flight (no request running, no reply unsent). `None` (the default): never, since NBD has
    /// no keep-alive and kernel or qemu clients idle on a mounted disk for hours.
    pub idle_timeout: Option<Duration>,
    /// Disconnect a client that keeps the server waiting on it this long: reads none of its
    /// pending replies, or sends nothing more of a WRITE payload it started. Such a client holds
    /// its requests' share of the server-wide budget while it stalls; a well-behaved one never
    /// stalls. `None`: never.
    pub stall_timeout: Option<Duration>,
    /// Workers spin this long for completions before sleeping in the kernel (lower latency at
    /// queue depth 1, more CPU); `None` sleeps at once.
    pub busy_poll: Option<Duration>,
    /// Where worker thread i counts its requests (`counters[i]`; none: not counted).
    pub counters: Vec<Arc<stats::QueueCounters>>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            name: String::new(),
            description: String::new(),
            read_only: false,
            threads: 1,
            max_connections: 64,
            max_in_flight_bytes: 64 << 20,
            max_total_in_flight_bytes: 256 << 20,
            max_payload: 32 << 20,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: None,
            stall_timeout: Some(Duration::from_secs(60)),
            busy_poll: None,
            counters: Vec::new(),
        }
    }
}

/// A listening socket, TCP or Unix.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Listen on `addr`. A non-loopback address is refused unless `allow_remote`: an NBD export
    /// has no authentication, so reaching it from the network has to be asked for.
    pub fn bind_tcp(addr: SocketAddr, allow_remote: bool) -> io::Result<Listener> {
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{addr} is not a loopback address; NBD has no authentication, allow remote clients explicitly"
                ),
            ));
        }
        Ok(Listener::Tcp(TcpListener::bind(addr)?))
    }

    /// Listen on a Unix socket at `path` (a stale socket file there is replaced).
    pub fn bind_unix(path: &Path) -> io::Result<Listener> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(m) = std::fs::symlink_metadata(path)
            && m.file_type().is_socket()
        {
            std::fs::remove_file(path)?;
        }
        Ok(Listener::Unix(UnixListener::bind(path)?, path.to_owned()))
    }

    /// The bound TCP address (to learn a port chosen with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l, _) => l.as_raw_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Ends `serve`: stop accepting, let each connection finish its in-flight requests, close.
///
/// Built on a pipe that is written once and never read: every worker waits for it to become
/// readable on its own ring, so one `trigger` reaches all threads.
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
    /// Ask every worker to stop. Async-signal-safe (an atomic store and one `write(2)`), so a
    /// SIGTERM handler may call it.
    pub fn trigger(&self) {
        if !self.raised.swap(true, Ordering::SeqCst) {
            let _ = (&self.writer).write(&[1]);
        }
    }
    pub fn is_triggered(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }
    fn fd(&self) -> RawFd {
        self.reader.as_raw_fd()
    }
}

/// What we advertise for `target` under `cfg`.
pub fn export_info(geo: &targets::Geometry, cfg: &ExportConfig) -> ExportInfo {
    let c = geo.caps;
    let mut flags =
        tflag::HAS_FLAGS | tflag::SEND_FLUSH | tflag::SEND_FUA | tflag::SEND_DF | tflag::SEND_CACHE;
    if cfg.read_only || c.read_only {
        flags |= tflag::READ_ONLY;
    }
    if c.discard {
        flags |= tflag::SEND_TRIM;
    }
    // WRITE_ZEROES is always served (written as zero buffers if the target has no fast way);
    // FAST_ZERO only when the target zeroes natively, else it would always fail.
    flags |= tflag::SEND_WRITE_ZEROES;
    if c.write_zeroes {
        flags |= tflag::SEND_FAST_ZERO;
    }
    if c.rotational {
        flags |= tflag::ROTATIONAL;
    }
    if c.consistent_across_queues {
        flags |= tflag::CAN_MULTI_CONN;
    }
    let min = geo.logical_block.clamp(1, 64 << 10).next_power_of_two();
    let preferred = geo.physical_block.max(4096).max(min).next_power_of_two();
    let max = (cfg.max_payload.max(preferred) / min) * min;
    ExportInfo {
        name: cfg.name.clone(),
        description: cfg.description.clone(),
        size: geo.size,
        flags,
        min_block: min,
        preferred_block: preferred,
        max_block: max,
    }
}

/// Serve `target` on `listener` until `shutdown` is triggered. Blocks the calling thread; returns
/// the first worker error (opening a queue, building a runtime).
pub fn serve<T: Target>(
    listener: Listener,
    target: Arc<T>,
    cfg: ExportConfig,
    shutdown: Arc<Shutdown>,
) -> io::Result<()> {
    let geo = target.geometry();
    let info = Arc::new(export_info(&geo, &cfg));
    let listener = Arc::new(listener);
    let live = Arc::new(AtomicUsize::new(0));
    let threads = cfg.threads.max(1);
    let lim = conn::ConnLimits {
        max_in_flight_bytes: cfg.max_in_flight_bytes,
        server_budget: shared_budget::SharedBudget::new(
            cfg.max_total_in_flight_bytes
                .max(cost::max_charge(info.max_block)),
        ),
        handshake_timeout: cfg.handshake_timeout,
        idle_timeout: cfg.idle_timeout,
        stall_timeout: cfg.stall_timeout,
        drain_timeout: Duration::from_secs(10),
    };
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (l, t, info, sd, live, lim) = (
                listener.clone(),
                target.clone(),
                info.clone(),
                shutdown.clone(),
                live.clone(),
                lim.clone(),
            );
            let (max_conns, busy_poll) = (cfg.max_connections, cfg.busy_poll);
            let counters = cfg.counters.get(i).cloned();
            std::thread::Builder::new()
                .name(format!("nbd-{i}"))
                .spawn(move || {
                    worker(
                        i, &l, &*t, &info, &sd, &live, max_conns, lim, busy_poll, counters,
                    )
                })
        })
        .collect::<io::Result<_>>()?;
    let mut first_err = None;
    for h in handles {
        let r = h
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("nbd worker panicked")));
        if let Err(e) = r {
            shutdown.trigger(); // one failed worker stops the others
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[allow(clippy::too_many_arguments)]
fn worker<T: Target>(
    idx: usize,
    listener: &Listener,
    target: &T,
    info: &ExportInfo,
    shutdown: &Shutdown,
    live: &Arc<AtomicUsize>,
    max_conns: usize,
    lim: conn::ConnLimits,
    busy_poll: Option<Duration>,
    counters: Option<Arc<stats::QueueCounters>>,
) -> io::Result<()> {
    let rt = rt::Runtime::builder().busy_poll(busy_poll).build()?;
    let q = Rc::new(target.open_queue(idx as u16)?);
    let info = Rc::new(info.clone());
    let is_tcp = matches!(listener, Listener::Tcp(_));
    rt.block_on(async {
        // Live connections of this thread, so shutdown can reach them.
        let conns: Rc<RefCell<HashMap<u64, Rc<Sock>>>> = Default::default();
        let mut next_key = 0u64;
        let gone = Rc::new(Notify::default());
        // One poll for the whole loop: a fresh one per accept would leave an armed op behind
        // for every connection.
        let mut stop = std::pin::pin!(rt::poll::readable(shutdown.fd()));
        loop {
            let fd = match select2(rt::net::accept(listener.fd()), stop.as_mut()).await {
                Either::Right(_) => break,
                Either::Left(Ok(fd)) => fd,
                Either::Left(Err(e)) => {
                    // Out of fds or a transient network error: do not spin.
                    tracing::warn!("nbd: accept failed: {e}");
                    rt::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if live.fetch_add(1, Ordering::SeqCst) >= max_conns {
                live.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("nbd: connection limit ({max_conns}) reached, refusing a client");
                continue; // dropping fd closes it
            }
            let sock = Rc::new(if is_tcp {
                Sock::tcp(fd)
            } else {
                Sock::unix(fd)
            });
            let key = next_key;
            next_key += 1;
            conns.borrow_mut().insert(key, sock.clone());
            let (q, info, conns, gone, live, lim, counters) = (
                q.clone(),
                info.clone(),
                conns.clone(),
                gone.clone(),
                live.clone(),
                lim.clone(),
                counters.clone(),
            );
            rt::spawn(async move {
                conn::serve(sock, q, info, lim, counters).await;
                conns.borrow_mut().remove(&key);
                live.fetch_sub(1, Ordering::SeqCst);
                gone.notify_all();
            });
        }
        // Stop reading from every client: each finishes its in-flight requests and closes.
        for s in conns.borrow().values() {
            s.shutdown(std::net::Shutdown::Read);
        }
        while !conns.borrow().is_empty() {
            gone.notified().await;
        }
    });
    Ok(())
}

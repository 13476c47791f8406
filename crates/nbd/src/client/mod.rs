//! `NbdTarget`: a block device backed by an NBD server.
//!
//! ```text
//! let t = NbdTarget::open(NbdConfig::new("nbd://127.0.0.1:10809/disk")?)?;
//! let queues = t.max_queues().min(wanted);   // 1 unless the server allows multi-conn
//! ```
//!
//! Connections: one per queue, each driven by its queue's own runtime (no cross-thread traffic
//! on the data path). That is only correct when the server advertises multi-conn (its
//! connections see each other's writes and a flush on one covers all). Without multi-conn the
//! target is single-queue: [`NbdTarget::max_queues`] says 1, the caller must clamp its queue
//! count, and opening a second queue while one is open fails with a message saying so.
//!
//! The connection made by `open` (to learn the geometry) is handed to the first queue, so a
//! single-queue device uses exactly one connection; other queues connect at their first request.

pub mod handshake;
pub mod link;
pub mod uri;

use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rt::IoBuf;
use targets::kind::{Info, Opt, TargetKind, Value};
use targets::{Caps, Extent, Geometry, OpenError, Target, TargetQueue};

use crate::proto::{self, cflag, cmd, tflag};
use crate::sock::Sock;
use handshake::ExportParams;
use link::{Link, LinkConfig};
pub use uri::{Endpoint, Uri};

/// How to reach the export.
#[derive(Debug, Clone)]
pub struct NbdConfig {
    pub uri: Uri,
    /// A request that cannot complete in this time (server gone and not back, or stuck) fails
    /// with EIO. Requests interrupted by a lost connection are re-sent until then.
    pub timeout: Duration,
}

impl NbdConfig {
    /// Parse `nbd://host[:port][/name]` or `nbd+unix:///name?socket=PATH`; timeout 30 s.
    pub fn new(uri: &str) -> Result<NbdConfig, String> {
        Ok(NbdConfig {
            uri: uri::parse(uri)?,
            timeout: Duration::from_secs(30),
        })
    }
}

pub struct NbdTarget {
    cfg: NbdConfig,
    params: ExportParams,
    geo: Geometry,
    /// The size served now: the export's at `open`, grown by `resize` when the server grew.
    /// Shared with every queue's link, whose connections must offer at least this much.
    size: Arc<AtomicU64>,
    /// The negotiated connection from `open`, for the first queue.
    first: Mutex<Option<Sock>>,
    open_queues: Arc<AtomicUsize>,
}

impl NbdTarget {
    /// Connect and negotiate (on a short-lived thread with its own runtime, so this can be called
    /// from anywhere, including inside another runtime).
    pub fn open(cfg: NbdConfig) -> io::Result<NbdTarget> {
        let (sock, params) = negotiate(&cfg)?;
        let min = params.min_block.max(512);
        if params.size % min as u64 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "export size {} is not a multiple of its block size {min}",
                    params.size
                ),
            ));
        }
        let geo = Geometry {
            size: params.size,
            logical_block: min,
            physical_block: params.preferred_block.max(min),
            caps: Caps {
                flush: params.has(tflag::SEND_FLUSH),
                fua: params.has(tflag::SEND_FUA),
                discard: params.has(tflag::SEND_TRIM),
                write_zeroes: params.has(tflag::SEND_WRITE_ZEROES),
                read_only: params.has(tflag::READ_ONLY),
                rotational: params.has(tflag::ROTATIONAL),
                needs_cpu_access: true, // replies are copied into the caller's buffer
                ignores_data: false,
                inline_io: false,
                consistent_across_queues: params.has(tflag::CAN_MULTI_CONN),
            },
        };
        Ok(NbdTarget {
            cfg,
            params,
            geo,
            size: Arc::new(AtomicU64::new(params.size)),
            first: Mutex::new(Some(sock)),
            open_queues: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// What the server advertised.
    pub fn params(&self) -> &ExportParams {
        &self.params
    }

    /// The export's size now, from a fresh connection (the server may have grown it). At most
    /// `SIZE_PROBE_TIMEOUT` each: a resize that follows the server makes two of these on the
    /// daemon's control thread, and `ublkd resize` waits 60 s for its answer.
    fn server_size(&self) -> io::Result<u64> {
        let mut cfg = self.cfg.clone();
        cfg.timeout = cfg.timeout.min(SIZE_PROBE_TIMEOUT);
        let (sock, p) = negotiate(&cfg)?;
        drop(sock);
        if p.flags != self.params.flags {
            return Err(io::Error::other(
                "the NBD export's flags changed since the device was created",
            ));
        }
        Ok(p.size)
    }
}

/// Longest wait for the handshake that asks a server its export's size.
const SIZE_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect and negotiate, on a short-lived thread with its own runtime, so this can be called
/// from anywhere, including inside another runtime.
fn negotiate(cfg: &NbdConfig) -> io::Result<(Sock, ExportParams)> {
    let c = cfg.clone();
    std::thread::spawn(move || {
        rt::Runtime::new()?.block_on(async {
            match rt::time::timeout(c.timeout, handshake::open(&c.uri.endpoint, &c.uri.name)).await
            {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "NBD negotiation timed out",
                )),
            }
        })
    })
    .join()
    .map_err(|_| io::Error::other("NBD connect thread panicked"))?
}

/// `-t nbd --uri URI [--timeout SECS]`, as a state file keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NbdSpec {
    pub uri: String,
    /// Seconds; `timeout_secs` in state files written before targets declared their options.
    #[serde(default = "default_timeout", alias = "timeout_secs")]
    pub timeout: u64,
}

/// Default `--timeout`: how long a request may wait for a lost server to come back.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30;

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECS
}

impl TargetKind for NbdTarget {
    const INFO: Info = Info {
        name: "nbd",
        about: "an NBD client: the blocks live on an NBD server (qemu-nbd, nbdkit, ublkd export, ...)",
        opts: &[
            Opt::new(
                "uri",
                Value::Text,
                "URI",
                "the server: nbd://HOST[:PORT][/NAME] or nbd+unix:///NAME?socket=PATH",
            )
            .required(),
            Opt::new(
                "timeout",
                Value::Count,
                "SECS",
                "how long a request may wait for a lost server to come back before it fails with EIO (default 30)",
            ),
        ],
    };
    type Config = NbdSpec;
    fn check(c: &NbdSpec) -> Result<(), OpenError> {
        if c.timeout == 0 {
            return Err(OpenError::Invalid(
                "--timeout must be at least 1 second".into(),
            ));
        }
        NbdConfig::new(&c.uri).map(drop).map_err(OpenError::Invalid)
    }
    fn open(c: &NbdSpec) -> Result<NbdTarget, OpenError> {
        Self::check(c)?;
        let mut cfg = NbdConfig::new(&c.uri).map_err(OpenError::Invalid)?;
        cfg.timeout = Duration::from_secs(c.timeout);
        NbdTarget::open(cfg).map_err(|e| OpenError::Io(format!("NBD server {}: {e}", c.uri)))
    }
    fn describe(c: &NbdSpec) -> String {
        format!("nbd {}", c.uri)
    }
}

impl Target for NbdTarget {
    type Queue = NbdQueue;

    fn geometry(&self) -> Geometry {
        Geometry {
            size: self.size.load(Ordering::Acquire),
            ..self.geo
        }
    }

    /// Follows the server: grows to `size` when the export (asked on a fresh connection) holds
    /// at least that much. Links whose connection negotiated less reconnect before they send a
    /// request beyond it (a server may check requests against the size it announced).
    fn resize(&self, size: u64) -> io::Result<()> {
        let block = self.geo.logical_block as u64;
        if !size.is_multiple_of(block) {
            return Err(io::Error::other(format!(
                "size {size} is not a multiple of the export's {block}-byte block size"
            )));
        }
        let have = self.server_size()?;
        if have < size {
            return Err(io::Error::other(format!(
                "the NBD server's export is {have} bytes, fewer than {size}: grow it on the server first"
            )));
        }
        self.size.fetch_max(size, Ordering::AcqRel);
        Ok(())
    }

    fn backing_size(&self) -> io::Result<Option<u64>> {
        let block = self.geo.logical_block as u64;
        Ok(Some(self.server_size()? / block * block))
    }

    /// How many queues this export supports: unlimited with multi-conn, else 1.
    fn max_queues(&self) -> usize {
        if self.params.has(tflag::CAN_MULTI_CONN) {
            usize::MAX
        } else {
            1
        }
    }

    /// Cheap and runtime-free; the queue's connection is used (or made) at its first request,
    /// on the runtime that drives the queue.
    fn open_queue(&self, _qid: u16) -> io::Result<NbdQueue> {
        let n = self.open_queues.fetch_add(1, Ordering::SeqCst);
        let guard = QueueCount(self.open_queues.clone());
        if n >= self.max_queues() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the NBD server does not allow multi-conn: use a single queue",
            ));
        }
        let cfg = LinkConfig {
            uri: self.cfg.uri.clone(),
            timeout: self.cfg.timeout,
            size: self.size.clone(),
        };
        // The first queue gets the connection `open` made; others connect at first use.
        let first = self.first.lock().unwrap_or_else(|e| e.into_inner()).take();
        let link = Link::new(cfg, first, self.params);
        Ok(NbdQueue {
            link,
            params: self.params,
            _count: guard,
        })
    }
}

/// Counts open queues (decremented on drop).
struct QueueCount(Arc<AtomicUsize>);
impl Drop for QueueCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct NbdQueue {
    link: Rc<Link>,
    params: ExportParams,
    _count: QueueCount,
}

impl NbdQueue {
    /// Largest piece for one READ/WRITE request.
    fn max_io(&self) -> u64 {
        let m = self.params.max_block.max(self.params.min_block) as u64;
        m.min(32 << 20)
    }
    /// Largest length for TRIM/WRITE_ZEROES/BLOCK_STATUS (32-bit field, block aligned).
    fn max_range(&self) -> u64 {
        let b = self.params.min_block.max(512) as u64;
        (u32::MAX as u64 / b) * b
    }

    /// Send `typ` over `[off, off+len)` in pieces of at most `step`.
    async fn ranged(&self, typ: u16, flags: u16, off: u64, len: u64) -> io::Result<()> {
        let step = self.max_range();
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(step);
            self.link
                .call(typ, flags, off + pos, n as u32, None)
                .await?;
            pos += n;
        }
        Ok(())
    }

    /// Say goodbye to the server (NBD_CMD_DISC) instead of just dropping the connection.
    pub async fn disconnect(&self) {
        self.link.disconnect().await
    }
}

fn unsupported() -> io::Error {
    io::Error::from_raw_os_error(libc::EOPNOTSUPP)
}

impl TargetQueue for NbdQueue {
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        let len = buf.len() as u64;
        let step = self.max_io();
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(step);
            let a = self
                .link
                .call(cmd::READ, 0, off + pos, n as u32, None)
                .await?;
            let data = a
                .data
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            buf.as_mut_slice()[pos as usize..(pos + n) as usize].copy_from_slice(data.as_slice());
            pos += n;
        }
        Ok(())
    }

    async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> io::Result<()> {
        if self.params.has(tflag::READ_ONLY) {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let native_fua = fua && self.params.has(tflag::SEND_FUA);
        let flags = if native_fua { cflag::FUA } else { 0 };
        let len = buf.len() as u64;
        let step = self.max_io();
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(step);
            self.link
                .call(
                    cmd::WRITE,
                    flags,
                    off + pos,
                    n as u32,
                    Some((buf, pos as usize)),
                )
                .await?;
            pos += n;
        }
        if fua && !native_fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> io::Result<()> {
        if !self.params.has(tflag::SEND_FLUSH) {
            return Ok(()); // the server says it has no volatile cache
        }
        self.link.call(cmd::FLUSH, 0, 0, 0, None).await.map(|_| ())
    }

    async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        if !self.params.has(tflag::SEND_TRIM) {
            return Err(unsupported());
        }
        self.ranged(cmd::TRIM, 0, off, len).await
    }

    async fn write_zeroes(&self, off: u64, len: u64, unmap: bool) -> io::Result<()> {
        if !self.params.has(tflag::SEND_WRITE_ZEROES) {
            return Err(unsupported());
        }
        let flags = if unmap { 0 } else { cflag::NO_HOLE };
        self.ranged(cmd::WRITE_ZEROES, flags, off, len).await
    }

    async fn block_status(&self, off: u64, len: u64) -> io::Result<Vec<Extent>> {
        if self.params.base_allocation.is_none() {
            return Ok(vec![Extent {
                len,
                hole: false,
                zero: false,
            }]);
        }
        let n = len.min(self.max_range());
        let a = self
            .link
            .call(cmd::BLOCK_STATUS, 0, off, n as u32, None)
            .await?;
        let mut out: Vec<Extent> = Vec::new();
        let mut total = 0u64;
        for d in a.status {
            if d.len == 0 || total + d.len as u64 > n || out.len() == targets::MAX_EXTENTS {
                break; // a server that overshoots is clipped; a long answer keeps its prefix
            }
            total += d.len as u64;
            out.push(Extent {
                len: d.len as u64,
                hole: d.flags & proto::STATE_HOLE != 0,
                zero: d.flags & proto::STATE_ZERO != 0,
            });
        }
        if out.is_empty() {
            out.push(Extent {
                len: n,
                hole: false,
                zero: false,
            });
        }
        Ok(out)
    }
}

//! One queue's link to the server: a connection, the requests in flight on it (matched to
//! replies by handle), and reconnection.
//!
//! A reader task owns the receive side: it parses each reply, fills the request's buffer and
//! completes it. Senders take a FIFO lock so each request goes out whole. When the connection
//! breaks, every request in flight is told `Lost` and sends itself again on the next connection,
//! until its deadline: then it fails with EIO. Re-sending in any order is safe for a block
//! device: a FLUSH covers only writes that had completed (been acknowledged) when it was sent,
//! and an acknowledged write is never re-sent; an unacknowledged one is not covered by any flush
//! the caller has seen complete.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rt::IoBuf;
use rt::sync::{OneshotSender, oneshot};

use super::handshake::{self, ExportParams};
use super::uri::Uri;
use crate::proto::{self, ReplyHeader, chunk};
use crate::sock::Sock;
use rt::local::{Lock, Notify};

/// The answer to one request.
#[derive(Debug, Default)]
pub struct Answer {
    /// Data of a READ (the whole requested length).
    pub data: Option<IoBuf>,
    /// Block status descriptors of our `base:allocation` context.
    pub status: Vec<proto::Descriptor>,
}

enum Outcome {
    Done(Result<Answer, u32>),
    /// The connection broke before the reply: send again.
    Lost,
    /// The deadline passed while the server held the request.
    TimedOut,
}

struct Pending {
    typ: u16,
    off: u64,
    len: u32,
    /// Receives READ data (allocated by the reader's peer, so the reply can land directly).
    data: Option<IoBuf>,
    status: Vec<proto::Descriptor>,
    error: Option<u32>,
    /// Bytes of READ data received (structured replies must cover the whole request).
    covered: u64,
    deadline: Instant,
    /// `None` once the requester stopped waiting; the reply is still consumed.
    tx: Option<OneshotSender<Outcome>>,
}

struct Conn {
    sock: Sock,
    write: Lock,
    pending: RefCell<HashMap<u64, Pending>>,
    dead: Cell<bool>,
    /// Takes no new requests; closed once those on it are answered (see [`Conn::retire`]).
    retiring: Cell<bool>,
    params: ExportParams,
}

impl Conn {
    fn kill(&self) {
        self.dead.set(true);
        self.sock.shutdown(Shutdown::Both);
    }
    /// For new requests only: neither dead nor retiring.
    fn usable(&self) -> bool {
        !self.dead.get() && !self.retiring.get()
    }
    /// Stop sending on this connection, but let the server answer what it holds: killing it
    /// would re-send those requests on the next connection while the server may still carry
    /// out the originals, and an old write could then land after a newer one. The reader
    /// closes it once nothing is pending (at once if nothing is).
    fn retire(&self) {
        self.retiring.set(true);
        if self.pending.borrow().is_empty() {
            self.kill();
        }
    }
}

/// Parameters of a link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub uri: Uri,
    /// A request that cannot complete within this time (server down or stuck) fails with EIO.
    pub timeout: Duration,
    /// The device's size now (grows on resize): a connection must offer at least this much.
    pub size: Arc<AtomicU64>,
}

pub struct Link {
    cfg: LinkConfig,
    /// What the first connection negotiated; a reconnect must offer the same flags, and at
    /// least the device's size.
    params: ExportParams,
    conn: RefCell<Option<Rc<Conn>>>,
    /// Replaced connections still answering requests (watched for deadlines, killed on drop).
    retired: RefCell<Vec<Rc<Conn>>>,
    /// A socket negotiated before the runtime ran (installed at first use: the reader task
    /// needs a runtime to spawn on).
    initial: RefCell<Option<Sock>>,
    connecting: Cell<bool>,
    watchdog: Cell<bool>,
    reconnected: Rc<Notify>,
    next_handle: Cell<u64>,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl Link {
    /// A link to the export described by `params`: over `sock` if one is already negotiated,
    /// else connecting at first use. Needs no runtime; requests do.
    pub fn new(cfg: LinkConfig, sock: Option<Sock>, params: ExportParams) -> Rc<Link> {
        Rc::new(Link {
            cfg,
            params,
            conn: RefCell::new(None),
            retired: RefCell::new(Vec::new()),
            initial: RefCell::new(sock),
            connecting: Cell::new(false),
            watchdog: Cell::new(false),
            reconnected: Rc::new(Notify::default()),
            next_handle: Cell::new(1),
        })
    }

    pub fn params(&self) -> &ExportParams {
        &self.params
    }

    fn install(&self, sock: Sock, params: ExportParams) {
        let c = Rc::new(Conn {
            sock,
            write: Lock::default(),
            pending: RefCell::new(HashMap::new()),
            dead: Cell::new(false),
            retiring: Cell::new(false),
            params,
        });
        rt::spawn(reader(c.clone()));
        if let Some(old) = self.conn.borrow_mut().replace(c)
            && !old.dead.get()
        {
            self.retired.borrow_mut().push(old);
        }
        self.retired.borrow_mut().retain(|c| !c.dead.get());
    }

    /// A live connection, waiting for a reconnect until `deadline`.
    async fn live(self: &Rc<Self>, deadline: Instant) -> io::Result<Rc<Conn>> {
        if !self.watchdog.replace(true) {
            rt::spawn(watchdog(Rc::downgrade(self), self.cfg.timeout));
        }
        let first = self.initial.borrow_mut().take();
        if let Some(sock) = first {
            self.install(sock, self.params);
        }
        loop {
            if let Some(c) = self.conn.borrow().as_ref()
                && c.usable()
            {
                return Ok(c.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(eio());
            }
            if !self.connecting.get() {
                self.connecting.set(true);
                rt::spawn(reconnect(Rc::downgrade(self)));
            }
            if rt::time::timeout(left, self.reconnected.notified())
                .await
                .is_err()
            {
                return Err(eio());
            }
        }
    }

    /// Send one request (with `payload[start..start+len]` for a WRITE) and wait for its answer,
    /// re-sending it after reconnects, within the link's timeout.
    pub async fn call(
        self: &Rc<Self>,
        typ: u16,
        flags: u16,
        off: u64,
        len: u32,
        payload: Option<(&IoBuf, usize)>,
    ) -> io::Result<Answer> {
        let deadline = Instant::now() + self.cfg.timeout;
        loop {
            let c = self.live(deadline).await?;
            let end = off + len as u64;
            if end > c.params.size && end <= self.cfg.size.load(Ordering::Acquire) {
                // The device grew since this connection was negotiated: the server may refuse
                // what lies beyond the size it announced on it. Send on a new connection; the
                // old one finishes what it holds first.
                c.retire();
                continue;
            }
            let handle = self.next_handle.get();
            self.next_handle.set(handle.wrapping_add(1));
            let (tx, rx) = oneshot();
            let data = (typ == proto::cmd::READ).then(|| IoBuf::with_capacity(len as usize));
            c.pending.borrow_mut().insert(
                handle,
                Pending {
                    typ,
                    off,
                    len,
                    data,
                    status: Vec::new(),
                    error: None,
                    covered: 0,
                    deadline,
                    tx: Some(tx),
                },
            );
            let req = proto::Request {
                flags,
                typ,
                handle,
                offset: off,
                len,
            };
            let sent = {
                let _g = c.write.lock().await;
                let h = proto::encode_request(&req);
                match payload {
                    Some((buf, start)) => c.sock.send_with_data(&h, buf, start, len as usize).await,
                    None => c.sock.send(&h).await,
                }
            };
            if sent.is_err() {
                c.kill(); // the reader reports every request on it as lost, this one included
            }
            // No timer per request: the link's watchdog enforces deadlines.
            match rx.recv().await {
                Some(Outcome::Done(Ok(a))) => return Ok(a),
                Some(Outcome::Done(Err(e))) => return Err(proto::wire_to_io(e)),
                Some(Outcome::Lost) | None => continue,
                Some(Outcome::TimedOut) => return Err(eio()),
            }
        }
    }

    /// Tell the server we are leaving (best effort) and close.
    pub async fn disconnect(&self) {
        let c = self.conn.borrow().clone();
        if let Some(c) = c
            && !c.dead.get()
        {
            let req = proto::Request {
                flags: 0,
                typ: proto::cmd::DISC,
                handle: 0,
                offset: 0,
                len: 0,
            };
            let _g = c.write.lock().await;
            let _ = c.sock.send(&proto::encode_request(&req)).await;
            c.kill();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(c) = self.conn.borrow().as_ref() {
            c.kill(); // ends the reader task
        }
        for c in self.retired.borrow().iter() {
            c.kill();
        }
    }
}

/// Fail requests whose deadline passed on a live connection, and drop that connection: a server
/// that sits on a request is stuck, and its other requests are better re-sent on a fresh one.
/// One timer per link instead of one per request.
async fn watchdog(link: Weak<Link>, timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        rt::time::sleep(tick).await;
        let Some(l) = link.upgrade() else { return };
        let mut conns: Vec<Rc<Conn>> = l.retired.borrow().clone();
        conns.extend(l.conn.borrow().clone());
        let now = Instant::now();
        for c in conns {
            let mut expired = false;
            for p in c.pending.borrow_mut().values_mut() {
                if p.deadline <= now
                    && let Some(tx) = p.tx.take()
                {
                    expired = true;
                    let _ = tx.send(Outcome::TimedOut);
                }
            }
            if expired && !c.dead.get() {
                tracing::warn!("nbd: request timed out after {timeout:?}; reconnecting");
                c.kill();
            }
        }
    }
}

/// Reconnect with backoff for at most the link timeout (waiters give up by then anyway).
async fn reconnect(link: Weak<Link>) {
    let (cfg, want) = match link.upgrade() {
        Some(l) => (l.cfg.clone(), l.params),
        None => return,
    };
    let start = Instant::now();
    let mut backoff = Duration::from_millis(50);
    loop {
        let attempt = rt::time::timeout(
            cfg.timeout.min(Duration::from_secs(10)),
            handshake::open(&cfg.uri.endpoint, &cfg.uri.name),
        )
        .await;
        let Some(l) = link.upgrade() else { return };
        match attempt {
            Ok(Ok((sock, p)))
                if p.size >= cfg.size.load(Ordering::Acquire) && p.flags == want.flags =>
            {
                tracing::info!("nbd: reconnected to {:?}", cfg.uri.endpoint);
                l.install(sock, p);
                l.connecting.set(false);
                l.reconnected.notify_all();
                return;
            }
            Ok(Ok(_)) => tracing::error!("nbd: export shrank or changed flags across reconnect"),
            Ok(Err(e)) => tracing::debug!("nbd: reconnect failed: {e}"),
            Err(_) => tracing::debug!("nbd: reconnect timed out"),
        }
        if start.elapsed() >= cfg.timeout {
            l.connecting.set(false);
            l.reconnected.notify_all(); // waiters re-check their deadlines
            return;
        }
        drop(l);
        rt::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Read replies until the connection breaks; then report every request in flight as lost.
async fn reader(c: Rc<Conn>) {
    if let Err(e) = read_replies(&c).await
        && !c.dead.get()
    {
        tracing::warn!("nbd: connection lost: {e}");
    }
    c.kill();
    let lost: Vec<Pending> = c.pending.borrow_mut().drain().map(|(_, p)| p).collect();
    for p in lost {
        if let Some(tx) = p.tx {
            let _ = tx.send(Outcome::Lost);
        }
    }
}

fn bad(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("protocol violation: {why}"),
    )
}

/// Largest chunk payload we accept for error and block status chunks.
const MAX_META_CHUNK: u32 = 1 << 20;

async fn read_replies(c: &Conn) -> io::Result<()> {
    let mut hdr = IoBuf::with_capacity(proto::STRUCTURED_REPLY_LEN);
    loop {
        c.sock.read_into(&mut hdr, proto::SIMPLE_REPLY_LEN).await?;
        let h = match proto::parse_reply_header(hdr.as_slice()).map_err(|e| bad(e.0))? {
            Some(h) => h,
            None => {
                hdr.set_len(proto::STRUCTURED_REPLY_LEN);
                rt::net::recv_range(c.sock.fd(), &mut hdr, 16, 4).await?;
                proto::parse_reply_header(hdr.as_slice())
                    .map_err(|e| bad(e.0))?
                    .ok_or_else(|| bad("short chunk header"))?
            }
        };
        let handle = match h {
            ReplyHeader::Simple { handle, .. } | ReplyHeader::Chunk { handle, .. } => handle,
        };
        // Take the request out while its payload is read, so no RefCell borrow spans an await.
        let mut p = c
            .pending
            .borrow_mut()
            .remove(&handle)
            .ok_or_else(|| bad("reply to unknown handle"))?;
        let done = match h {
            ReplyHeader::Simple { error, .. } => {
                if error != 0 {
                    p.error = Some(error);
                } else if let Some(buf) = p.data.as_mut() {
                    if c.params.structured {
                        return Err(bad("simple reply with data after structured replies"));
                    }
                    rt::net::recv_exact(c.sock.fd(), buf).await?;
                    p.covered = p.len as u64;
                }
                true
            }
            ReplyHeader::Chunk {
                flags, typ, len, ..
            } => {
                read_chunk(c, &mut p, typ, len).await?;
                flags & chunk::FLAG_DONE != 0
            }
        };
        if !done {
            c.pending.borrow_mut().insert(handle, p);
            continue;
        }
        if p.typ == proto::cmd::READ && p.error.is_none() && p.covered != p.len as u64 {
            return Err(bad("read reply does not cover the request"));
        }
        if let Some(tx) = p.tx {
            let out = match p.error {
                Some(e) => Err(e),
                None => Ok(Answer {
                    data: p.data,
                    status: p.status,
                }),
            };
            let _ = tx.send(Outcome::Done(out));
        }
        if c.retiring.get() && c.pending.borrow().is_empty() {
            return Ok(()); // retired and drained: the reader closes it
        }
    }
}

/// Consume one structured chunk of `len` payload bytes for request `p`.
async fn read_chunk(c: &Conn, p: &mut Pending, typ: u16, len: u32) -> io::Result<()> {
    let end = p.off + p.len as u64;
    match typ {
        chunk::NONE if len == 0 => Ok(()),
        chunk::OFFSET_DATA if p.typ == proto::cmd::READ && len > 8 => {
            let at = proto::parse_offset(&c.sock.read_vec(8).await?).map_err(|e| bad(e.0))?;
            let n = (len - 8) as u64;
            if at < p.off || at.checked_add(n).is_none_or(|e| e > end) {
                return Err(bad("data chunk outside the request"));
            }
            let buf = p.data.as_mut().expect("read has a buffer");
            p.covered += n;
            rt::net::recv_range(c.sock.fd(), buf, (at - p.off) as usize, n as usize).await
        }
        chunk::OFFSET_HOLE if p.typ == proto::cmd::READ && len == 12 => {
            let (at, n) = proto::parse_hole(&c.sock.read_vec(12).await?).map_err(|e| bad(e.0))?;
            if at < p.off || at + n as u64 > end {
                return Err(bad("hole chunk outside the request"));
            }
            p.covered += n as u64;
            let s = (at - p.off) as usize;
            p.data.as_mut().expect("read has a buffer").as_mut_slice()[s..s + n as usize].fill(0);
            Ok(())
        }
        chunk::BLOCK_STATUS if p.typ == proto::cmd::BLOCK_STATUS && len <= MAX_META_CHUNK => {
            let (ctx, d) = proto::parse_block_status(&c.sock.read_vec(len as usize).await?)
                .map_err(|e| bad(e.0))?;
            if Some(ctx) == c.params.base_allocation {
                p.status = d;
            }
            Ok(())
        }
        t if chunk::is_error(t) && len <= MAX_META_CHUNK => {
            let e = proto::parse_error_payload(&c.sock.read_vec(len as usize).await?)
                .map_err(|e| bad(e.0))?;
            p.error.get_or_insert(e);
            Ok(())
        }
        _ => Err(bad("unexpected chunk type or length")),
    }
}

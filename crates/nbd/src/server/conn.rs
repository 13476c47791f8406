//! One client connection: negotiation, then the transmission phase. The reading loop parses
//! requests in order (from a buffer that one `recv` fills with as many pipelined requests as have
//! arrived) and spawns one task per request, so requests run concurrently and replies go out in
//! completion order. A finished request queues its reply whole; one writer task per connection
//! sends everything queued in one gathered `sendmsg` per loop turn, so replies that finish
//! together share a system call and each reply stays contiguous on the socket.
//!
//! Memory: before a request's buffers exist it is charged what serving it may allocate
//! (`cost.rs`), to this connection's budget and then to the server-wide one shared by every
//! connection on every worker thread; both get it back once its reply is sent. When either runs
//! out we stop reading, and TCP pushes back on the client: it waits, it is not failed.
//!
//! Idleness: with an idle timeout, a client that sends no request for that long while nothing of
//! its is in flight (no request running, no reply unsent) is disconnected. The handshake has its
//! own timeout. Stalls: a client that keeps the server waiting on it (reads none of its replies,
//! sends nothing more of a WRITE payload) past the stall timeout is disconnected too, so it cannot
//! hold its share of the server-wide budget for ever.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rt::IoBuf;
use targets::{Extent, TargetQueue};

use super::cost::{self, HOLE_GRANULE, MAX_DESCRIPTORS, REQUEST_COST};
use super::negotiate::{BASE_ALLOCATION_ID, ExportInfo, Next, SERVER_FLAGS, Session};
use super::request::{Cmd, Limits, Verdict, check};
use super::stall::Stall;
use crate::proto::{self, chunk};
use crate::shared_budget::{SharedBudget, SharedPermit};
use crate::sock::{Seg, Sock};
use rt::local::{Budget, Notify, Permit};
use rt::select::{Either, select2};

/// Per-connection limits from the export configuration.
#[derive(Clone)]
pub struct ConnLimits {
    pub max_in_flight_bytes: u64,
    /// Shared by every connection of the export.
    pub server_budget: Arc<SharedBudget>,
    pub handshake_timeout: Duration,
    /// Disconnect a client that has been idle this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Disconnect a client that keeps the server waiting on it this long (`None`: never).
    pub stall_timeout: Option<Duration>,
    /// How long a closing connection waits for replies a client does not read.
    pub drain_timeout: Duration,
}

/// Request stream read buffer: headers and small write payloads that arrived together are
/// taken from here instead of one `recv` each.
const READ_BUF: usize = 64 << 10;
/// A large write payload is received in pieces of this size, so a stalled sender shows.
const PAYLOAD_PIECE: usize = 1 << 20;

/// Serve one accepted connection until the client leaves, misbehaves, or reading is shut down.
pub async fn serve<Q: TargetQueue + 'static>(
    sock: Rc<Sock>,
    q: Rc<Q>,
    export: Rc<ExportInfo>,
    lim: ConnLimits,
    counters: Option<Arc<stats::QueueCounters>>,
) {
    let session = match rt::time::timeout(lim.handshake_timeout, negotiate(&sock, &export)).await {
        Ok(Ok(Some(s))) => Some(s),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::debug!("nbd: negotiation failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("nbd: negotiation timed out");
            None
        }
    };
    match session {
        Some(s) => transmit(sock.clone(), q, &export, &s, lim, counters).await,
        // Closing the fd is not enough: an abandoned recv still in the ring holds the socket
        // open. Shutting it down completes that recv and tells the client at once.
        None => sock.shutdown(Shutdown::Both),
    }
}

/// Greeting and option haggling. `Ok(None)`: the client aborted or must be dropped.
async fn negotiate(sock: &Sock, export: &ExportInfo) -> io::Result<Option<Session>> {
    sock.send(&proto::encode_greeting(SERVER_FLAGS)).await?;
    let mut s = Session::default();
    let f = sock.read_vec(4).await?;
    if s.client_flags(u32::from_be_bytes(f[..4].try_into().unwrap()))
        .is_err()
    {
        return Ok(None);
    }
    let mut hdr = IoBuf::with_capacity(proto::OPTION_HEADER_LEN);
    loop {
        sock.read_into(&mut hdr, proto::OPTION_HEADER_LEN).await?;
        let Ok(h) = proto::parse_option_header(hdr.as_slice()) else {
            return Ok(None);
        };
        if h.len > proto::MAX_OPTION_LEN {
            // Skip a moderately oversized payload and say so; beyond that, the client is not
            // speaking NBD to us and we hang up.
            if h.len > 16 << 20 {
                return Ok(None);
            }
            sock.discard(h.len as u64).await?;
            sock.send(&proto::encode_opt_reply(
                h.option,
                proto::rep::ERR_TOO_BIG,
                b"option too large",
            ))
            .await?;
            continue;
        }
        let data = sock.read_vec(h.len as usize).await?;
        let mut out = Vec::new();
        let next = s.option(export, h.option, &data, &mut out);
        if !out.is_empty() {
            sock.send(&out).await?;
        }
        match next {
            Next::Continue => {}
            Next::Transmit => return Ok(Some(s)),
            Next::Close => return Ok(None),
        }
    }
}

/// The transmission side shared by the reading loop, the request tasks and the writer.
struct Conn {
    sock: Rc<Sock>,
    structured: bool,
    /// Replies waiting for the writer, each whole, in completion order.
    out: RefCell<Vec<Reply>>,
    more: Notify,
    /// No more replies will come: the writer ends once the queue is empty.
    closing: Cell<bool>,
    /// A send failed: the connection is cut and further replies are dropped.
    broken: Cell<bool>,
    /// What waits on the client, and when it last moved.
    stall: Stall,
    /// The worker thread's counters (shared by its connections, all on that thread).
    counters: Option<Arc<stats::QueueCounters>>,
}

/// One reply's bytes, and the budget its request holds until they are sent.
struct Reply {
    segs: Vec<Seg>,
    _charge: Charge,
}

/// A request's share of both budgets, held until its reply is sent (or dropped).
struct Charge {
    _conn: Permit,
    _server: SharedPermit,
}

/// Take `n` units from the connection's budget, then from the server's. In that order, a
/// connection waits on the shared budget with one request at a time.
async fn charge(conn: &Rc<Budget>, server: &Arc<SharedBudget>, n: u64) -> Charge {
    let c = conn.acquire(n).await;
    let s = server.acquire(n).await;
    Charge {
        _conn: c,
        _server: s,
    }
}

impl AsRef<[Seg]> for Reply {
    fn as_ref(&self) -> &[Seg] {
        &self.segs
    }
}

/// The request stream, read through a buffer.
struct Reader {
    buf: IoBuf,
    start: usize,
    end: usize,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            buf: IoBuf::with_capacity(READ_BUF),
            start: 0,
            end: 0,
        }
    }

    fn available(&self) -> usize {
        self.end - self.start
    }

    /// Make at least `n` (<= READ_BUF) bytes available, receiving whatever has arrived.
    async fn fill(&mut self, sock: &Sock, n: usize) -> io::Result<()> {
        while self.available() < n {
            if self.start > 0 && READ_BUF - self.start < n {
                let (a, b) = (self.start, self.end);
                self.buf.as_mut_slice().copy_within(a..b, 0);
                self.start = 0;
                self.end = b - a;
            }
            let got =
                rt::net::recv_some(sock.fd(), &mut self.buf, self.end, READ_BUF - self.end).await?;
            if got == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.end += got;
        }
        Ok(())
    }

    async fn header(&mut self, sock: &Sock) -> io::Result<[u8; proto::REQUEST_LEN]> {
        self.fill(sock, proto::REQUEST_LEN).await?;
        let h = self.buf.as_slice()[self.start..self.start + proto::REQUEST_LEN]
            .try_into()
            .unwrap();
        self.start += proto::REQUEST_LEN;
        Ok(h)
    }

    /// A write payload of `len` bytes: what is buffered, then the rest straight from the socket,
    /// telling `stall` each time a piece has come in.
    async fn payload(&mut self, sock: &Sock, len: usize, stall: &Stall) -> io::Result<IoBuf> {
        let mut b = IoBuf::with_capacity(len);
        let mut k = self.available().min(len);
        b.as_mut_slice()[..k].copy_from_slice(&self.buf.as_slice()[self.start..self.start + k]);
        self.start += k;
        let _waiting = stall.wait();
        while k < len {
            let n = (len - k).min(PAYLOAD_PIECE);
            rt::net::recv_range(sock.fd(), &mut b, k, n).await?;
            stall.moved();
            k += n;
        }
        Ok(b)
    }

    /// Drop `n` bytes of the stream (a payload we refuse).
    async fn discard(&mut self, sock: &Sock, n: u64) -> io::Result<()> {
        let k = (self.available() as u64).min(n);
        self.start += k as usize;
        if n > k {
            sock.discard(n - k).await?;
        }
        Ok(())
    }
}

async fn transmit<Q: TargetQueue + 'static>(
    sock: Rc<Sock>,
    q: Rc<Q>,
    export: &ExportInfo,
    s: &Session,
    lim: ConnLimits,
    counters: Option<Arc<stats::QueueCounters>>,
) {
    let limits = Limits {
        size: export.size,
        min_block: export.min_block,
        max_payload: export.max_block,
        flags: export.flags_for(s.structured),
        structured: s.structured,
        base_allocation: s.base_allocation,
    };
    let conn = Rc::new(Conn {
        sock: sock.clone(),
        structured: s.structured,
        out: RefCell::new(Vec::new()),
        more: Notify::default(),
        closing: Cell::new(false),
        broken: Cell::new(false),
        stall: Stall::new(),
        counters,
    });
    let writer = rt::spawn(conn.clone().writer());
    let budget = Rc::new(Budget::new(
        lim.max_in_flight_bytes
            .max(cost::max_charge(export.max_block)),
    ));
    let server = &lim.server_budget;
    let mut rd = Reader::new();
    let reading = async {
        loop {
            let Ok(hdr) = rd.header(&sock).await else {
                break; // EOF, error, or a shutdown by the server (stop, idle timeout)
            };
            let Ok(req) = proto::parse_request(&hdr) else {
                tracing::debug!("nbd: bad request magic, closing");
                break;
            };
            match check(&req, &limits) {
                Verdict::Disconnect => break,
                Verdict::Hangup(why) => {
                    tracing::debug!("nbd: {why}, closing");
                    break;
                }
                Verdict::Fail { err, skip } => {
                    let c = charge(&budget, server, REQUEST_COST).await;
                    if rd.discard(&sock, skip as u64).await.is_err() {
                        break;
                    }
                    conn.reply_error(req.handle, err, "request rejected", c);
                }
                Verdict::Run(cmd) => {
                    let c = charge(&budget, server, cost::charge(&cmd)).await;
                    let payload = if let Cmd::Write { len, .. } = cmd {
                        match rd.payload(&sock, len as usize, &conn.stall).await {
                            Ok(b) => Some(b),
                            Err(_) => break, // disconnect mid-request: nothing to answer
                        }
                    } else {
                        None
                    };
                    rt::spawn(request_task(
                        conn.clone(),
                        q.clone(),
                        req.handle,
                        cmd,
                        payload,
                        c,
                    ));
                }
            }
        }
    };
    // The watchers only cut the socket; the reading loop then ends on its own.
    let idle = async {
        if let Some(t) = lim.idle_timeout {
            idle_watch(&sock, &budget, t).await;
        }
        std::future::pending::<()>().await
    };
    let stalled = async {
        if let Some(t) = lim.stall_timeout {
            stall_watch(&sock, &conn.stall, t).await;
        }
        std::future::pending::<()>().await
    };
    select2(reading, select2(idle, stalled)).await;
    // Let in-flight requests answer; a client that stops reading gets cut off after a while.
    if let Either::Right(()) = select2(budget.idle(), rt::time::sleep(lim.drain_timeout)).await {
        sock.shutdown(Shutdown::Both);
        budget.idle().await;
    }
    conn.closing.set(true);
    conn.more.notify_all();
    writer.await;
    sock.shutdown(Shutdown::Both);
}

/// Disconnect the client once it has had nothing in flight and sent no request for `limit`.
/// Every request takes budget the moment it is read, so "idle since" of the connection's budget
/// is the later of the last request and the last reply sent.
async fn idle_watch(sock: &Sock, budget: &Budget, limit: Duration) {
    loop {
        budget.idle().await;
        let Some(since) = budget.idle_since() else {
            continue;
        };
        let quiet = since.elapsed();
        if quiet >= limit {
            tracing::info!(
                "nbd: {}: no request for {} s and nothing in flight, disconnecting",
                sock.peer(),
                limit.as_secs_f64()
            );
            sock.shutdown(Shutdown::Both);
            return;
        }
        rt::time::sleep(limit - quiet).await;
    }
}

/// Disconnect the client once it has kept us waiting on it, without moving, for `limit`.
async fn stall_watch(sock: &Sock, stall: &Stall, limit: Duration) {
    loop {
        let stalled = stall.stalled_for().unwrap_or_default();
        if stalled >= limit {
            tracing::info!(
                "nbd: {}: read no reply and sent no request data for {} s, disconnecting",
                sock.peer(),
                limit.as_secs_f64()
            );
            sock.shutdown(Shutdown::Both);
            return;
        }
        rt::time::sleep(limit - stalled).await;
    }
}

/// The task serving one request (a function of its own so its size can be checked against
/// [`REQUEST_COST`]).
async fn request_task<Q: TargetQueue + 'static>(
    c: Rc<Conn>,
    q: Rc<Q>,
    handle: u64,
    cmd: Cmd,
    payload: Option<IoBuf>,
    charge: Charge,
) {
    c.run(&*q, handle, cmd, payload, charge).await
}

impl Conn {
    async fn run<Q: TargetQueue>(
        &self,
        q: &Q,
        handle: u64,
        cmd: Cmd,
        payload: Option<IoBuf>,
        charge: Charge,
    ) {
        let counted = stats_op(&cmd).and_then(|op| Some((self.counters.as_ref()?, op)));
        let t0 = counted.map(|(c, _)| c.start());
        let done = |failed: bool| {
            if let (Some((c, (op, len))), Some(t0)) = (counted, t0) {
                c.finish(op, len, failed, t0);
            }
        };
        let res = match cmd {
            Cmd::Read { off, len, df } => {
                let mut buf = IoBuf::with_capacity(len as usize);
                match q.read(off, &mut buf).await {
                    Ok(()) => {
                        done(false);
                        return self.reply_read(handle, off, &buf, df, charge);
                    }
                    Err(e) => Err(e),
                }
            }
            Cmd::Write { off, fua, .. } => {
                let buf = payload.expect("write without payload");
                q.write(off, &buf, fua).await
            }
            Cmd::Flush => q.flush().await,
            Cmd::Trim { off, len, fua } => {
                then_flush(q, fua, q.discard(off, len as u64).await).await
            }
            Cmd::Cache => Ok(()), // nothing to prefetch into: a hint we may ignore
            Cmd::WriteZeroes {
                off,
                len,
                fua,
                unmap,
                fast,
            } => {
                let r = match q.write_zeroes(off, len as u64, unmap).await {
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && !fast => {
                        write_zero_buffers(q, off, len as u64).await
                    }
                    r => r,
                };
                then_flush(q, fua, r).await
            }
            Cmd::BlockStatus { off, len, one } => match q.block_status(off, len as u64).await {
                Ok(ext) => {
                    let d = descriptors(&ext, len, one);
                    return self.reply_block_status(handle, &d, charge);
                }
                Err(e) => Err(e),
            },
        };
        done(res.is_err());
        match res {
            Ok(()) => self.reply_ok(handle, charge),
            Err(e) => self.reply_error(handle, proto::errno_to_wire(&e), &e.to_string(), charge),
        }
    }

    /// Queue one whole reply for the writer (dropped, with its charge, if the connection broke).
    fn push(&self, segs: Vec<Seg>, charge: Charge) {
        if self.broken.get() {
            return;
        }
        self.out.borrow_mut().push(Reply {
            segs,
            _charge: charge,
        });
        self.more.notify_all();
    }

    /// Send what is queued, one gathered `sendmsg` per batch, until the connection closes. A
    /// failed send means the client is gone or broken: cut the connection so the reading loop
    /// ends too, and drop the replies (their charges go back to the budgets).
    async fn writer(self: Rc<Self>) {
        loop {
            let batch = std::mem::take(&mut *self.out.borrow_mut());
            if batch.is_empty() {
                if self.closing.get() {
                    return;
                }
                self.more.notified().await;
                continue;
            }
            let waiting = self.stall.wait();
            let (r, batch) = self.sock.send_gather(batch, || self.stall.moved()).await;
            drop(waiting);
            drop(batch);
            if r.is_err() {
                self.broken.set(true);
                self.sock.shutdown(Shutdown::Both);
                self.out.borrow_mut().clear();
            }
        }
    }

    fn reply_ok(&self, handle: u64, charge: Charge) {
        let h = if self.structured {
            proto::encode_chunk_header(chunk::FLAG_DONE, chunk::NONE, handle, 0).to_vec()
        } else {
            proto::encode_simple_reply(0, handle).to_vec()
        };
        self.push(vec![Seg::Own(h)], charge);
    }

    fn reply_error(&self, handle: u64, error: u32, msg: &str, charge: Charge) {
        let v = if self.structured {
            let p = proto::encode_error_payload(error, msg);
            let mut v =
                proto::encode_chunk_header(chunk::FLAG_DONE, chunk::ERROR, handle, p.len() as u32)
                    .to_vec();
            v.extend(p);
            v
        } else {
            proto::encode_simple_reply(error, handle).to_vec()
        };
        self.push(vec![Seg::Own(v)], charge);
    }

    fn reply_read(&self, handle: u64, off: u64, buf: &IoBuf, df: bool, charge: Charge) {
        if !self.structured {
            let h = proto::encode_simple_reply(0, handle).to_vec();
            return self.push(vec![Seg::Own(h), Seg::range(buf, 0, buf.len())], charge);
        }
        let pieces = plan_read(buf.as_slice(), df);
        let n = pieces.len();
        let mut segs = Vec::with_capacity(2 * n);
        for (i, p) in pieces.into_iter().enumerate() {
            let flags = if i + 1 == n { chunk::FLAG_DONE } else { 0 };
            let at = off + p.start as u64;
            if p.hole {
                let mut v =
                    proto::encode_chunk_header(flags, chunk::OFFSET_HOLE, handle, 12).to_vec();
                v.extend_from_slice(&at.to_be_bytes());
                v.extend_from_slice(&(p.len as u32).to_be_bytes());
                segs.push(Seg::Own(v));
            } else {
                let mut v =
                    proto::encode_chunk_header(flags, chunk::OFFSET_DATA, handle, 8 + p.len as u32)
                        .to_vec();
                v.extend_from_slice(&at.to_be_bytes());
                segs.push(Seg::Own(v));
                segs.push(Seg::range(buf, p.start, p.len));
            }
        }
        self.push(segs, charge);
    }

    fn reply_block_status(&self, handle: u64, d: &[proto::Descriptor], charge: Charge) {
        let p = proto::encode_block_status(BASE_ALLOCATION_ID, d);
        let mut v = proto::encode_chunk_header(
            chunk::FLAG_DONE,
            chunk::BLOCK_STATUS,
            handle,
            p.len() as u32,
        )
        .to_vec();
        v.extend(p);
        self.push(vec![Seg::Own(v)], charge);
    }
}

/// The counters' op and byte count of a request (none for hints and queries).
fn stats_op(cmd: &Cmd) -> Option<(stats::Op, u64)> {
    Some(match *cmd {
        Cmd::Read { len, .. } => (stats::Op::Read, len as u64),
        Cmd::Write { len, .. } => (stats::Op::Write, len as u64),
        Cmd::Flush => (stats::Op::Flush, 0),
        Cmd::Trim { len, .. } => (stats::Op::Discard, len as u64),
        Cmd::WriteZeroes { len, .. } => (stats::Op::WriteZeroes, len as u64),
        Cmd::Cache | Cmd::BlockStatus { .. } => return None,
    })
}

async fn then_flush<Q: TargetQueue>(q: &Q, fua: bool, r: io::Result<()>) -> io::Result<()> {
    r?;
    if fua { q.flush().await } else { Ok(()) }
}

/// WRITE_ZEROES for a target without a native way: write zeroes from the thread's shared zero
/// buffer, so a request allocates nothing however long its range (it is charged as a command).
async fn write_zero_buffers<Q: TargetQueue>(q: &Q, off: u64, len: u64) -> io::Result<()> {
    let z = rt::zeroes::zeroes();
    for (at, buf) in z.pieces(len) {
        q.write(off + at, buf, false).await?;
    }
    Ok(())
}

/// One structured read chunk: data or a hole, relative to the start of the read.
#[derive(Debug, PartialEq, Eq)]
struct Piece {
    start: usize,
    len: usize,
    hole: bool,
}

/// Split read data into runs of data and all-zero granules (sent as holes: no bytes on the
/// wire). With DF (don't fragment) the whole read is one data chunk.
fn plan_read(data: &[u8], df: bool) -> Vec<Piece> {
    if df || data.len() < 2 * HOLE_GRANULE {
        return vec![Piece {
            start: 0,
            len: data.len(),
            hole: false,
        }];
    }
    let mut out: Vec<Piece> = Vec::new();
    for (i, g) in data.chunks(HOLE_GRANULE).enumerate() {
        let hole = g.iter().all(|&b| b == 0);
        match out.last_mut() {
            Some(p) if p.hole == hole => p.len += g.len(),
            _ => out.push(Piece {
                start: i * HOLE_GRANULE,
                len: g.len(),
                hole,
            }),
        }
    }
    out
}

/// Target extents as `base:allocation` descriptors: clipped to the request, split to fit 32-bit
/// lengths, at least one, at most one with REQ_ONE.
fn descriptors(ext: &[Extent], len: u32, one: bool) -> Vec<proto::Descriptor> {
    let mut out: Vec<proto::Descriptor> = Vec::new();
    let mut left = len as u64;
    for e in ext {
        if left == 0 || out.len() >= MAX_DESCRIPTORS {
            break;
        }
        let n = e.len.min(left);
        if n == 0 {
            continue;
        }
        let mut flags = 0;
        if e.hole {
            flags |= proto::STATE_HOLE;
        }
        if e.zero {
            flags |= proto::STATE_ZERO;
        }
        match out.last_mut() {
            Some(d) if d.flags == flags => d.len += n as u32, // n <= left <= len fits
            _ => out.push(proto::Descriptor {
                len: n as u32,
                flags,
            }),
        }
        left -= n;
    }
    if out.is_empty() {
        // A target that reports nothing: "allocated, contents unknown" is always safe.
        out.push(proto::Descriptor { len, flags: 0 });
    }
    if one {
        out.truncate(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boxed future of a request task, for a target queue: what `REQUEST_COST` must cover
    /// besides the reply (a few dozen bytes) and the task's bookkeeping (about a hundred).
    fn task_size<Q: TargetQueue + 'static>(q: Q) -> usize {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let conn = Rc::new(Conn {
            sock: Rc::new(Sock::unix(a.into())),
            structured: true,
            out: RefCell::new(Vec::new()),
            more: Notify::default(),
            closing: Cell::new(false),
            broken: Cell::new(false),
            stall: Stall::new(),
            counters: None,
        });
        let c = rt::Runtime::new()
            .unwrap()
            .block_on(async { charge(&Rc::new(Budget::new(1)), &SharedBudget::new(1), 1).await });
        let t = request_task(conn, Rc::new(q), 0, Cmd::Flush, None, c);
        std::mem::size_of_val(&t)
    }

    #[test]
    fn a_request_task_fits_in_its_charge() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        use targets::Target;
        let file = || targets::file::FileTarget::open(&p, None, false, false).unwrap();
        let delayed = targets::Filtered {
            filter: targets::filter::delay::Delay::new(Duration::ZERO),
            next: file(),
        };
        let null = targets::null::NullTarget::new(1 << 20, 512).unwrap();
        let sizes = [
            task_size(null.open_queue(0).unwrap()),
            task_size(file().open_queue(0).unwrap()),
            task_size(delayed.open_queue(0).unwrap()),
        ];
        for s in sizes {
            assert!(s as u64 <= REQUEST_COST / 4, "{sizes:?}");
        }
        eprintln!("request task sizes (null, file, delay+file): {sizes:?}");
    }

    #[test]
    fn read_plan_finds_holes_and_respects_df() {
        let mut d = vec![0u8; 4 * HOLE_GRANULE];
        d[HOLE_GRANULE + 5] = 1;
        let p = plan_read(&d, false);
        assert_eq!(
            p,
            vec![
                Piece {
                    start: 0,
                    len: HOLE_GRANULE,
                    hole: true
                },
                Piece {
                    start: HOLE_GRANULE,
                    len: HOLE_GRANULE,
                    hole: false
                },
                Piece {
                    start: 2 * HOLE_GRANULE,
                    len: 2 * HOLE_GRANULE,
                    hole: true
                },
            ]
        );
        assert_eq!(plan_read(&d, true).len(), 1);
    }

    #[test]
    fn descriptors_clip_merge_and_limit() {
        let e = |len, hole| Extent {
            len,
            hole,
            zero: hole,
        };
        let d = descriptors(
            &[e(4096, true), e(4096, true), e(1 << 40, false)],
            10000,
            false,
        );
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].len, 8192);
        assert_eq!(d[0].flags, proto::STATE_HOLE | proto::STATE_ZERO);
        assert_eq!(d[1].len, 10000 - 8192);
        assert_eq!(
            descriptors(&[], 512, false),
            vec![proto::Descriptor { len: 512, flags: 0 }]
        );
        assert_eq!(
            descriptors(&[e(512, true), e(512, false)], 1024, true).len(),
            1
        );
    }
}

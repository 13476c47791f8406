//! One client connection: negotiation, then the transmission phase. The reading loop parses
//! requests in order and spawns one task per request, so requests run concurrently and replies
//! go out in completion order; a FIFO lock keeps each reply whole on the socket. A byte budget,
//! taken before a request's buffers exist, bounds the memory a connection can pin: when it runs
//! out we stop reading, and TCP pushes back on the client.

use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::Duration;

use rt::IoBuf;
use target::{Extent, TargetQueue};

use super::negotiate::{BASE_ALLOCATION_ID, ExportInfo, Next, SERVER_FLAGS, Session};
use super::request::{Cmd, Limits, Verdict, check};
use crate::local::{Budget, Either, Lock, select2};
use crate::proto::{self, chunk};
use crate::sock::Sock;

/// Per-connection limits from the export configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_in_flight_bytes: u64,
    pub handshake_timeout: Duration,
    /// How long a closing connection waits for replies a client does not read.
    pub drain_timeout: Duration,
}

/// Units one request costs besides its data (bounds the number of small requests in flight).
const REQUEST_COST: u64 = 4096;
/// Granule for finding all-zero runs in read data (sent as holes when fragmenting is allowed).
const HOLE_GRANULE: usize = 64 << 10;
/// Most descriptors in one block status reply.
const MAX_DESCRIPTORS: usize = 4096;

/// Serve one accepted connection until the client leaves, misbehaves, or reading is shut down.
pub async fn serve<Q: TargetQueue + 'static>(
    sock: Rc<Sock>,
    q: Rc<Q>,
    export: Rc<ExportInfo>,
    lim: ConnLimits,
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
        Some(s) => transmit(sock.clone(), q, &export, &s, lim).await,
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

/// The transmission side shared by the reading loop and the request tasks.
struct Conn {
    sock: Rc<Sock>,
    write: Lock,
    structured: bool,
}

async fn transmit<Q: TargetQueue + 'static>(
    sock: Rc<Sock>,
    q: Rc<Q>,
    export: &ExportInfo,
    s: &Session,
    lim: ConnLimits,
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
        write: Lock::default(),
        structured: s.structured,
    });
    let budget = Rc::new(Budget::new(
        lim.max_in_flight_bytes
            .max(REQUEST_COST + export.max_block as u64),
    ));
    let mut hdr = IoBuf::with_capacity(proto::REQUEST_LEN);
    loop {
        if sock.read_into(&mut hdr, proto::REQUEST_LEN).await.is_err() {
            break; // EOF, error, or shutdown(Read) by the server
        }
        let Ok(req) = proto::parse_request(hdr.as_slice()) else {
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
                let permit = budget.acquire(REQUEST_COST).await;
                if sock.discard(skip as u64).await.is_err() {
                    break;
                }
                let c = conn.clone();
                rt::spawn(async move {
                    let _p = permit;
                    c.reply_error(req.handle, err, "request rejected").await;
                });
            }
            Verdict::Run(cmd) => {
                let data_len = match cmd {
                    Cmd::Read { len, .. } | Cmd::Write { len, .. } => len as u64,
                    _ => 0,
                };
                let permit = budget.acquire(REQUEST_COST + data_len).await;
                let payload = if let Cmd::Write { len, .. } = cmd {
                    let mut b = IoBuf::with_capacity(len as usize);
                    if rt::net::recv_exact(sock.fd(), &mut b).await.is_err() {
                        break; // disconnect mid-request: nothing to answer
                    }
                    Some(b)
                } else {
                    None
                };
                let (c, q) = (conn.clone(), q.clone());
                rt::spawn(async move {
                    let _p = permit;
                    c.run(&*q, req.handle, cmd, payload).await;
                });
            }
        }
    }
    // Let in-flight requests answer; a client that stops reading gets cut off after a while.
    if let Either::Right(()) = select2(budget.idle(), rt::time::sleep(lim.drain_timeout)).await {
        sock.shutdown(Shutdown::Both);
        budget.idle().await;
    }
    sock.shutdown(Shutdown::Both);
}

impl Conn {
    async fn run<Q: TargetQueue>(&self, q: &Q, handle: u64, cmd: Cmd, payload: Option<IoBuf>) {
        let res = match cmd {
            Cmd::Read { off, len, df } => {
                let mut buf = IoBuf::with_capacity(len as usize);
                match q.read(off, &mut buf).await {
                    Ok(()) => return self.reply_read(handle, off, &buf, df).await,
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
                    return self.reply_block_status(handle, &d).await;
                }
                Err(e) => Err(e),
            },
        };
        match res {
            Ok(()) => self.reply_ok(handle).await,
            Err(e) => {
                self.reply_error(handle, proto::errno_to_wire(&e), &e.to_string())
                    .await
            }
        }
    }

    /// A failed send means the client is gone or broken: cut the connection so the reading loop
    /// ends too.
    fn check_send(&self, r: io::Result<()>) {
        if r.is_err() {
            self.sock.shutdown(Shutdown::Both);
        }
    }

    async fn reply_ok(&self, handle: u64) {
        let _g = self.write.lock().await;
        let r = if self.structured {
            let h = proto::encode_chunk_header(chunk::FLAG_DONE, chunk::NONE, handle, 0);
            self.sock.send(&h).await
        } else {
            self.sock.send(&proto::encode_simple_reply(0, handle)).await
        };
        self.check_send(r);
    }

    async fn reply_error(&self, handle: u64, error: u32, msg: &str) {
        let _g = self.write.lock().await;
        let r = if self.structured {
            let p = proto::encode_error_payload(error, msg);
            let mut v =
                proto::encode_chunk_header(chunk::FLAG_DONE, chunk::ERROR, handle, p.len() as u32)
                    .to_vec();
            v.extend(p);
            self.sock.send(&v).await
        } else {
            self.sock
                .send(&proto::encode_simple_reply(error, handle))
                .await
        };
        self.check_send(r);
    }

    async fn reply_read(&self, handle: u64, off: u64, buf: &IoBuf, df: bool) {
        let _g = self.write.lock().await;
        if !self.structured {
            let h = proto::encode_simple_reply(0, handle);
            let r = self.sock.send_with_data(&h, buf, 0, buf.len()).await;
            return self.check_send(r);
        }
        let pieces = plan_read(buf.as_slice(), df);
        let n = pieces.len();
        for (i, p) in pieces.into_iter().enumerate() {
            let flags = if i + 1 == n { chunk::FLAG_DONE } else { 0 };
            let at = off + p.start as u64;
            let r = if p.hole {
                let mut v =
                    proto::encode_chunk_header(flags, chunk::OFFSET_HOLE, handle, 12).to_vec();
                v.extend_from_slice(&at.to_be_bytes());
                v.extend_from_slice(&(p.len as u32).to_be_bytes());
                self.sock.send(&v).await
            } else {
                let mut v =
                    proto::encode_chunk_header(flags, chunk::OFFSET_DATA, handle, 8 + p.len as u32)
                        .to_vec();
                v.extend_from_slice(&at.to_be_bytes());
                self.sock.send_with_data(&v, buf, p.start, p.len).await
            };
            if r.is_err() {
                return self.check_send(r);
            }
        }
    }

    async fn reply_block_status(&self, handle: u64, d: &[proto::Descriptor]) {
        let _g = self.write.lock().await;
        let p = proto::encode_block_status(BASE_ALLOCATION_ID, d);
        let mut v = proto::encode_chunk_header(
            chunk::FLAG_DONE,
            chunk::BLOCK_STATUS,
            handle,
            p.len() as u32,
        )
        .to_vec();
        v.extend(p);
        let r = self.sock.send(&v).await;
        self.check_send(r);
    }
}

async fn then_flush<Q: TargetQueue>(q: &Q, fua: bool, r: io::Result<()>) -> io::Result<()> {
    r?;
    if fua { q.flush().await } else { Ok(()) }
}

/// WRITE_ZEROES for a target without a native way: write zero buffers (bounded size).
async fn write_zero_buffers<Q: TargetQueue>(q: &Q, off: u64, len: u64) -> io::Result<()> {
    let step = len.min(1 << 20);
    let mut z = IoBuf::with_capacity(step as usize);
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(step);
        z.set_len(n as usize);
        q.write(off + pos, &z, false).await?;
        pos += n;
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

//! Serving one checked request on the queue's target: where its data lives, and the call.
//!
//! The target seam takes one contiguous buffer per read or write (`IoBuf`). A request's data
//! is a scatter-gather list of guest buffers, so:
//! - **zero copy**: when the list is one stretch of host memory (single buffer, or buffers
//!   that are contiguous in our mapping, merged) and the target never touches bytes with the
//!   CPU (`!Caps::needs_cpu_access`: file, null), the target gets an [`IoBuf::foreign`] view
//!   of guest memory, and io_uring reads or writes the guest's pages directly. The view holds
//!   an `Arc` of the memory table it was made from, so the mapping outlives the I/O even if
//!   the frontend replaces the table meanwhile. If the kernel refuses the guest's buffer
//!   (EINVAL: O_DIRECT wants more alignment than the guest gave) the request is served again
//!   through a bounce buffer.
//! - **bounce**: otherwise an aligned buffer of ours, copied from or to guest memory with
//!   vm-memory's volatile accessors (the guest may be changing those bytes: no Rust reference
//!   to guest memory is ever made). Multi-segment requests and CPU targets (mem, nbd) take
//!   this path; [`Stats`] counts how often and why.

use rt::local::Budget;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rt::IoBuf;
use targets::TargetQueue;
use vm_memory::{Bytes, GuestAddress};

use crate::config::Device;
use crate::memory::Memory;
use crate::request::{Op, Request, S_IOERR, S_OK, Seg};

/// How requests were served (device-wide, all queues).
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    /// Reads and writes served straight from guest memory.
    pub zero_copy: AtomicU64,
    /// Reads and writes bounced because their data was in several separate guest buffers.
    pub bounce_segments: AtomicU64,
    /// ... because the target touches bytes with the CPU.
    pub bounce_cpu: AtomicU64,
    /// ... because the kernel refused the guest's buffer as it was (alignment).
    pub bounce_refused: AtomicU64,
    /// Requests that failed before reaching the target (malformed, out of range, unsupported).
    pub refused: AtomicU64,
    /// Requests the target failed.
    pub errors: AtomicU64,
}

impl Stats {
    fn add(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} requests; reads/writes zero-copy {}, bounced {} (several guest buffers {}, CPU target {}, refused buffer {}); refused {}, target errors {}",
            g(&self.requests),
            g(&self.zero_copy),
            g(&self.bounce_segments) + g(&self.bounce_cpu) + g(&self.bounce_refused),
            g(&self.bounce_segments),
            g(&self.bounce_cpu),
            g(&self.bounce_refused),
            g(&self.refused),
            g(&self.errors)
        )
    }
}

/// The guest buffers `segs` as one view, if they are one stretch of host memory.
fn guest_view(mem: &Arc<Memory>, segs: &[Seg], len: u64) -> Option<IoBuf> {
    let first = segs.first()?;
    let start = mem.host_addr(first.gpa, first.len as usize)?;
    let mut end = start.wrapping_add(first.len as usize);
    for s in &segs[1..] {
        let p = mem.host_addr(s.gpa, s.len as usize)?;
        if p != end {
            return None;
        }
        end = p.wrapping_add(s.len as usize);
    }
    debug_assert_eq!(end as usize - start as usize, len as usize);
    // SAFETY: every segment was checked to lie inside one mapped region of `mem` and they are
    // contiguous, so `start..start + len` is mapped read-write; the keep-alive is an `Arc` of
    // the table, which owns those mappings.
    Some(unsafe { IoBuf::foreign(start, len as usize, Box::new(mem.clone())) })
}

/// Copy guest buffers into `buf` (volatile reads of guest memory).
fn copy_in(mem: &Memory, segs: &[Seg], buf: &mut IoBuf) -> bool {
    let dst = buf.as_mut_slice();
    let mut at = 0;
    for s in segs {
        let n = s.len as usize;
        if mem
            .mmap
            .read_slice(&mut dst[at..at + n], GuestAddress(s.gpa))
            .is_err()
        {
            return false;
        }
        at += n;
    }
    true
}

/// Copy `src` out to guest buffers (volatile writes), at most `src.len()` bytes.
fn copy_out(mem: &Memory, segs: &[Seg], src: &[u8]) -> bool {
    let mut at = 0;
    for s in segs {
        if at >= src.len() {
            break;
        }
        let n = (s.len as usize).min(src.len() - at);
        if mem
            .mmap
            .write_slice(&src[at..at + n], GuestAddress(s.gpa))
            .is_err()
        {
            return false;
        }
        at += n;
    }
    true
}

/// Serve `req` on `q`, write its status byte, and return the used length (bytes written into
/// guest buffers, status included).
pub async fn serve<Q: TargetQueue>(
    req: Request,
    mem: Arc<Memory>,
    q: Rc<Q>,
    dev: Arc<Device>,
    stats: Arc<Stats>,
    bounce: Rc<Budget>,
    counters: Option<Arc<stats::QueueCounters>>,
) -> u32 {
    Stats::add(&stats.requests);
    // The request counters `ublkd vhost --metrics-listen` exports (GET_ID is not I/O).
    let counted = match req.op {
        Op::Read => Some((stats::Op::Read, req.len)),
        Op::Write => Some((stats::Op::Write, req.len)),
        Op::Flush => Some((stats::Op::Flush, 0)),
        Op::Discard => Some((stats::Op::Discard, ranges_bytes(&req))),
        Op::WriteZeroes => Some((stats::Op::WriteZeroes, ranges_bytes(&req))),
        Op::GetId => None,
    };
    let t0 = match (&counters, counted) {
        (Some(c), Some(_)) => Some(c.start()),
        _ => None,
    };
    let r = match req.op {
        Op::Read => read(&req, &mem, &*q, &dev, &stats, &bounce).await,
        Op::Write => write(&req, &mem, &*q, &dev, &stats, &bounce).await,
        Op::Flush => q.flush().await,
        Op::GetId => {
            let mut id = [0u8; crate::config::ID_BYTES];
            let s = dev.opts.serial.as_bytes();
            id[..s.len()].copy_from_slice(s);
            if copy_out(&mem, &req.data, &id[..req.len as usize]) {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(libc::EFAULT))
            }
        }
        Op::Discard | Op::WriteZeroes => {
            let mut r = Ok(());
            for g in &req.ranges {
                r = if req.op == Op::Discard {
                    q.discard(g.offset, g.len).await
                } else {
                    q.write_zeroes(g.offset, g.len, g.unmap).await
                };
                if r.is_err() {
                    break;
                }
            }
            r
        }
    };
    let status = match &r {
        Ok(()) => S_OK,
        Err(e) => {
            Stats::add(&stats.errors);
            tracing::debug!("request {:?} at {} failed: {e}", req.op, req.offset);
            S_IOERR
        }
    };
    let _ = mem.mmap.write_obj(status, GuestAddress(req.status));
    if let (Some(c), Some((op, bytes)), Some(t0)) = (&counters, counted, t0) {
        c.finish(op, bytes, r.is_err(), t0);
    }
    match req.op {
        Op::Read | Op::GetId => req.len as u32 + 1,
        _ => 1,
    }
}

/// Bytes a discard or write-zeroes request covers.
fn ranges_bytes(req: &Request) -> u64 {
    req.ranges.iter().map(|g| g.len).sum()
}

/// Bytes of bounce buffers one queue may hold at once: a guest keeping a deep queue of large
/// requests that must bounce waits for buffers instead of making the backend allocate
/// queue-size x 4 MiB. Generous for real use (16 requests of the largest size at once).
pub const BOUNCE_BUDGET: u64 = 64 << 20;

/// Where a bounced request's data goes.
fn bounce_reason(stats: &Stats, cpu: bool, refused: bool) {
    Stats::add(if refused {
        &stats.bounce_refused
    } else if cpu {
        &stats.bounce_cpu
    } else {
        &stats.bounce_segments
    });
}

fn is_einval(r: &io::Result<()>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
}

async fn read<Q: TargetQueue>(
    req: &Request,
    mem: &Arc<Memory>,
    q: &Q,
    dev: &Device,
    stats: &Stats,
    bounce: &Rc<Budget>,
) -> io::Result<()> {
    if req.len == 0 {
        return Ok(());
    }
    let cpu = dev.geo.caps.needs_cpu_access;
    let mut refused = false;
    if !cpu && let Some(mut view) = guest_view(mem, &req.data, req.len) {
        let r = q.read(req.offset, &mut view).await;
        if !is_einval(&r) {
            Stats::add(&stats.zero_copy);
            return r;
        }
        refused = true;
    }
    bounce_reason(stats, cpu, refused);
    let _held = bounce.acquire(req.len).await;
    let mut b = IoBuf::with_capacity(req.len as usize);
    q.read(req.offset, &mut b).await?;
    if !copy_out(mem, &req.data, b.as_slice()) {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

async fn write<Q: TargetQueue>(
    req: &Request,
    mem: &Arc<Memory>,
    q: &Q,
    dev: &Device,
    stats: &Stats,
    bounce: &Rc<Budget>,
) -> io::Result<()> {
    if req.len == 0 {
        return Ok(());
    }
    let fua = !dev.writeback();
    let cpu = dev.geo.caps.needs_cpu_access;
    let mut refused = false;
    if !cpu && let Some(view) = guest_view(mem, &req.data, req.len) {
        let r = q.write(req.offset, &view, fua).await;
        if !is_einval(&r) {
            Stats::add(&stats.zero_copy);
            return r;
        }
        refused = true;
    }
    bounce_reason(stats, cpu, refused);
    let _held = bounce.acquire(req.len).await;
    let mut b = IoBuf::with_capacity(req.len as usize);
    if !copy_in(mem, &req.data, &mut b) {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    q.write(req.offset, &b, fua).await
}

//! One hardware queue: a thread with its own ring, the driver's descriptor array mapped
//! read-only, and one task per tag running `fetch -> handle -> commit_and_fetch` forever.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use rt::select::select2;
use rt::{IoBuf, Runtime};
use targets::{Target, TargetQueue};

use crate::batch::Batch;
use crate::bufmode::BufMode;
use crate::descs::DescArray;
use crate::fault::RefuseCommit;
use crate::inflight::Inflight;
use crate::uapi::*;

/// How queue threads run: CPU placement and sleeping. Chosen per device, kept across recovery.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueTuning {
    /// Spin this long before sleeping in the kernel (qd1 latency knob).
    pub busy_poll: Option<std::time::Duration>,
    /// Pin each queue thread to the CPUs the driver maps to its queue. Off by default: with
    /// one submitting job, an unpinned queue thread can run beside the submitter on another
    /// CPU instead of sharing its CPU (measured in docs/benchmarks.md).
    pub pin: bool,
}

/// What a queue thread needs to know.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub q_id: u16,
    pub depth: u16,
    pub max_io: u32,
    pub mode: BufMode,
    /// CPUs to pin to (empty: leave affinity alone).
    pub cpus: Vec<usize>,
    /// Spin this long before sleeping in the kernel (qd1 latency knob).
    pub busy_poll: Option<std::time::Duration>,
    /// The device has UBLK_F_BATCH_IO: batch prep/fetch/commit instead of per-tag commands.
    pub batch: bool,
    /// The target drops writes and reads zeroes (`Caps::ignores_data`): user-copy mode then
    /// copies nothing for writes.
    pub ignores_data: bool,
    /// The target touches request bytes with the CPU (`Caps::needs_cpu_access`): shared-memory
    /// requests go through the tag's buffer, since the application may change its pages at
    /// any time and no Rust reference to them may be made.
    pub needs_cpu_access: bool,
    /// Zero copy plus user copy, for a target that serves CPU buffers inline (`Caps::inline_io`):
    /// a request that finds the queue otherwise idle goes through a CPU buffer and blocking
    /// copies instead of the zero-copy buffer, saving the target's worker-thread hand-off.
    pub shallow_inline: bool,
    /// Where this queue counts its requests (its thread is their only writer).
    pub counters: Arc<stats::QueueCounters>,
    /// The device's SHMEM_ZC buffer: its index and our mapping of it.
    pub shmem: Option<(u16, Arc<crate::shmem::ShmemBuf>)>,
}

impl QueueConfig {
    /// User copy, unless it is a write to a target that ignores data: the request's bytes
    /// move through pread/pwrite on the char device. (Reads always do: even a target that
    /// ignores data answers with zeroes, and the request's pages must get them.)
    fn copies_through_cdev(&self, op: u8) -> bool {
        self.mode == BufMode::UserCopy && !(op == UBLK_IO_OP_WRITE && self.ignores_data)
    }
}

/// Counters a queue reports when it ends (and a shared snapshot while running).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct QueueStats {
    pub requests: u64,
    pub errors: u64,
    pub enters: u64,
    pub completions: u64,
    /// Batch mode: times the driver ended the multishot fetch (buffers ran out, or a
    /// completion could not be posted) and we armed it again.
    pub fetch_rearms: u64,
    /// Requests the shallow-inline path served through a CPU buffer (zero-copy devices only).
    pub inlined: u64,
    /// Requests served in the device's shared-memory buffer (SHMEM_ZC).
    pub shared: u64,
}

/// Resident memory of tag buffers is kept under this per queue, so a deep queue with large
/// requests does not pin `depth x max_io` bytes forever.
const RESIDENT_BUDGET: usize = 32 << 20;
/// Buffers keep this much resident even over budget: small requests never fault.
const KEEP_RESIDENT: usize = 64 << 10;

pub(crate) struct QueueCtx<Q> {
    pub(crate) cfg: QueueConfig,
    pub(crate) cdev: RawFd,
    descs: DescArray,
    target: Q,
    pub(crate) inflight: Rc<Inflight>,
    resident: Cell<usize>,
    /// The CPU buffer of the shallow-inline path (one request at a time uses it).
    scratch: RefCell<Option<IoBuf>>,
    /// Requests served through `scratch`.
    inlined: Cell<u64>,
    /// Requests served in the shared-memory buffer.
    shared: Cell<u64>,
    refuse_commit: RefuseCommit,
}

impl<Q> QueueCtx<Q> {
    /// The CPU buffer, when this request should take the shallow-inline path: the device has
    /// it, the queue serves nothing else, and the ring was quiet at the last look (at depth
    /// the zero-copy path wins: no copies, and the target's worker threads run in parallel).
    fn shallow_scratch(&self) -> Option<IoBuf> {
        if self.cfg.shallow_inline && self.inflight.busy() <= 1 && rt::runtime::last_reap_len() <= 2
        {
            self.scratch.borrow_mut().take()
        } else {
            None
        }
    }
}

fn pin_to(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity(0) = this
    // thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c < libc::CPU_SETSIZE as usize {
                libc::CPU_SET(c, &mut set);
            }
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!("queue affinity {:?}: {}", cpus, io::Error::last_os_error());
        }
    }
}

/// The queue's ring: room for every tag's command plus its target I/O, and completions of
/// every tag at once.
fn queue_runtime(cfg: &QueueConfig) -> io::Result<Runtime> {
    let depth = cfg.depth as u32;
    let mut sq_entries = (depth * 2).next_power_of_two().min(4096);
    let mut cq_entries = (depth * 4).next_power_of_two().clamp(64, 16384);
    if let Some(n) = crate::fault::ring_entries() {
        (sq_entries, cq_entries) = (n, n);
    }
    Runtime::builder()
        .entries(sq_entries)
        .cq_entries(cq_entries)
        .busy_poll(cfg.busy_poll)
        .build()
}

/// One buffer per tag, as the buffer mode wants them.
fn tag_buffers(rt: &Runtime, cfg: &QueueConfig) -> io::Result<Vec<IoBuf>> {
    match cfg.mode {
        BufMode::ZeroCopy => {
            // One table slot per tag: the driver fills slot `tag` before it completes that tag's
            // fetch and empties it when we commit.
            rt.register_buffers_sparse(cfg.depth as u32)?;
            Ok((0..cfg.depth)
                .map(|tag| IoBuf::kernel_fixed(tag, cfg.max_io as usize))
                .collect())
        }
        BufMode::Copy | BufMode::UserCopy => IoBuf::arena(cfg.depth as usize, cfg.max_io as usize),
    }
}

/// One lazily-backed buffer of `max_io` bytes, when `want`.
fn cpu_buffer(want: bool, cfg: &QueueConfig) -> io::Result<Option<IoBuf>> {
    Ok(if want {
        IoBuf::arena(1, cfg.max_io as usize)?.pop()
    } else {
        None
    })
}

/// Serve one queue until the driver aborts its fetches (device stopped) or `stop` is raised.
/// Runs on the calling thread. A queue that had to give up (the driver refused its commands)
/// returns the reason as an error once the requests it was serving are committed.
pub fn run_queue<T: Target>(
    target: &T,
    cdev: Arc<File>,
    cfg: QueueConfig,
    stop: rt::sync::Signal,
) -> io::Result<QueueStats> {
    pin_to(&cfg.cpus);
    crate::fault::before_start()?;
    let rt = queue_runtime(&cfg)?;
    let bufs = tag_buffers(&rt, &cfg)?;
    let fetch_bufs = match cfg.batch {
        true => Some(crate::batch::provide_fetch_buffers(&rt, cfg.depth)?),
        false => None,
    };
    let ctx = Rc::new(QueueCtx {
        descs: DescArray::map(cdev.as_raw_fd(), cfg.q_id, cfg.depth)?,
        target: target.open_queue(cfg.q_id)?,
        cdev: cdev.as_raw_fd(),
        inflight: Rc::new(Inflight::default()),
        resident: Cell::new(0),
        scratch: RefCell::new(cpu_buffer(cfg.shallow_inline, &cfg)?),
        inlined: Cell::new(0),
        shared: Cell::new(0),
        refuse_commit: RefuseCommit::from_env(),
        cfg,
    });
    let r = rt.block_on(serve_queue(ctx.clone(), bufs, fetch_bufs, stop));
    let s = rt.stats();
    // Fetches the driver did not abort can only be cancelled by tearing the ring down; their
    // buffers are leaked rather than freed while the kernel might still hold them.
    rt.leak_in_flight_on_drop();
    drop(rt);
    drop(cdev);
    let fetch_rearms = r?;
    if let Some(why) = ctx.inflight.failure() {
        return Err(io::Error::other(why));
    }
    Ok(QueueStats {
        requests: ctx.cfg.counters.requests(),
        errors: ctx.cfg.counters.errors(),
        enters: s.enters,
        completions: s.completions,
        fetch_rearms,
        inlined: ctx.inlined.get(),
        shared: ctx.shared.get(),
    })
}

/// Start a task per tag (and, in batch mode, the fetcher and committer), then wait until the
/// queue is done or told to stop. Returns the batch fetch's re-arm count.
async fn serve_queue<Q: TargetQueue + 'static>(
    ctx: Rc<QueueCtx<Q>>,
    bufs: Vec<IoBuf>,
    fetch_bufs: Option<rt::pbuf::ProvidedBufs>,
    stop: rt::sync::Signal,
) -> io::Result<u64> {
    let batch = match fetch_bufs {
        None => {
            for (tag, buf) in bufs.into_iter().enumerate() {
                drop(rt::spawn(tag_loop(ctx.clone(), tag as u16, buf)));
            }
            None
        }
        Some(fetch_bufs) => {
            let addrs = bufs.iter().map(|b| b.addr() as u64).collect();
            let keep = Rc::new(bufs.iter().map(|b| b.keepalive()).collect());
            let b = Rc::new(Batch::new(
                RefuseCommit::from_env(),
                ctx.cdev,
                ctx.cfg.q_id,
                ctx.inflight.clone(),
                ctx.cfg.mode,
                addrs,
            ));
            crate::batch::prep(&b, &keep).await?;
            drop(rt::spawn(crate::batch::fetcher(
                b.clone(),
                fetch_bufs,
                keep.clone(),
            )));
            drop(rt::spawn(crate::batch::committer(b.clone(), keep)));
            for (tag, buf) in bufs.into_iter().enumerate() {
                drop(rt::spawn(batch_tag_loop(
                    ctx.clone(),
                    b.clone(),
                    tag as u16,
                    buf,
                )));
            }
            Some(b)
        }
    };
    // Tasks never end the queue themselves; the queue is done once it is stopping (ABORT or
    // failure) and nothing is being served, or when told to stop. Dropping the runtime then
    // cancels what is left.
    select2(ctx.inflight.done(), stop.wait()).await;
    Ok(batch.map_or(0, |b| b.fetch_rearms.get()))
}

/// The life of one tag: fetch, serve, commit-and-fetch, until the driver says ABORT. A commit
/// the driver refuses is sent once more with EIO (the request fails rather than hangs); a second
/// refusal, or a refused fetch, ends the queue.
async fn tag_loop<Q: TargetQueue>(q: Rc<QueueCtx<Q>>, tag: u16, mut buf: IoBuf) {
    let mut op = UBLK_U_IO_FETCH_REQ;
    let mut result = 0i32;
    let mut touched = 0usize;
    let mut retried = false;
    loop {
        // Copy mode names our buffer in the command; the other modes leave that field zero (the
        // driver refuses anything else). Zero copy puts `struct ublk_auto_buf_reg` in the SQE's
        // own addr field: index = tag, no flags (no fallback: the slot is ours alone, so the
        // registration cannot find it taken).
        let (addr, sqe_addr) = match q.cfg.mode {
            BufMode::Copy if op == UBLK_U_IO_COMMIT_AND_FETCH_REQ && q.refuse_commit.now() => {
                (0, None)
            }
            BufMode::Copy => (buf.addr() as u64, None),
            BufMode::UserCopy => (0, None),
            BufMode::ZeroCopy => (0, Some(tag as u64)),
        };
        let cmd = ublksrv_io_cmd {
            q_id: q.cfg.q_id,
            tag,
            result,
            addr,
        }
        .to_bytes();
        // SAFETY: the only address of ours the driver uses is `buf`'s (copy mode, in `cmd`; the
        // other modes name none: `sqe_addr` is a fixed-buffer index), and the op keeps `buf`'s
        // memory alive until the completion (leaked with the ring if that never comes). The
        // protocol: the driver copies a WRITE's data into `buf` before it completes this fetch
        // and a READ's data out of it while it processes the next COMMIT_AND_FETCH; this task
        // touches `buf` (in `serve`) only between the two, and `buf` dies with the task, so a
        // dropped task cannot touch it either.
        let c =
            unsafe { rt::fs::uring_cmd16(q.cdev, op, cmd, sqe_addr, Some(buf.keepalive())) }.await;
        match c.result {
            UBLK_IO_RES_OK => retried = false,
            UBLK_IO_RES_ABORT => {
                q.inflight.abort();
                return;
            }
            e if op == UBLK_U_IO_COMMIT_AND_FETCH_REQ && !retried && !q.inflight.stopping() => {
                tracing::error!(
                    q = q.cfg.q_id,
                    tag,
                    result,
                    "the driver refused a commit ({}); failing the request with EIO",
                    io::Error::from_raw_os_error(-e)
                );
                (result, retried) = (-libc::EIO, true);
                continue;
            }
            e if q.inflight.stopping() => {
                // The device is going away: nothing is left to serve, so no failure to report.
                tracing::debug!(q = q.cfg.q_id, tag, "command refused while stopping: {e}");
                return;
            }
            e => {
                let what = if op == UBLK_U_IO_FETCH_REQ {
                    "fetch"
                } else {
                    "commit"
                };
                q.inflight.fail(format!(
                    "queue {} tag {tag}: the driver refused the {what}: {}",
                    q.cfg.q_id,
                    io::Error::from_raw_os_error(-e)
                ));
                return;
            }
        }
        q.inflight.handed(1);
        result = serve(&q, tag, &mut buf, &mut touched).await;
        // Queued with the next command, right below.
        q.inflight.committed(1);
        op = UBLK_U_IO_COMMIT_AND_FETCH_REQ;
    }
}

/// A tag's life in batch mode: wait for the fetcher to hand it a request, serve it, queue the
/// result for the committer.
async fn batch_tag_loop<Q: TargetQueue>(
    q: Rc<QueueCtx<Q>>,
    b: Rc<Batch>,
    tag: u16,
    mut buf: IoBuf,
) {
    let mut touched = 0usize;
    loop {
        // Counted busy by the fetcher until the committer queues the commit.
        b.next_request(tag).await;
        let result = serve(&q, tag, &mut buf, &mut touched).await;
        b.finish(tag, result);
    }
}

/// Serve the request the driver just handed to `tag`, keeping the queue's resident buffer memory
/// under budget; returns the result to commit. `touched` is how much of `buf` has been written.
async fn serve<Q: TargetQueue>(
    q: &QueueCtx<Q>,
    tag: u16,
    buf: &mut IoBuf,
    touched: &mut usize,
) -> i32 {
    let desc = q.descs.get(tag);
    let len = (desc.nr_sectors as usize) << 9;
    let op = stats_op(desc.op());
    let t0 = op.map(|_| q.cfg.counters.start());
    // The kernel wrote at most `len` bytes of the new request; pages past it hold only old
    // data, so they can go back if the queue holds too much memory. (Zero-copy buffers are
    // the request's own pages: nothing of ours goes resident.)
    let ours = buf.is_cpu_accessible();
    if ours && *touched > len.max(KEEP_RESIDENT) && q.resident.get() > RESIDENT_BUDGET {
        let keep = len.max(KEEP_RESIDENT).next_multiple_of(rt::buf::ALIGN);
        buf.release_from(keep);
        q.resident
            .set(q.resident.get() - (*touched - keep.min(*touched)));
        *touched = keep.min(*touched);
    }
    let result = handle(q, tag, &desc, buf).await;
    if ours && matches!(desc.op(), UBLK_IO_OP_READ | UBLK_IO_OP_WRITE) && len > *touched {
        q.resident.set(q.resident.get() + len - *touched);
        *touched = len;
    }
    if let (Some(op), Some(t0)) = (op, t0) {
        q.cfg.counters.finish(op, len as u64, result < 0, t0);
    }
    result
}

/// The counters' name for a request op (none for ops we refuse).
fn stats_op(op: u8) -> Option<stats::Op> {
    Some(match op {
        UBLK_IO_OP_READ => stats::Op::Read,
        UBLK_IO_OP_WRITE => stats::Op::Write,
        UBLK_IO_OP_FLUSH => stats::Op::Flush,
        UBLK_IO_OP_DISCARD => stats::Op::Discard,
        UBLK_IO_OP_WRITE_ZEROES => stats::Op::WriteZeroes,
        _ => return None,
    })
}

fn errno(e: &io::Error) -> i32 {
    -e.raw_os_error().unwrap_or(libc::EIO)
}

/// Serve one request; the result goes into the commit (bytes done, or -errno).
async fn handle<Q: TargetQueue>(
    q: &QueueCtx<Q>,
    tag: u16,
    d: &ublksrv_io_desc,
    buf: &mut IoBuf,
) -> i32 {
    let off = d.start_sector << 9;
    let len = (d.nr_sectors as u64) << 9;
    let t = &q.target;
    let is_rw = matches!(d.op(), UBLK_IO_OP_READ | UBLK_IO_OP_WRITE);
    if is_rw && len as usize > buf.capacity() {
        tracing::error!(tag, len, "request larger than the buffer");
        return -libc::EIO;
    }
    let shared = is_rw && d.flags() & UBLK_IO_F_SHMEM_ZC != 0;
    let scratch = if is_rw && !shared {
        q.shallow_scratch()
    } else {
        None
    };
    let r = if shared {
        let r = in_shared_memory(q, d, buf).await;
        q.shared.set(q.shared.get() + 1);
        r
    } else if let Some(mut s) = scratch {
        let r = through_cpu(q, tag, d, &mut s).await;
        q.inlined.set(q.inlined.get() + 1);
        q.scratch.replace(Some(s));
        r
    } else {
        match d.op() {
            // User copy: the tag's buffer is the CPU buffer.
            UBLK_IO_OP_READ | UBLK_IO_OP_WRITE if q.cfg.copies_through_cdev(d.op()) => {
                through_cpu(q, tag, d, buf).await
            }
            UBLK_IO_OP_READ => {
                buf.set_len(len as usize);
                t.read(off, buf).await
            }
            UBLK_IO_OP_WRITE => {
                buf.set_len(len as usize);
                t.write(off, buf, d.flags() & UBLK_IO_F_FUA != 0).await
            }
            UBLK_IO_OP_FLUSH => t.flush().await.map(|_| ()),
            UBLK_IO_OP_DISCARD => t.discard(off, len).await,
            UBLK_IO_OP_WRITE_ZEROES => {
                t.write_zeroes(off, len, d.flags() & UBLK_IO_F_NOUNMAP == 0)
                    .await
            }
            other => {
                tracing::warn!(tag, op = other, "unsupported request op");
                return -libc::EOPNOTSUPP;
            }
        }
    };
    match r {
        // Reads and writes report their bytes (at most the max I/O size); the other requests
        // report 0, whatever their length (a discard can cover 4 GiB, past an i32).
        Ok(()) if is_rw => len as i32,
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(tag, op = d.op(), off, len, "request failed: {e}");
            errno(&e)
        }
    }
}

/// A read or write whose pages lie in the device's shared-memory buffer (UBLK_IO_F_SHMEM_ZC):
/// the target reads into or writes from them through our own mapping; the driver copies
/// nothing. A request outside the buffer (the driver never sends one) fails with EIO.
async fn in_shared_memory<Q: TargetQueue>(
    q: &QueueCtx<Q>,
    d: &ublksrv_io_desc,
    tag_buf: &mut IoBuf,
) -> io::Result<()> {
    let off = d.start_sector << 9;
    let len = (d.nr_sectors as usize) << 9;
    let (index, at) = shmem_zc_decode(d.addr);
    let eio = || io::Error::from_raw_os_error(libc::EIO);
    let Some((ours, map)) = q.cfg.shmem.as_ref().filter(|(i, _)| *i == index) else {
        tracing::error!(
            index,
            "a request in a shared-memory buffer we did not register"
        );
        return Err(eio());
    };
    let Some(ptr) = map.at(at as usize, len) else {
        tracing::error!(
            index = ours,
            at,
            len,
            "a shared-memory request past the buffer's end"
        );
        return Err(eio());
    };
    let fua = d.flags() & UBLK_IO_F_FUA != 0;
    if q.cfg.needs_cpu_access {
        // Bounce through the tag's buffer with raw copies (no reference to the shared pages).
        tag_buf.set_len(len);
        if d.op() == UBLK_IO_OP_READ {
            q.target.read(off, tag_buf).await?;
            // SAFETY: `ptr..ptr+len` lies inside the live mapping (checked above), does not
            // overlap our own buffer, which holds `len` bytes, and is 512-byte aligned (the
            // driver matches whole pages; `len` is whole sectors). The application may write
            // its pages meanwhile: the copy is volatile, so no Rust assumption covers them.
            unsafe { crate::shmem::volatile_copy(tag_buf.as_slice().as_ptr(), ptr, len) };
            return Ok(());
        }
        // SAFETY: as above, in the other direction.
        unsafe { crate::shmem::volatile_copy(ptr, tag_buf.as_mut_slice().as_mut_ptr(), len) };
        return q.target.write(off, tag_buf, fua).await;
    }
    // SAFETY: `ptr..ptr+len` lies inside the mapping (checked above), which the Arc given as
    // keepalive holds mapped for as long as the buffer or any I/O on it lives. The driver hands
    // these pages to this request alone until we commit it, as it does request pages in the
    // other modes.
    let mut buf = unsafe { IoBuf::foreign(ptr, len, Box::new(map.clone())) };
    if d.op() == UBLK_IO_OP_READ {
        q.target.read(off, &mut buf).await
    } else {
        q.target.write(off, &buf, fua).await
    }
}

/// A read or write through the CPU buffer `s` (the tag's own in user-copy mode, the queue's
/// scratch buffer on the shallow-inline path): the target serves `s` (inline, for a target
/// with `inline_io`), and the bytes move between `s` and the request by user copy.
async fn through_cpu<Q: TargetQueue>(
    q: &QueueCtx<Q>,
    tag: u16,
    d: &ublksrv_io_desc,
    s: &mut IoBuf,
) -> io::Result<()> {
    let off = d.start_sector << 9;
    s.set_len((d.nr_sectors as usize) << 9);
    if d.op() == UBLK_IO_OP_READ {
        q.target.read(off, s).await?;
        copy_to_request(q, tag, s.as_slice())
    } else {
        copy_from_request(q, tag, s.as_mut_slice())?;
        q.target.write(off, s, d.flags() & UBLK_IO_F_FUA != 0).await
    }
}

// User copy is a blocking call on purpose: the driver only copies between pages already in
// memory and never waits, while io_uring would hand each call to a worker thread and back
// (the char device cannot promise not to block), two wake-ups per request.

/// Copy a read's bytes into the request's pages.
fn copy_to_request<Q>(q: &QueueCtx<Q>, tag: u16, data: &[u8]) -> io::Result<()> {
    rt::fs::pwrite_all(q.cdev, data, user_copy_offset(q.cfg.q_id, tag, 0), 0)
}

/// Copy a write's bytes out of the request's pages; all of them, or EIO.
fn copy_from_request<Q>(q: &QueueCtx<Q>, tag: u16, data: &mut [u8]) -> io::Result<()> {
    let want = data.len();
    if rt::fs::pread_full(q.cdev, data, user_copy_offset(q.cfg.q_id, tag, 0))? < want {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    Ok(())
}

//! One hardware queue: a thread with its own ring, the driver's descriptor array mapped
//! read-only, and one task per tag running `fetch -> handle -> commit_and_fetch` forever.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;

use rt::select::select2;
use rt::{IoBuf, Runtime};
use targets::{Target, TargetQueue};

use crate::batch::Batch;
use crate::uapi::*;

/// Where request data lives (DESIGN.md, "the data path").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BufMode {
    /// The driver copies between the request and our per-tag buffer.
    Copy,
    /// We copy with pread/pwrite on the char device (UBLK_F_USER_COPY).
    UserCopy,
    /// Nobody copies (UBLK_F_AUTO_BUF_REG): the driver registers each request's pages in the
    /// queue ring's fixed-buffer table at slot `tag`, and the target moves them with fixed-buffer
    /// io_uring ops. Only for targets that never touch the bytes with the CPU.
    ZeroCopy,
}

impl BufMode {
    pub fn name(self) -> &'static str {
        match self {
            BufMode::Copy => "copy",
            BufMode::UserCopy => "user-copy",
            BufMode::ZeroCopy => "zero-copy",
        }
    }

    /// The UBLK_F_* flag that asks the driver for this mode (copy needs none).
    pub fn flag(self) -> u64 {
        match self {
            BufMode::Copy => 0,
            BufMode::UserCopy => UBLK_F_USER_COPY,
            BufMode::ZeroCopy => UBLK_F_AUTO_BUF_REG,
        }
    }

    /// The mode a device was created with, from its flags.
    pub fn from_flags(flags: u64) -> BufMode {
        // Zero copy first: a zero-copy device may carry USER_COPY too (shallow inline, below).
        [BufMode::ZeroCopy, BufMode::UserCopy]
            .into_iter()
            .find(|m| flags & m.flag() != 0)
            .unwrap_or(BufMode::Copy)
    }
}

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
    pub dev_id: u32,
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
    /// The target never looks at request data: user-copy mode then copies nothing.
    pub ignores_data: bool,
    /// Zero copy plus user copy, for a target that serves CPU buffers inline (`Caps::inline_io`):
    /// a request that finds the queue otherwise idle goes through a CPU buffer and blocking
    /// copies instead of the zero-copy buffer, saving the target's worker-thread hand-off.
    pub shallow_inline: bool,
}

impl QueueConfig {
    /// User-copy mode with a target that needs the bytes: request data moves through
    /// pread/pwrite on the char device.
    fn copies_through_cdev(&self) -> bool {
        self.mode == BufMode::UserCopy && !self.ignores_data
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
}

/// Resident memory of tag buffers is kept under this per queue, so a deep queue with large
/// requests does not pin `depth x max_io` bytes forever.
const RESIDENT_BUDGET: usize = 32 << 20;
/// Buffers keep this much resident even over budget: small requests never fault.
const KEEP_RESIDENT: usize = 64 << 10;

/// The read-only descriptor array the driver fills, one `ublksrv_io_desc` per tag.
struct DescArray {
    ptr: *const ublksrv_io_desc,
    len: usize,
    map_len: usize,
}

impl DescArray {
    fn map(fd: RawFd, q_id: u16, depth: u16) -> io::Result<DescArray> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map_len =
            (depth as usize * std::mem::size_of::<ublksrv_io_desc>()).next_multiple_of(page);
        let off = desc_mmap_offset(q_id, page);
        // SAFETY: a shared read-only mapping of the char device at the driver's documented offset;
        // the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                off as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(DescArray {
            ptr: p.cast(),
            len: depth as usize,
            map_len,
        })
    }

    /// The descriptor of `tag`, read after its fetch completed (the driver wrote it before
    /// posting the completion and does not touch it until we commit).
    fn get(&self, tag: u16) -> ublksrv_io_desc {
        assert!((tag as usize) < self.len);
        // SAFETY: in bounds of the mapping; volatile because the kernel writes it.
        unsafe { std::ptr::read_volatile(self.ptr.add(tag as usize)) }
    }
}

impl Drop for DescArray {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr as *mut _, self.map_len) };
    }
}

pub(crate) struct QueueCtx<Q> {
    pub(crate) cfg: QueueConfig,
    pub(crate) cdev: RawFd,
    descs: DescArray,
    target: Q,
    requests: Cell<u64>,
    /// Set when the driver said UBLK_IO_RES_ABORT: the device is stopping or quiescing.
    pub(crate) stopping: Cell<bool>,
    /// Requests being served: from their arrival until their commit is queued on the ring.
    pub(crate) busy: Cell<usize>,
    /// Woken when `stopping` or `busy` changes, to re-check whether the queue is done.
    done_waker: Cell<Option<std::task::Waker>>,
    errors: Cell<u64>,
    pub(crate) fetch_rearms: Cell<u64>,
    resident: Cell<usize>,
    /// The CPU buffer of the shallow-inline path (one request at a time uses it).
    scratch: std::cell::RefCell<Option<IoBuf>>,
    /// Requests served through `scratch`.
    inlined: Cell<u64>,
}

impl<Q> QueueCtx<Q> {
    /// The CPU buffer, when this request should take the shallow-inline path: the device has
    /// it, the queue serves nothing else, and the ring was quiet at the last look (at depth
    /// the zero-copy path wins: no copies, and the target's worker threads run in parallel).
    fn shallow_scratch(&self) -> Option<IoBuf> {
        if self.cfg.shallow_inline && self.busy.get() <= 1 && rt::runtime::last_reap_len() <= 2 {
            self.scratch.borrow_mut().take()
        } else {
            None
        }
    }

    pub(crate) fn wake_done(&self) {
        if let Some(w) = self.done_waker.take() {
            w.wake();
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

/// Serve one queue until the driver aborts its fetches (device stopped) or `stop` is raised.
/// Runs on the calling thread.
pub fn run_queue<T: Target>(
    target: &T,
    cdev: Arc<File>,
    cfg: QueueConfig,
    stop: rt::sync::Signal,
) -> io::Result<QueueStats> {
    pin_to(&cfg.cpus);
    // Fault injection for the test suite: a queue that fails before fetching must make device
    // creation fail cleanly rather than hang in START_DEV.
    if std::env::var_os("UBLKD_FAULT_QUEUE_START").is_some() {
        return Err(io::Error::other("UBLKD_FAULT_QUEUE_START is set"));
    }
    let depth = cfg.depth as u32;
    let mut sq_entries = (depth * 2).next_power_of_two().min(4096);
    let mut cq_entries = (depth * 4).next_power_of_two().clamp(64, 16384);
    // Fault injection for the test suite: rings too small for the load make the kernel end
    // multishot fetches (batch mode), which must be re-armed without losing a tag.
    if let Some(n) = std::env::var("UBLKD_FAULT_RING_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        (sq_entries, cq_entries) = (n, n);
    }
    let rt = Runtime::builder()
        .entries(sq_entries)
        .cq_entries(cq_entries)
        .busy_poll(cfg.busy_poll)
        .build()?;
    let descs = DescArray::map(cdev.as_raw_fd(), cfg.q_id, cfg.depth)?;
    let bufs = match cfg.mode {
        BufMode::ZeroCopy => {
            // One table slot per tag: the driver fills slot `tag` before it completes that tag's
            // fetch and empties it when we commit.
            rt.register_buffers_sparse(depth)?;
            (0..cfg.depth)
                .map(|tag| IoBuf::kernel_fixed(tag, cfg.max_io as usize))
                .collect()
        }
        BufMode::Copy | BufMode::UserCopy => IoBuf::arena(cfg.depth as usize, cfg.max_io as usize)?,
    };
    let scratch = if cfg.shallow_inline {
        IoBuf::arena(1, cfg.max_io as usize)?.pop()
    } else {
        None
    };
    let tq = target.open_queue(cfg.q_id)?;
    let ctx = Rc::new(QueueCtx {
        cfg: cfg.clone(),
        cdev: cdev.as_raw_fd(),
        descs,
        target: tq,
        requests: Cell::new(0),
        errors: Cell::new(0),
        fetch_rearms: Cell::new(0),
        resident: Cell::new(0),
        stopping: Cell::new(false),
        busy: Cell::new(0),
        done_waker: Cell::new(None),
        scratch: std::cell::RefCell::new(scratch),
        inlined: Cell::new(0),
    });
    let fetch_bufs = if cfg.batch {
        Some(crate::batch::provide_fetch_buffers(&rt, cfg.depth)?)
    } else {
        None
    };
    let c2 = ctx.clone();
    let r = rt.block_on(async move {
        let tasks: Vec<_> = match fetch_bufs {
            None => bufs
                .into_iter()
                .enumerate()
                .map(|(tag, buf)| rt::spawn(tag_loop(c2.clone(), tag as u16, buf)))
                .collect(),
            Some(fetch_bufs) => {
                let addrs = bufs.iter().map(|b| b.addr() as u64).collect();
                let keep = Rc::new(bufs.iter().map(|b| b.keepalive()).collect());
                let b = Rc::new(Batch::new(c2.cfg.depth, c2.cfg.mode, addrs));
                crate::batch::prep(&c2, &b, &keep).await?;
                let f = crate::batch::fetcher(c2.clone(), b.clone(), fetch_bufs, keep.clone());
                drop(rt::spawn(f));
                drop(rt::spawn(crate::batch::committer(
                    c2.clone(),
                    b.clone(),
                    keep,
                )));
                // Tag tasks never end on their own here: the fetcher ends the queue.
                for (tag, buf) in bufs.into_iter().enumerate() {
                    drop(rt::spawn(batch_tag_loop(
                        c2.clone(),
                        b.clone(),
                        tag as u16,
                        buf,
                    )));
                }
                Vec::new()
            }
        };
        let all = async {
            if tasks.is_empty() {
                std::future::pending::<()>().await;
            }
            for t in tasks {
                t.await;
            }
        };
        let stopped = stop.wait();
        // The driver may not abort a tag whose next request it already started (it requeues
        // that request instead): once any tag saw ABORT and no tag is serving a request, the
        // queue is done, and dropping the runtime cancels the remaining fetches.
        let idle_after_abort = std::future::poll_fn(|cx| {
            if c2.stopping.get() && c2.busy.get() == 0 {
                return std::task::Poll::Ready(());
            }
            c2.done_waker.set(Some(cx.waker().clone()));
            std::task::Poll::Pending
        });
        // Whichever comes first: every tag saw ABORT, the queue went idle after an ABORT, or we
        // were told to stop.
        select2(select2(all, idle_after_abort), stopped).await;
        io::Result::Ok(())
    });
    let s = rt.stats();
    // Fetches the driver did not abort can only be cancelled by tearing the ring down; their
    // buffers are leaked rather than freed while the kernel might still hold them.
    rt.leak_in_flight_on_drop();
    drop(rt);
    drop(cdev);
    r?;
    Ok(QueueStats {
        requests: ctx.requests.get(),
        errors: ctx.errors.get(),
        enters: s.enters,
        completions: s.completions,
        fetch_rearms: ctx.fetch_rearms.get(),
        inlined: ctx.inlined.get(),
    })
}

/// The life of one tag: fetch, serve, commit-and-fetch, until the driver says ABORT.
async fn tag_loop<Q: TargetQueue>(q: Rc<QueueCtx<Q>>, tag: u16, mut buf: IoBuf) {
    let mut op = UBLK_U_IO_FETCH_REQ;
    let mut result = 0i32;
    let mut touched = 0usize;
    loop {
        // Copy mode names our buffer in the command; the other modes leave that field zero (the
        // driver refuses anything else). Zero copy puts `struct ublk_auto_buf_reg` in the SQE's
        // own addr field: index = tag, no flags (no fallback: the slot is ours alone, so the
        // registration cannot find it taken).
        let (addr, sqe_addr) = match q.cfg.mode {
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
            UBLK_IO_RES_OK => {}
            UBLK_IO_RES_ABORT => {
                q.stopping.set(true);
                q.wake_done();
                return;
            }
            e => {
                tracing::error!(
                    q = q.cfg.q_id,
                    tag,
                    "io command failed: {}",
                    io::Error::from_raw_os_error(-e)
                );
                return;
            }
        }
        q.busy.set(q.busy.get() + 1);
        result = serve(&q, tag, &mut buf, &mut touched).await;
        q.busy.set(q.busy.get() - 1);
        if q.stopping.get() {
            q.wake_done();
        }
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
    q.requests.set(q.requests.get() + 1);
    if result < 0 {
        q.errors.set(q.errors.get() + 1);
    }
    result
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
    let scratch = if is_rw { q.shallow_scratch() } else { None };
    let r = if let Some(mut s) = scratch {
        let r = through_cpu(q, tag, d, &mut s).await;
        q.inlined.set(q.inlined.get() + 1);
        q.scratch.replace(Some(s));
        r
    } else {
        match d.op() {
            // User copy with a target that needs the bytes: the tag's buffer is the CPU buffer.
            UBLK_IO_OP_READ | UBLK_IO_OP_WRITE if q.cfg.copies_through_cdev() => {
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
        Ok(()) => len as i32,
        Err(e) => {
            tracing::debug!(tag, op = d.op(), off, len, "request failed: {e}");
            errno(&e)
        }
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

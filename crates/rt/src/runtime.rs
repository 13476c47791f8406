//! The event loop: poll ready tasks, then one `io_uring_enter` that submits all queued SQEs and
//! waits for a completion, then dispatch completions to the ops that own them.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use crate::op::Lifecycle;
use crate::pbuf::{PbufMem, ProvidedBufs};
use crate::task::{JoinHandle, MAIN_TASK, Shared, TaskSlot};

/// user_data of SQEs whose completion nobody waits for (cancel requests).
pub(crate) const IGNORED_USER_DATA: u64 = u64::MAX;
/// user_data of the eventfd read that lets other threads wake this loop.
const WAKE_USER_DATA: u64 = u64::MAX - 1;

thread_local! {
    static CURRENT: RefCell<Option<Rc<Inner>>> = const { RefCell::new(None) };
}

/// Counters of one runtime; `completions / enters` is the batching factor.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// `io_uring_enter` calls (each submits everything queued).
    pub enters: u64,
    /// SQEs submitted.
    pub submitted: u64,
    /// CQEs reaped.
    pub completions: u64,
}

/// How to set up the ring.
#[derive(Debug, Clone)]
pub struct Builder {
    entries: u32,
    cq_entries: Option<u32>,
    single_issuer: bool,
    busy_poll: Option<Duration>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            entries: 256,
            cq_entries: None,
            single_issuer: true,
            busy_poll: None,
        }
    }
}

impl Builder {
    /// Submission queue size (rounded up to a power of two by the kernel).
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n.clamp(8, 32768);
        self
    }
    /// Completion queue size; defaults to twice `entries`.
    pub fn cq_entries(mut self, n: u32) -> Self {
        self.cq_entries = Some(n.clamp(16, 65536));
        self
    }
    /// Ask for SINGLE_ISSUER|DEFER_TASKRUN (falls back silently when the kernel refuses).
    pub fn single_issuer(mut self, on: bool) -> Self {
        self.single_issuer = on;
        self
    }
    /// Before sleeping in the kernel, spin this long re-checking completions (trades CPU for
    /// latency at low queue depth).
    pub fn busy_poll(mut self, d: Option<Duration>) -> Self {
        self.busy_poll = d;
        self
    }

    pub fn build(self) -> io::Result<Runtime> {
        let cq = self
            .cq_entries
            .unwrap_or(self.entries.saturating_mul(2))
            .max(self.entries);
        let ring = if self.single_issuer {
            IoUring::builder()
                .setup_cqsize(cq)
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .build(self.entries)
                .or_else(|_| {
                    IoUring::builder()
                        .setup_cqsize(cq)
                        .setup_coop_taskrun()
                        .setup_taskrun_flag()
                        .build(self.entries)
                })
                .or_else(|_| IoUring::builder().setup_cqsize(cq).build(self.entries))?
        } else {
            IoUring::builder().setup_cqsize(cq).build(self.entries)?
        };
        // SAFETY: eventfd(2) returns a new fd or -1; we take ownership only of a valid fd.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh fd owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(efd) };
        let shared = Arc::new(Shared::new(efd));
        let inner = Rc::new(Inner {
            ring: RefCell::new(ring),
            ops: RefCell::new(Slab::with_capacity(self.entries as usize)),
            tasks: RefCell::new(Slab::new()),
            shared,
            wake_buf: Box::leak(Box::new(Cell::new(0))),
            wake_armed: Cell::new(false),
            local_ready: RefCell::new(Vec::with_capacity(64)),
            stats: Cell::new(Stats::default()),
            busy_poll: self.busy_poll,
            cqe_scratch: RefCell::new(Vec::with_capacity(256)),
            last_reap: Cell::new(0),
            leak_on_drop: Cell::new(false),
            provided: RefCell::new(Vec::new()),
            #[cfg(test)]
            submit_faults: RefCell::new(Vec::new()),
        });
        Ok(Runtime { inner })
    }
}

pub(crate) struct Inner {
    pub(crate) ring: RefCell<IoUring>,
    pub(crate) ops: RefCell<Slab<Lifecycle>>,
    pub(crate) tasks: RefCell<Slab<TaskSlot>>,
    pub(crate) shared: Arc<Shared>,
    /// Target of the eventfd read. Leaked (8 bytes per runtime) so it stays valid however the
    /// runtime ends, even when in-flight ops are abandoned to ring teardown.
    wake_buf: &'static Cell<u64>,
    wake_armed: Cell<bool>,
    /// Tasks woken on this thread (most wakes: a completion or a sibling task); no lock, no
    /// atomics. Wakes from other threads go through `shared`.
    pub(crate) local_ready: RefCell<Vec<usize>>,
    stats: Cell<Stats>,
    busy_poll: Option<Duration>,
    cqe_scratch: RefCell<Vec<(u64, i32, u32)>>,
    /// Completions the last reap found: how busy the ring was a moment ago.
    last_reap: Cell<usize>,
    leak_on_drop: Cell<bool>,
    /// Provided-buffer rings registered with `ring`. Declared after it, so they are freed only
    /// once the ring is closed.
    provided: RefCell<Vec<Rc<PbufMem>>>,
    /// Tests: errnos the next busy-poll submits fail with (popped from the end).
    #[cfg(test)]
    submit_faults: RefCell<Vec<i32>>,
}

/// A single-threaded io_uring executor. Not `Send`: each thread builds its own.
pub struct Runtime {
    inner: Rc<Inner>,
}

impl Runtime {
    pub fn new() -> io::Result<Runtime> {
        Builder::default().build()
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The ring's fd, for registering it elsewhere (diagnostics).
    pub fn ring_fd(&self) -> RawFd {
        self.inner.ring.borrow().as_raw_fd()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.inner.stats.get()
    }

    /// Register a sparse fixed-buffer table of `n` slots (for zero-copy buffer registration).
    pub fn register_buffers_sparse(&self, n: u32) -> io::Result<()> {
        self.inner
            .ring
            .borrow()
            .submitter()
            .register_buffers_sparse(n)
    }

    /// Register a group of `count` provided buffers of `size` bytes each under group id `bgid`,
    /// for ops with buffer select (multishot). They live as long as the ring.
    pub fn provide_buffers(&self, bgid: u16, count: u16, size: u32) -> io::Result<ProvidedBufs> {
        let mem = PbufMem::new(count, size)?;
        // SAFETY: the ring memory stays valid until the ring is closed: `Inner::provided` holds
        // it and is dropped after `Inner::ring` (or leaked with the ring's other memory).
        unsafe {
            self.inner
                .ring
                .borrow()
                .submitter()
                .register_buf_ring_with_flags(mem.ring_addr(), count, bgid, 0)?;
        }
        self.inner.provided.borrow_mut().push(mem.clone());
        Ok(ProvidedBufs { mem, bgid })
    }

    /// Register files so ops can use `types::Fixed(index)`.
    pub fn register_files(&self, fds: &[RawFd]) -> io::Result<()> {
        self.inner.ring.borrow().submitter().register_files(fds)
    }

    /// Run `fut` to completion on this thread, driving every spawned task and op meanwhile.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        let _enter = EnterGuard::enter(self.inner.clone());
        let inner = &self.inner;
        let mut fut = pin!(fut);
        let main_waker = inner.shared.waker(MAIN_TASK);
        let mut main_cx = Context::from_waker(&main_waker);
        let mut main_ready = true;
        let mut batch = Vec::new();
        loop {
            if main_ready {
                main_ready = false;
                if let Poll::Ready(v) = fut.as_mut().poll(&mut main_cx) {
                    return v;
                }
            }
            // Poll every ready task; polling may make more tasks ready.
            loop {
                std::mem::swap(&mut *inner.local_ready.borrow_mut(), &mut batch);
                inner.shared.take_ready_into(&mut batch);
                if batch.is_empty() {
                    break;
                }
                for id in batch.drain(..) {
                    if id == MAIN_TASK {
                        main_ready = true;
                    } else {
                        crate::task::poll_task(inner, id);
                    }
                }
            }
            if main_ready {
                continue;
            }
            if let Err(e) = inner.submit_and_wait() {
                panic!("io_uring_enter failed unrecoverably: {e}");
            }
            inner.reap();
        }
    }

    /// On drop, do not wait for in-flight ops: leak their resources (memory stays valid, so the
    /// kernel can never write into freed memory) and close the ring, whose teardown cancels them.
    /// For ops that IORING_OP_ASYNC_CANCEL cannot reach, such as a ublk FETCH `uring_cmd`, which
    /// only ring teardown cancels. Meant for a thread that is about to end.
    pub fn leak_in_flight_on_drop(&self) {
        self.inner.leak_on_drop.set(true);
    }

    /// Cancel every op still in flight and wait (bounded) for the kernel to let go of their
    /// buffers. Called on drop; exposed so a caller can do it at a chosen moment.
    pub fn shutdown(&self, limit: Duration) -> bool {
        self.inner.drain(limit)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Drop tasks first: their ops turn into `Ignored` slots that keep buffers alive.
        let tasks: Vec<TaskSlot> = self.inner.tasks.borrow_mut().drain().collect();
        {
            let _enter = EnterGuard::enter(self.inner.clone());
            drop(tasks);
        }
        if self.inner.leak_on_drop.get() {
            let _ = self.inner.ring.borrow().submit();
            self.inner.leak_kernel_memory();
            return;
        }
        if !self.inner.drain(Duration::from_secs(10)) {
            self.inner.leak_kernel_memory();
        }
    }
}

struct EnterGuard(Option<Rc<Inner>>);

impl EnterGuard {
    fn enter(inner: Rc<Inner>) -> EnterGuard {
        let prev = CURRENT.with(|c| c.borrow_mut().replace(inner));
        EnterGuard(prev)
    }
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// The runtime of the current thread. Panics outside `block_on`: ops need a ring.
pub(crate) fn current() -> Rc<Inner> {
    CURRENT
        .with(|c| c.borrow().clone())
        .expect("rt op used outside Runtime::block_on")
}

/// Queue task `id` of the runtime owning `shared` without a lock, if that runtime is this
/// thread's (false otherwise, and during thread teardown: the caller takes the locked path).
pub(crate) fn wake_local(shared: &Arc<Shared>, id: usize) -> bool {
    CURRENT
        .try_with(|c| {
            let Ok(current) = c.try_borrow() else {
                return false;
            };
            match current.as_deref() {
                Some(inner) if Arc::ptr_eq(&inner.shared, shared) => inner
                    .local_ready
                    .try_borrow_mut()
                    .map(|mut q| q.push(id))
                    .is_ok(),
                _ => false,
            }
        })
        .unwrap_or(false)
}

/// Spawn a task on the current thread's runtime.
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    crate::task::spawn_on(&current(), fut)
}

/// How many completions the current thread's runtime found in its last look at the CQ: a
/// cheap measure of load (1 when requests trickle in one by one, many at depth).
pub fn last_reap_len() -> usize {
    current().last_reap.get()
}

/// Counters of the current thread's runtime.
pub fn current_stats() -> Stats {
    current().stats.get()
}

impl Inner {
    /// Queue one SQE. If the submission queue is full, flush it to the kernel first.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its completion is reaped (see `op.rs`).
    pub(crate) unsafe fn push(&self, entry: &squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { ring.submission().push(entry) }.is_ok() {
                return;
            }
            // Full: hand what we have to the kernel without waiting.
            match ring.submit() {
                Ok(n) => self.count(|s| {
                    s.enters += 1;
                    s.submitted += n as u64
                }),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    drop(ring);
                    self.reap();
                    ring = self.ring.borrow_mut();
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => panic!("io_uring submit failed: {e}"),
            }
        }
    }

    /// The kernel may still write into memory owned by in-flight ops and into provided buffers.
    /// Leaking both is the only sound choice: freeing them could let the kernel scribble over
    /// reused memory.
    fn leak_kernel_memory(&self) {
        std::mem::forget(std::mem::take(&mut *self.ops.borrow_mut()));
        std::mem::forget(std::mem::take(&mut *self.provided.borrow_mut()));
    }

    fn has_ready(&self) -> bool {
        !self.local_ready.borrow().is_empty() || self.shared.has_ready()
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn arm_wake(&self) {
        if self.wake_armed.get() {
            return;
        }
        let e = opcode::Read::new(
            types::Fd(self.shared.eventfd()),
            self.wake_buf.as_ptr().cast(),
            8,
        )
        .build()
        .user_data(WAKE_USER_DATA);
        // SAFETY: wake_buf is leaked, so valid forever.
        unsafe { self.push(&e) };
        self.wake_armed.set(true);
    }

    fn submit_and_wait(&self) -> io::Result<()> {
        self.arm_wake();
        if let Some(spin) = self.busy_poll {
            // Submit without sleeping, then spin on shared memory for a while before blocking:
            // a completion in the CQ, deferred task work announced by IORING_SQ_TASKRUN (only an
            // enter with GETEVENTS runs it; `submit()` adds GETEVENTS when the flag is up), or
            // a task woken from another thread. No syscall while nothing is pending.
            match self.submit_no_wait() {
                Ok(n) => self.count(|s| {
                    s.enters += 1;
                    s.submitted += n as u64
                }),
                // CQ overflow backlog (older kernels refuse to submit while completions
                // wait in the overflow list): nothing went in; reaping makes room, and the next
                // loop turn submits again. As on the sleeping path below.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    self.count(|s| s.enters += 1);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            let start = Instant::now();
            loop {
                let mut ring = self.ring.borrow_mut();
                if ring.submission().taskrun() {
                    let _ = ring.submit();
                    self.count(|s| s.enters += 1);
                }
                let mut cq = ring.completion();
                cq.sync();
                if !cq.is_empty() || self.has_ready() {
                    return Ok(());
                }
                drop(cq);
                drop(ring);
                if start.elapsed() >= spin {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        self.shared.sleeping.store(true, Ordering::SeqCst);
        if self.has_ready() {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return Ok(());
        }
        let res = loop {
            let r = self.ring.borrow().submit_and_wait(1);
            match r {
                Ok(n) => {
                    self.count(|s| {
                        s.enters += 1;
                        s.submitted += n as u64
                    });
                    break Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // CQ overflow backlog: reaping makes room.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.shared.sleeping.store(false, Ordering::SeqCst);
        res
    }

    /// `io_uring_enter` without waiting: submit what is queued (the crate adds GETEVENTS when
    /// the kernel flags an overflow backlog or pending task work). Retries on EINTR.
    fn submit_no_wait(&self) -> io::Result<usize> {
        loop {
            #[cfg(test)]
            if let Some(errno) = self.submit_faults.borrow_mut().pop() {
                if errno == libc::EINTR {
                    continue;
                }
                return Err(io::Error::from_raw_os_error(errno));
            }
            match self.ring.borrow().submit() {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                r => return r,
            }
        }
    }

    /// Move completions out of the CQ and hand each to its op.
    pub(crate) fn reap(&self) {
        // Taken out while completions are dispatched: dispatching may drop an op's resources,
        // and a `BorrowOp` among them reaps again from its `Drop`.
        let mut scratch = std::mem::take(&mut *self.cqe_scratch.borrow_mut());
        {
            let mut ring = self.ring.borrow_mut();
            for cqe in ring.completion() {
                scratch.push((cqe.user_data(), cqe.result(), cqe.flags()));
            }
        }
        self.count(|s| s.completions += scratch.len() as u64);
        self.last_reap.set(scratch.len());
        for (ud, res, flags) in scratch.drain(..) {
            match ud {
                IGNORED_USER_DATA => {}
                WAKE_USER_DATA => {
                    self.wake_armed.set(false);
                }
                key => self.complete(key as usize, res, flags),
            }
        }
        *self.cqe_scratch.borrow_mut() = scratch;
    }

    fn complete(&self, key: usize, res: i32, flags: u32) {
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(key) else {
            debug_assert!(false, "completion for unknown op {key}");
            return;
        };
        let more = cqueue::more(flags);
        match slot {
            Lifecycle::Pending(waker) => {
                let w = waker.take();
                *slot = Lifecycle::Done(res, flags);
                drop(ops);
                if let Some(w) = w {
                    w.wake();
                }
            }
            Lifecycle::Done(..) => debug_assert!(false, "second completion for single-shot op"),
            Lifecycle::Ignored(_) => {
                if !more {
                    ops.remove(key);
                }
            }
            Lifecycle::Multi(q, waker) => {
                q.push_back((res, flags));
                let w = waker.take();
                drop(ops);
                if let Some(w) = w {
                    w.wake();
                }
            }
        }
    }

    /// Cancel the op in slot `key` and drive the ring until its completion has arrived (for a
    /// `BorrowOp` being dropped: the memory it borrows must outlive the kernel's use). Other
    /// completions reaped meanwhile go to their ops as usual.
    pub(crate) fn cancel_and_wait(&self, key: usize) {
        let e = opcode::AsyncCancel::new(key as u64)
            .build()
            .user_data(IGNORED_USER_DATA);
        // SAFETY: a cancel request carries no pointers.
        unsafe { self.push(&e) };
        while matches!(self.ops.borrow().get(key), Some(Lifecycle::Pending(_))) {
            match self.ring.borrow().submit_and_wait(1) {
                Ok(n) => self.count(|s| {
                    s.enters += 1;
                    s.submitted += n as u64
                }),
                // Interrupted, or CQ overflow (reaping makes room): go round again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => panic!("io_uring_enter failed while waiting for a borrowed buffer: {e}"),
            }
            self.reap();
        }
    }

    /// Cancel all in-flight ops and reap until none is left or `limit` passes.
    fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut cancelled = false;
        loop {
            let in_flight = self
                .ops
                .borrow()
                .iter()
                .filter(|(_, l)| !matches!(l, Lifecycle::Done(..)))
                .count()
                + usize::from(self.wake_armed.get());
            if in_flight == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if !cancelled {
                let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(IGNORED_USER_DATA);
                // SAFETY: a cancel request carries no pointers.
                unsafe { self.push(&e) };
                cancelled = true;
            }
            let ts = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.borrow().submitter().submit_with_args(1, &args);
            self.reap();
            // The eventfd read is cancelled too; never re-arm it while draining.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_returns_value_without_io() {
        let rt = Runtime::new().unwrap();
        assert_eq!(rt.block_on(async { 7 }), 7);
    }

    #[test]
    fn spawned_tasks_run_and_join() {
        let rt = Runtime::new().unwrap();
        let v = rt.block_on(async {
            let a = spawn(async { 1 });
            let b = spawn(async { 2 });
            a.await + b.await
        });
        assert_eq!(v, 3);
    }

    /// Block `rt` on a future that another thread wakes after `delay`; returns how often the
    /// future was polled and how long it took.
    fn woken_from_another_thread(rt: &Runtime, delay: Duration) -> (u32, Duration) {
        let (tx, rx) = std::sync::mpsc::channel::<std::task::Waker>();
        let t = std::thread::spawn(move || {
            let w = rx.recv().unwrap();
            std::thread::sleep(delay);
            w.wake();
        });
        let mut sent = Some(tx);
        let mut polls = 0;
        let t0 = Instant::now();
        rt.block_on(std::future::poll_fn(|cx| {
            polls += 1;
            match sent.take() {
                Some(tx) => {
                    tx.send(cx.waker().clone()).unwrap();
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        }));
        let took = t0.elapsed();
        t.join().unwrap();
        (polls, took)
    }

    #[test]
    fn cross_thread_wake_reaches_sleeping_loop() {
        let rt = Runtime::new().unwrap();
        let (polls, _) = woken_from_another_thread(&rt, Duration::from_millis(50));
        assert_eq!(polls, 2);
    }

    /// Busy polling must notice deferred task work (a timer firing) from shared memory, without
    /// a syscall per spin and without waiting for the spin to run out.
    #[test]
    fn busy_poll_sees_task_work_without_spinning_in_the_kernel() {
        let rt = Runtime::builder()
            .busy_poll(Some(Duration::from_millis(400)))
            .build()
            .unwrap();
        let before = rt.stats().enters;
        let t0 = Instant::now();
        rt.block_on(crate::time::sleep(Duration::from_millis(20)));
        let took = t0.elapsed();
        let enters = rt.stats().enters - before;
        assert!(
            took < Duration::from_millis(300),
            "a 20 ms sleep took {took:?}"
        );
        assert!(enters < 20, "{enters} enters for one 20 ms sleep");
    }

    /// Busy polling survives what `io_uring_enter` may say while submitting: EBUSY (a CQ
    /// overflow backlog on older kernels, which then submit nothing) and EINTR. Current kernels
    /// no longer refuse, so the errors are injected; the tiny CQ makes real overflows too.
    #[test]
    fn busy_poll_survives_ebusy_and_eintr_from_submit() {
        let rt = Runtime::builder()
            .entries(8)
            .cq_entries(16)
            .busy_poll(Some(Duration::from_micros(50)))
            .build()
            .unwrap();
        let faults = [
            libc::EBUSY,
            libc::EINTR,
            libc::EBUSY,
            libc::EBUSY,
            libc::EINTR,
        ];
        rt.inner
            .submit_faults
            .borrow_mut()
            .extend(faults.repeat(20));
        for _ in 0..3 {
            rt.block_on(async {
                let hs: Vec<_> = (0..500)
                    .map(|_| spawn(async { crate::fs::nop().await.unwrap() }))
                    .collect();
                for h in hs {
                    h.await;
                }
            });
        }
        assert!(
            rt.inner.submit_faults.borrow().is_empty(),
            "faults left over"
        );
        assert!(rt.stats().completions >= 1500, "{:?}", rt.stats());
    }

    #[test]
    fn busy_poll_sees_cross_thread_wakes() {
        let rt = Runtime::builder()
            .busy_poll(Some(Duration::from_millis(400)))
            .build()
            .unwrap();
        let (polls, took) = woken_from_another_thread(&rt, Duration::from_millis(20));
        assert_eq!(polls, 2);
        assert!(took < Duration::from_millis(300), "{took:?}");
    }
}

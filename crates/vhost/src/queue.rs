//! One virtqueue, served by its own thread with its own `rt` runtime and its own target queue.
//!
//! ```text
//! kick task:  loop { read the kick eventfd (io_uring) ; send Kick }
//! requests:   one task each: serve on the target, write the status, send Done(head, len)
//! main task:  loop { wait for events ; one pass }
//! pass:       load the memory table ; publish every Done to the used ring (inflight file
//!             updated around each) ; pop and parse new chains, marking them in flight, and
//!             spawn their tasks ; one interrupt (call eventfd) if any completion needs it
//!             under EVENT_IDX ; drop the table
//! ```
//!
//! Nothing on the data path takes a lock: the ring, the inflight region and the target queue
//! belong to this thread; the memory table and the call eventfd are atomically swapped
//! pointers. A pass never awaits, which is what lets a memory table change wait for passes
//! (memory.rs). Stopping (GET_VRING_BASE, disconnect, shutdown): no more chains are taken,
//! requests in flight finish and are published, and the thread returns the next available
//! index, so the frontend can resume exactly there.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwapOption;
use rt::IoBuf;
use rt::sync::{Sender, Signal, channel};
use targets::Target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::config::Device;
use crate::data::{self, Stats};
use crate::inflight::QueueInflight;
use crate::memory::{Memory, PassToken, SharedMemory};
use crate::request::{self, Refused};
use rt::local::Budget;

/// Everything a queue thread needs, checked by the control thread before it starts.
pub struct QueueSetup<T: Target> {
    pub index: u16,
    pub queue: Queue,
    /// Where the available ring starts when nothing says otherwise (SET_VRING_BASE).
    pub base: u16,
    pub kick: File,
    pub call: Arc<ArcSwapOption<File>>,
    pub inflight: Option<QueueInflight>,
    pub target: Arc<T>,
    pub dev: Arc<Device>,
    pub mem: Arc<SharedMemory>,
    pub stats: Arc<Stats>,
}

/// A running queue thread.
pub struct RunningQueue {
    stop: Signal,
    thread: std::thread::JoinHandle<io::Result<u16>>,
}

impl RunningQueue {
    /// Stop taking requests, let those in flight finish, end the thread. Returns the next
    /// available index (what GET_VRING_BASE answers), or the thread's error.
    pub fn stop(self) -> io::Result<u16> {
        self.stop.raise();
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("queue thread panicked")))
    }
}

/// Start the thread of a queue. Returns once it has its runtime and target queue, so a
/// target that cannot open a queue fails the message that started the ring.
pub fn start<T: Target>(s: QueueSetup<T>) -> io::Result<RunningQueue> {
    let stop = Signal::new();
    let stop2 = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("vq-{}", s.index))
        .spawn(move || run(s, stop2, ready_tx))?;
    match ready_rx.recv() {
        Ok(()) => Ok(RunningQueue { stop, thread }),
        // The thread ended before it was ready: its error.
        Err(_) => Err(thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("queue thread panicked")))
            .err()
            .unwrap_or_else(|| io::Error::other("queue thread ended at start"))),
    }
}

enum Event {
    Kick,
    Done(u16, u32),
    Stop,
}

fn run<T: Target>(
    s: QueueSetup<T>,
    stop: Signal,
    ready: std::sync::mpsc::Sender<()>,
) -> io::Result<u16> {
    let index = s.index;
    let r = (|| {
        let rt = rt::Runtime::builder()
            .entries((s.queue.size() as u32).clamp(64, 4096))
            .build()?;
        let tq = Rc::new(s.target.open_queue(index)?);
        let _ = ready.send(());
        rt.block_on(serve(s, tq, stop))
    })();
    if let Err(e) = &r {
        tracing::error!("queue {index}: {e}");
    }
    r
}

struct Ring<Q> {
    index: u16,
    queue: Queue,
    inflight: Option<QueueInflight>,
    call: Arc<ArcSwapOption<File>>,
    token: PassToken,
    tq: Rc<Q>,
    dev: Arc<Device>,
    stats: Arc<Stats>,
    /// This queue's request counters (the queue thread is their only writer).
    counters: Option<Arc<stats::QueueCounters>>,
    /// Bytes of bounce buffers this queue may hold at once (see `data::BOUNCE_BUDGET`).
    bounce: Rc<Budget>,
    tx: Sender<Event>,
    in_flight: usize,
    stopping: bool,
    /// Completions to publish in this pass.
    done: Vec<(u16, u32)>,
    /// The ring could not be read (a guest wrote nonsense into it): take nothing more.
    broken: bool,
}

async fn serve<T: Target>(s: QueueSetup<T>, tq: Rc<T::Queue>, stop: Signal) -> io::Result<u16> {
    let (tx, mut rx) = channel::<Event>();
    let mut ring = Ring {
        index: s.index,
        queue: s.queue,
        inflight: s.inflight,
        call: s.call,
        token: s.mem.token(),
        tq,
        counters: s.dev.opts.counters.0.get(s.index as usize).cloned(),
        dev: s.dev,
        stats: s.stats,
        bounce: Rc::new(Budget::new(data::BOUNCE_BUDGET)),
        tx: tx.clone(),
        in_flight: 0,
        stopping: false,
        done: Vec::new(),
        broken: false,
    };
    let resubmit = ring.start(s.base)?;
    // Kicks: the eventfd read through this thread's ring.
    let kick = s.kick;
    let ktx = tx.clone();
    rt::spawn(async move {
        let mut buf = IoBuf::with_capacity(8);
        loop {
            match rt::fs::read_at(kick.as_raw_fd(), &mut buf, u64::MAX).await {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("kick eventfd: {e}");
                    return;
                }
            }
            if ktx.send(Event::Kick).is_err() {
                return;
            }
        }
    });
    let stx = tx.clone();
    rt::spawn(async move {
        stop.wait().await;
        let _ = stx.send(Event::Stop);
    });
    drop(tx);
    ring.pass(Some(resubmit));
    let mut events = Vec::new();
    loop {
        if ring.stopping && ring.in_flight == 0 {
            break;
        }
        let Some(ev) = rx.recv().await else { break };
        events.push(ev);
        while let Some(ev) = rx.try_recv() {
            events.push(ev);
        }
        for ev in events.drain(..) {
            match ev {
                Event::Kick => {}
                Event::Done(head, len) => {
                    ring.in_flight -= 1;
                    ring.done.push((head, len));
                }
                Event::Stop => ring.stopping = true,
            }
        }
        ring.pass(None);
    }
    Ok(ring.queue.next_avail())
}

impl<Q: targets::TargetQueue + 'static> Ring<Q> {
    /// Set the ring's indexes from the guest's used ring and the inflight file; returns the
    /// heads to resubmit.
    fn start(&mut self, base: u16) -> io::Result<Vec<u16>> {
        let mem = self.token.begin();
        let r = (|| {
            let used = self
                .queue
                .used_idx(&mem.mmap, Ordering::Acquire)
                .map_err(|e| io::Error::other(format!("used ring: {e}")))?
                .0;
            self.queue.set_next_used(used);
            let tracked = self.inflight.is_some();
            let (heads, next) = match self.inflight.as_mut().and_then(|i| i.recover(used)) {
                Some(r) => r,
                None => (Vec::new(), base),
            };
            self.queue.set_next_avail(next);
            if !heads.is_empty() {
                tracing::info!(
                    "queue {}: resubmitting {} request(s) left in flight by the previous backend",
                    self.index,
                    heads.len()
                );
            }
            tracing::debug!(
                "queue {}: started at avail {next}, used {used}{}",
                self.index,
                if tracked {
                    ", inflight tracked"
                } else {
                    ", no inflight tracking"
                }
            );
            Ok(heads)
        })();
        self.token.end();
        r
    }

    /// One pass (see the module docs).
    fn pass(&mut self, resubmit: Option<Vec<u16>>) {
        let mem = self.token.begin();
        for h in resubmit.into_iter().flatten() {
            self.dispatch(&mem, h);
        }
        if !self.stopping && !self.broken {
            self.take_new(&mem);
        }
        let published = !self.done.is_empty();
        for (head, len) in std::mem::take(&mut self.done) {
            if let Some(i) = &self.inflight {
                i.pre_complete(head);
            }
            if let Err(e) = self.queue.add_used(&mem.mmap, head, len) {
                tracing::warn!("queue {}: cannot publish a completion: {e}", self.index);
                continue;
            }
            if let Some(i) = &self.inflight {
                i.post_complete(head, self.queue.next_used());
            }
        }
        if published && self.queue.needs_notification(&mem.mmap).unwrap_or(true) {
            self.interrupt();
        }
        self.token.end();
    }

    fn take_new(&mut self, mem: &Arc<Memory>) {
        loop {
            let _ = self.queue.disable_notification(&mem.mmap);
            while let Some(chain) = self.queue.pop_descriptor_chain(&mem.mmap) {
                let head = chain.head_index();
                if let Some(i) = &mut self.inflight {
                    i.begin(head);
                }
                self.dispatch(mem, head);
            }
            match self.queue.enable_notification(&mem.mmap) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("queue {}: ring unreadable, stopping it: {e}", self.index);
                    self.broken = true;
                    break;
                }
            }
        }
    }

    fn dispatch(&mut self, mem: &Arc<Memory>, head: u16) {
        let table = GuestAddress(self.queue.desc_table());
        match request::parse(mem, &self.dev, table, self.queue.size(), head) {
            Ok(req) => {
                self.in_flight += 1;
                let (mem, q, dev, stats, bounce, tx) = (
                    mem.clone(),
                    self.tq.clone(),
                    self.dev.clone(),
                    self.stats.clone(),
                    self.bounce.clone(),
                    self.tx.clone(),
                );
                let counters = self.counters.clone();
                rt::spawn(async move {
                    let len = data::serve(req, mem, q, dev, stats, bounce, counters).await;
                    let _ = tx.send(Event::Done(head, len));
                });
            }
            Err(Refused {
                status, code, why, ..
            }) => {
                let n = self.stats.refused.fetch_add(1, Ordering::Relaxed);
                if n < 10 {
                    tracing::warn!("queue {}: bad request (head {head}): {why}", self.index);
                }
                let len = match status {
                    Some(at) if mem.mmap.write_obj(code, GuestAddress(at)).is_ok() => 1,
                    _ => 0,
                };
                self.done.push((head, len));
            }
        }
    }

    fn interrupt(&self) {
        if let Some(f) = self.call.load().as_ref() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a valid buffer to an fd we hold open.
            unsafe { libc::write(f.as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }
}

//! Batch I/O (UBLK_F_BATCH_IO, Linux 7.0+): per queue, one PREP_IO_CMDS hands the driver every
//! tag, one multishot FETCH_IO_CMDS delivers the tags of new requests in batches (each completion
//! fills a provided buffer with `u16` tags), and one COMMIT_IO_CMDS per loop turn returns many
//! results. Per-tag mode costs one uring_cmd completion and one SQE per request instead.
//!
//! Tag tasks serve requests exactly as in per-tag mode; only how a request reaches a tag task
//! and how its result goes back differ.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use rt::pbuf::ProvidedBufs;

use crate::bufmode::BufMode;
use crate::fault::RefuseCommit;
use crate::inflight::Inflight;
use crate::uapi::*;

/// Provided-buffer group of the fetch command (one group per ring: each queue has its own ring).
const FETCH_GROUP: u16 = 0;
/// The driver puts at most this many tags in one fetch completion.
const MAX_TAGS_PER_FETCH: usize = 128;

/// A queue's batch state: which tags have a request waiting for their task, and the results
/// waiting to be committed.
pub(crate) struct Batch {
    cdev: RawFd,
    q_id: u16,
    /// The queue's count of requests being served (from the fetch to the queued commit).
    inflight: Rc<Inflight>,
    /// Times the driver ended the multishot fetch and we armed it again.
    pub(crate) fetch_rearms: Cell<u64>,
    /// Tags whose result the driver refused once and that were committed again with EIO.
    retried: Vec<Cell<bool>>,
    retrying: Cell<usize>,
    refuse_commit: RefuseCommit,
    /// Set by the fetcher when the driver hands us the tag's next request.
    ready: Vec<Cell<bool>>,
    wakers: Vec<Cell<Option<Waker>>>,
    /// Element array of the next commit, `elem_bytes` per tag.
    pending: RefCell<Vec<u8>>,
    /// The array of the commit in flight, reused for the next one.
    spare: RefCell<Vec<u8>>,
    committer: Cell<Option<Waker>>,
    flags: u16,
    elem_bytes: u8,
    /// Copy mode: each tag's buffer, named in every element.
    buf_addrs: Vec<u64>,
    zero_copy: bool,
}

impl Batch {
    pub(crate) fn new(
        refuse_commit: RefuseCommit,
        cdev: RawFd,
        q_id: u16,
        inflight: Rc<Inflight>,
        mode: BufMode,
        buf_addrs: Vec<u64>,
    ) -> Batch {
        let depth = buf_addrs.len();
        let copy = mode == BufMode::Copy;
        let elem_bytes = (std::mem::size_of::<ublk_elem_header>() + if copy { 8 } else { 0 }) as u8;
        Batch {
            cdev,
            q_id,
            inflight,
            fetch_rearms: Cell::new(0),
            retried: (0..depth).map(|_| Cell::new(false)).collect(),
            retrying: Cell::new(0),
            refuse_commit,
            ready: (0..depth).map(|_| Cell::new(false)).collect(),
            wakers: (0..depth).map(|_| Cell::new(None)).collect(),
            pending: RefCell::new(Vec::with_capacity(depth * elem_bytes as usize)),
            spare: RefCell::new(Vec::with_capacity(depth * elem_bytes as usize)),
            committer: Cell::new(None),
            flags: if copy { UBLK_BATCH_F_HAS_BUF_ADDR } else { 0 },
            elem_bytes,
            buf_addrs,
            zero_copy: mode == BufMode::ZeroCopy,
        }
    }

    /// Append one element: `tag`, its result, and where its next request's data goes.
    fn push_elem(&self, out: &mut Vec<u8>, tag: u16, result: i32, refuse: bool) {
        // Zero copy: the next request's pages go to fixed-buffer slot `tag` (see queue.rs).
        let buf_index = if self.zero_copy { tag } else { 0 };
        out.extend_from_slice(&tag.to_ne_bytes());
        out.extend_from_slice(&buf_index.to_ne_bytes());
        out.extend_from_slice(&result.to_ne_bytes());
        if self.flags & UBLK_BATCH_F_HAS_BUF_ADDR != 0 {
            let addr = if refuse {
                0
            } else {
                self.buf_addrs[tag as usize]
            };
            out.extend_from_slice(&addr.to_ne_bytes());
        }
    }

    fn cmd(&self, nr_elem: usize) -> [u8; 16] {
        ublk_batch_io {
            q_id: self.q_id,
            flags: self.flags,
            nr_elem: nr_elem as u16,
            elem_bytes: self.elem_bytes,
            ..Default::default()
        }
        .to_bytes()
    }

    /// Wait until the fetcher hands `tag` a request.
    pub(crate) async fn next_request(&self, tag: u16) {
        let t = tag as usize;
        poll_fn(|cx| {
            if self.ready[t].replace(false) {
                return Poll::Ready(());
            }
            self.wakers[t].set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    /// Queue `tag`'s result for the next commit.
    pub(crate) fn finish(&self, tag: u16, result: i32) {
        let mut p = self.pending.borrow_mut();
        self.push_elem(&mut p, tag, result, self.refuse_commit.now());
        if let Some(w) = self.committer.take() {
            w.wake();
        }
    }
}

/// Keep-alives of every tag buffer (copy mode names them in each element; in the other modes
/// they cost nothing). Held by every command that lets the driver use those buffers.
pub(crate) type TagBufs = Rc<Vec<rt::buf::KeepAlive>>;

/// Hand every tag of the queue to the driver (the batch equivalent of the first FETCH_REQ of
/// each tag). START_DEV completes once every queue did this.
pub(crate) async fn prep(b: &Batch, keep: &TagBufs) -> io::Result<()> {
    let depth = b.ready.len();
    let mut arr = Vec::with_capacity(depth * b.elem_bytes as usize);
    for tag in 0..depth as u16 {
        b.push_elem(&mut arr, tag, 0, false);
    }
    let (addr, len) = (arr.as_ptr() as u64, arr.len() as u32);
    let cmd = b.cmd(depth);
    let keep = (arr, keep.clone());
    // SAFETY: `addr..addr+len` is `arr`'s heap memory, and the tag buffers its elements name are
    // kept alive by `keep`'s keep-alives; the op holds both until the completion. Protocol: no
    // tag task runs before the fetcher delivers its tag, so the CPU leaves every tag buffer to
    // the driver from here until then.
    let c =
        unsafe { rt::fs::uring_cmd16_array(b.cdev, UBLK_U_IO_PREP_IO_CMDS, cmd, addr, len, keep) }
            .await;
    c.io_result()
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("UBLK_U_IO_PREP_IO_CMDS: {e}")))
}

/// The fetch buffers: enough that every tag could arrive in its own completion before the
/// fetcher runs again, each large enough for the most tags the driver sends at once.
pub(crate) fn provide_fetch_buffers(rt: &rt::Runtime, depth: u16) -> io::Result<ProvidedBufs> {
    let count = (depth as usize).next_power_of_two().clamp(8, 32768) as u16;
    let size = 2 * (depth as usize).min(MAX_TAGS_PER_FETCH) as u32;
    rt.provide_buffers(FETCH_GROUP, count, size)
}

/// Receive batches of tags and wake their tasks, until the driver ends the fetch with ABORT
/// (device stopping or quiescing). Any other ending that is not an error is re-armed: the
/// driver ends a multishot fetch when the provided buffers run out (ENOBUFS) or when a
/// completion cannot be posted (CQ overflow: the ending completion still carries its tags).
/// `keep` holds the tag buffers the driver copies into (copy mode) while a fetch is armed.
pub(crate) async fn fetcher(b: Rc<Batch>, bufs: ProvidedBufs, keep: TagBufs) {
    let q_id = b.q_id;
    let cmd = ublk_batch_io {
        q_id,
        elem_bytes: 2,
        ..Default::default()
    }
    .to_bytes();
    // Consecutive arms that ended without delivering a tag: a driver that keeps doing that
    // would otherwise have us spin.
    let mut empty_arms = 0u32;
    loop {
        // SAFETY: the driver writes copy-mode WRITE data into the tag buffers that prep and
        // the commits named, while this fetch is armed; `keep` keeps all of them alive for the
        // op's life (leaked with the ring if it outlives us). Protocol: a tag task touches its
        // buffer only after this fetch delivered its tag and until its commit element is
        // submitted (`Batch::finish` then the committer), which is when the driver leaves it
        // alone. The completions land in `bufs`, which live as long as the ring.
        let mut op = unsafe {
            rt::fs::uring_cmd16_multishot(b.cdev, UBLK_U_IO_FETCH_IO_CMDS, cmd, &bufs, keep.clone())
        };
        let mut delivered = false;
        let end = loop {
            // (`None` only after the completion without MORE, where this loop already left.)
            let Some((res, flags)) = op.next().await else {
                break -libc::ECANCELED;
            };
            if res > 0 {
                delivered = true;
            }
            if res >= 0 {
                let wake = |tags: &[u8]| {
                    // Counted from here until the committer queues their commit, so the queue
                    // cannot end (after an ABORT) with requests handed to tasks not yet run.
                    b.inflight.handed(tags.len() / 2);
                    for t in tags.chunks_exact(2) {
                        let tag = u16::from_ne_bytes([t[0], t[1]]) as usize;
                        if tag >= b.ready.len() {
                            tracing::error!(q = q_id, tag, "driver sent an unknown tag");
                            b.inflight.committed(1);
                            continue;
                        }
                        b.ready[tag].set(true);
                        if let Some(w) = b.wakers[tag].take() {
                            w.wake();
                        }
                    }
                };
                // SAFETY: a completion of `op`, which selects from `bufs`, consumed only here.
                unsafe { bufs.consume(res, flags, wake) };
            }
            if !io_uring::cqueue::more(flags) {
                break res;
            }
        };
        empty_arms = if delivered { 0 } else { empty_arms + 1 };
        match end {
            UBLK_IO_RES_ABORT => break,
            e if (e >= 0 || e == -libc::ENOBUFS) && empty_arms < MAX_EMPTY_ARMS => {
                b.fetch_rearms.set(b.fetch_rearms.get() + 1);
                tracing::debug!(q = q_id, res = e, "the driver ended the fetch; re-arming");
            }
            e => {
                b.inflight.fail(format!(
                    "queue {q_id}: batch fetch ended after {empty_arms} empty arms: {}",
                    io::Error::from_raw_os_error(-e.min(-1))
                ));
                return;
            }
        }
    }
    b.inflight.abort();
}

/// See `fetcher`: this many fetches in a row ending without a tag is a driver we do not
/// understand; the queue ends rather than spin.
const MAX_EMPTY_ARMS: u32 = 1000;

/// Commit whatever results are pending, one command at a time (each turn of the loop collects
/// the results of every tag served meanwhile). Results the driver refuses are committed once
/// more as EIO (the request then fails rather than hangs); a second refusal ends the queue.
pub(crate) async fn committer(b: Rc<Batch>, keep: TagBufs) {
    let stride = b.elem_bytes as usize;
    loop {
        poll_fn(|cx| {
            if !b.pending.borrow().is_empty() {
                return Poll::Ready(());
            }
            b.committer.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        let spare = std::mem::take(&mut *b.spare.borrow_mut());
        let arr = std::mem::replace(&mut *b.pending.borrow_mut(), spare);
        let n = arr.len() / stride;
        let (addr, len) = (arr.as_ptr() as u64, arr.len() as u32);
        let cmd = b.cmd(n);
        // SAFETY: `addr..addr+len` is `arr`'s heap memory; the tag buffers its elements name
        // (copy mode: the driver copies READ data out of them while it processes the commit)
        // stay alive through `keep`. Protocol: each element's tag task queued it after serving
        // its request and leaves its buffer alone until the fetcher delivers the tag again.
        let op = unsafe {
            rt::fs::uring_cmd16_array(
                b.cdev,
                UBLK_U_IO_COMMIT_IO_CMDS,
                cmd,
                addr,
                len,
                (arr, keep.clone()),
            )
        };
        // The SQE is queued: the queue may end once nothing else is being served.
        b.inflight.committed(n);
        let c = op.await;
        // A failed element stops the driver there: it reports how many bytes it took.
        let done = (c.result.max(0) as usize / stride).min(n);
        let a = &c.data.0;
        let tag_at = |i: usize| u16::from_ne_bytes([a[i * stride], a[i * stride + 1]]);
        if b.retrying.get() > 0 {
            for i in 0..done {
                if b.retried[tag_at(i) as usize].replace(false) {
                    b.retrying.set(b.retrying.get() - 1);
                }
            }
        }
        if done < n && !b.inflight.stopping() {
            let why = if c.result < 0 {
                io::Error::from_raw_os_error(-c.result).to_string()
            } else {
                format!("took {done} of {n}")
            };
            let tag = tag_at(done);
            tracing::error!(
                q = b.q_id,
                "commit of {n} results refused at tag {tag}: {why}"
            );
            if b.retried[tag as usize].replace(true) {
                b.inflight.fail(format!(
                    "queue {}: the driver refused the commit of tag {tag} twice",
                    b.q_id
                ));
            } else {
                // The refused request fails with EIO; the driver stopped there, so the elements
                // after it were never looked at: they go again as they were.
                b.retrying.set(b.retrying.get() + 1);
                b.inflight.handed(n - done);
                let mut p = b.pending.borrow_mut();
                b.push_elem(&mut p, tag, -libc::EIO, false);
                p.extend_from_slice(&a[(done + 1) * stride..n * stride]);
            }
        }
        let (mut arr, _) = c.data;
        arr.clear();
        *b.spare.borrow_mut() = arr;
    }
}

//! Safe handles over librados/librbd ([`Cluster`], [`Image`]) and the asynchronous data path
//! ([`Queue`]): every `unsafe` call into [`crate::ffi`] is here, each with the rule it relies on.
//!
//! # How a completion reaches the request that waits for it
//! ```text
//! queue thread (its rt runtime)                      librbd's threads
//!   op: slot = ops.insert(lend of the buffer)
//!       rbd_aio_*(.., completion(arg = mailbox|slot))  ──►  I/O to the OSDs
//!   reaper task: poll(eventfd) on the ring   ◄── eventfd ──  completion queued on the image
//!       rbd_poll_io_events: for each completion
//!         ours  -> slot.result, wake the op
//!         other queue's -> its mailbox + cross-thread wake (shared image handle)
//! ```
//! Nothing of ours runs on librbd's threads (the completion callback is NULL): they only queue
//! the completion and write the eventfd. Each queue thread has a reaper task while it has
//! operations in flight; with one image handle shared by all queues, whichever reaper wakes
//! first collects every queued completion and hands other queues theirs through their mailbox.
//!
//! # Buffers stay lent until librbd is done
//! An operation's slot holds the buffer's [`rt::buf::Lend`] (CPU access to a buffer librbd may
//! write panics until it ends). The slot outlives the request future: a dropped future marks
//! it abandoned, and the slot, with its lend, goes only when the completion is polled out.
//! A queue dropped with operations in flight waits for their completions; past a limit (the
//! cluster is gone) it leaks their buffers and the image handle rather than free memory that
//! librbd may still write.

use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_void};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rt::IoBuf;
use rt::buf::Lend;
use slab::Slab;

use crate::ffi;

fn errno(r: c_int) -> io::Error {
    io::Error::from_raw_os_error(-r)
}

fn cstr(what: &str, s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// How to reach the cluster.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// Client id without `client.` (default `admin`).
    pub id: Option<String>,
    /// ceph.conf; `None`: librados' default search (/etc/ceph/ceph.conf, ...).
    pub conf: Option<String>,
    pub keyring: Option<String>,
    pub mon_host: Option<String>,
    /// librados' `client_mount_timeout`: how long connecting may take.
    pub timeout: Duration,
}

/// Which step of [`Cluster::connect`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading ceph.conf or setting an option.
    Config,
    /// Reaching and authenticating with the monitors.
    Connect,
    /// Opening the pool.
    Pool,
}

/// A connection to the cluster and an I/O context on one pool (one per device).
pub struct Cluster {
    cluster: ffi::rados_t,
    ioctx: ffi::rados_ioctx_t,
}

// SAFETY: librados handles are thread-safe (ffi module docs); we never hand out the raw
// pointers, and `Drop` runs once.
unsafe impl Send for Cluster {}
// SAFETY: as above: every use through `&Cluster` is a thread-safe librados call.
unsafe impl Sync for Cluster {}

impl Cluster {
    /// Connect and open `pool` (and `namespace`). Blocks for up to `o.timeout`.
    pub fn connect(
        o: &ConnectOptions,
        pool: &str,
        namespace: Option<&str>,
    ) -> Result<Cluster, (Stage, io::Error)> {
        let cfg = |e: io::Error| (Stage::Config, e);
        ffi::load().map_err(cfg)?;
        let name = cstr(
            "--id",
            &format!("client.{}", o.id.as_deref().unwrap_or("admin")),
        )
        .map_err(cfg)?;
        let mut cluster: ffi::rados_t = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; NUL-terminated strings that outlive the call.
        let r = unsafe { ffi::rados_create2(&mut cluster, c"ceph".as_ptr(), name.as_ptr(), 0) };
        if r < 0 {
            return Err(cfg(errno(r)));
        }
        // From here on `c` owns the handle: its Drop shuts it down on every error path.
        let mut c = Cluster {
            cluster,
            ioctx: std::ptr::null_mut(),
        };
        match &o.conf {
            Some(path) => {
                let p = cstr("--conf", path).map_err(cfg)?;
                // SAFETY: valid handle before connect; NUL-terminated path.
                let r = unsafe { ffi::rados_conf_read_file(c.cluster, p.as_ptr()) };
                if r < 0 {
                    return Err(cfg(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("cannot read {path}: {}", errno(r)),
                    )));
                }
            }
            None => {
                // SAFETY: as above; NULL means librados' default search path.
                let r = unsafe { ffi::rados_conf_read_file(c.cluster, std::ptr::null()) };
                if r < 0 && o.mon_host.is_none() {
                    return Err(cfg(io::Error::new(
                        io::ErrorKind::NotFound,
                        "no ceph.conf found in the default places (/etc/ceph/ceph.conf, ...): \
                         give --conf FILE or --mon-host ADDR",
                    )));
                }
            }
        }
        let timeout = o.timeout.as_secs().max(1).to_string();
        let mut set: Vec<(&str, String)> = vec![
            // Acknowledged must mean on the OSDs: a daemon killed with writes in librbd's
            // cache would lose them, and the kernel would never reissue them.
            ("rbd_cache", "false".into()),
            // A discard inside an object zeroes its range instead of being skipped, so every
            // discarded byte reads back as zero (as with our other targets).
            ("rbd_skip_partial_discard", "false".into()),
            ("client_mount_timeout", timeout.clone()),
            ("rados_mon_op_timeout", timeout),
            // Errors come back to us as one line; librados must not print its own.
            ("log_to_stderr", "false".into()),
            ("err_to_stderr", "false".into()),
        ];
        if let Some(k) = &o.keyring {
            set.push(("keyring", k.clone()));
        }
        if let Some(m) = &o.mon_host {
            set.push(("mon_host", m.clone()));
        }
        for (k, v) in set {
            let (ck, cv) = (cstr(k, k).map_err(cfg)?, cstr(k, &v).map_err(cfg)?);
            // SAFETY: valid handle before connect; NUL-terminated strings.
            let r = unsafe { ffi::rados_conf_set(c.cluster, ck.as_ptr(), cv.as_ptr()) };
            if r < 0 {
                return Err(cfg(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cannot set {k}={v}: {}", errno(r)),
                )));
            }
        }
        // SAFETY: valid, configured handle; blocks for at most client_mount_timeout.
        let r = unsafe { ffi::rados_connect(c.cluster) };
        if r < 0 {
            return Err((Stage::Connect, errno(r)));
        }
        let p = cstr("pool", pool).map_err(|e| (Stage::Pool, e))?;
        let mut io: ffi::rados_ioctx_t = std::ptr::null_mut();
        // SAFETY: connected handle; out-pointer to a local; NUL-terminated pool name.
        let r = unsafe { ffi::rados_ioctx_create(c.cluster, p.as_ptr(), &mut io) };
        if r < 0 {
            return Err((Stage::Pool, errno(r)));
        }
        c.ioctx = io;
        if let Some(ns) = namespace {
            let n = cstr("namespace", ns).map_err(|e| (Stage::Pool, e))?;
            // SAFETY: valid ioctx; librados copies the string.
            unsafe { ffi::rados_ioctx_set_namespace(c.ioctx, n.as_ptr()) };
        }
        Ok(c)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: handles we own; every image opened on the ioctx holds an `Arc<Cluster>`,
        // so all of them are closed by now.
        unsafe {
            if !self.ioctx.is_null() {
                ffi::rados_ioctx_destroy(self.ioctx);
            }
            ffi::rados_shutdown(self.cluster);
        }
    }
}

/// Completions collected by another queue's reaper for this queue (shared image handle).
#[derive(Default)]
struct Mailbox {
    inner: Mutex<MailboxInner>,
}

#[derive(Default)]
struct MailboxInner {
    /// (slot, return value)
    done: Vec<(u32, isize)>,
    /// The owning queue's reaper, when it waits.
    waker: Option<Waker>,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open image: librbd's handle, the eventfd librbd signals, and the mailboxes of the
/// queues that use it.
pub struct Image {
    raw: ffi::rbd_image_t,
    efd: OwnedFd,
    mailboxes: RwLock<Vec<Arc<Mailbox>>>,
    size: u64,
    features: u64,
    flags: u64,
    /// Dropped after the image is closed (field order does not matter: `Drop` closes first).
    _cluster: Arc<Cluster>,
}

// SAFETY: librbd image handles are thread-safe (ffi module docs); the raw pointer is never
// handed out, and `Drop` runs once, after every queue (which holds an `Arc<Image>`) is gone.
unsafe impl Send for Image {}
// SAFETY: as above.
unsafe impl Sync for Image {}

impl Image {
    /// Open `name` (at `snap`) on the cluster's pool, and route its completions to an eventfd.
    pub fn open(
        cluster: Arc<Cluster>,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> io::Result<Image> {
        let n = cstr("image name", name)?;
        let s = snap.map(|s| cstr("snapshot name", s)).transpose()?;
        let sp = s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let mut raw: ffi::rbd_image_t = std::ptr::null_mut();
        // SAFETY: valid ioctx (kept alive by `cluster`); out-pointer to a local;
        // NUL-terminated names (snapshot may be NULL).
        let r = unsafe {
            if read_only {
                ffi::rbd_open_read_only(cluster.ioctx, n.as_ptr(), &mut raw, sp)
            } else {
                ffi::rbd_open(cluster.ioctx, n.as_ptr(), &mut raw, sp)
            }
        };
        if r < 0 {
            return Err(errno(r));
        }
        let close = |e: io::Error| {
            // SAFETY: the handle we just opened; no operation was started on it.
            unsafe { ffi::rbd_close(raw) };
            e
        };
        // SAFETY: eventfd(2) returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(close(io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd owned by nobody else.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        let (mut size, mut features, mut flags) = (0u64, 0u64, 0u64);
        // SAFETY: valid handle; out-pointers to locals; the eventfd outlives the handle
        // (`Image` drops `efd` after `Drop::drop` closed the image).
        let r = unsafe {
            let mut r = ffi::rbd_get_size(raw, &mut size);
            if r == 0 {
                r = ffi::rbd_get_features(raw, &mut features);
            }
            if r == 0 {
                r = ffi::rbd_get_flags(raw, &mut flags);
            }
            if r == 0 {
                r = ffi::rbd_set_image_notification(raw, fd, ffi::EVENT_TYPE_EVENTFD);
            }
            r
        };
        if r < 0 {
            return Err(close(errno(r)));
        }
        Ok(Image {
            raw,
            efd,
            mailboxes: RwLock::new(Vec::new()),
            size,
            features,
            flags,
            _cluster: cluster,
        })
    }

    /// The size at open.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The size now: librbd refreshes the handle when the image header changed (a resize from
    /// elsewhere) before it answers.
    pub fn current_size(&self) -> io::Result<u64> {
        let mut size = 0u64;
        // SAFETY: valid open handle (closed only in `Drop`); out-pointer to a local.
        let r = unsafe { ffi::rbd_get_size(self.raw, &mut size) };
        if r < 0 {
            return Err(errno(r));
        }
        Ok(size)
    }
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether allocation can be asked without reading every object: a valid fast-diff map.
    pub fn cheap_diff(&self) -> bool {
        self.features & ffi::RBD_FEATURE_FAST_DIFF != 0
            && self.flags & ffi::RBD_FLAG_FAST_DIFF_INVALID == 0
    }

    fn register(&self) -> (u32, Arc<Mailbox>) {
        let mut v = self.mailboxes.write().unwrap_or_else(|e| e.into_inner());
        let m = Arc::new(Mailbox::default());
        v.push(m.clone());
        ((v.len() - 1) as u32, m)
    }

    /// Allocated extents of `[off, off + len)` as (offset, length, exists), at most `max`
    /// (blocking: librbd may read the object map from the cluster). With `whole_object`,
    /// object-granular from the fast-diff map.
    pub fn diff(&self, off: u64, len: u64, max: usize) -> io::Result<Vec<(u64, u64, bool)>> {
        struct Acc {
            v: Vec<(u64, u64, bool)>,
            max: usize,
        }
        unsafe extern "C" fn cb(o: u64, l: usize, exists: c_int, arg: *mut c_void) -> c_int {
            // SAFETY: `arg` is the `Acc` below, alive and exclusively ours for the call.
            let acc = unsafe { &mut *(arg as *mut Acc) };
            if acc.v.len() >= acc.max {
                return -libc::ECANCELED;
            }
            acc.v.push((o, l as u64, exists != 0));
            0
        }
        let mut acc = Acc { v: Vec::new(), max };
        // SAFETY: valid handle; the callback only touches `acc`, which outlives the call
        // (rbd_diff_iterate2 returns only after its last callback).
        let r = unsafe {
            ffi::rbd_diff_iterate2(
                self.raw,
                std::ptr::null(),
                off,
                len,
                1,
                u8::from(self.cheap_diff()),
                cb,
                &mut acc as *mut Acc as *mut c_void,
            )
        };
        if r < 0 && r != -libc::ECANCELED {
            return Err(errno(r));
        }
        Ok(acc.v)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: every queue holds an `Arc<Image>` and drains its operations before letting
        // go of it (or leaks the Arc), so no completion of ours is outstanding.
        let r = unsafe { ffi::rbd_close(self.raw) };
        if r < 0 {
            tracing::warn!("rbd_close: {}", errno(r));
        }
    }
}

/// One operation librbd may still be working on.
struct Slot {
    comp: ffi::rbd_completion_t,
    result: Option<isize>,
    waker: Option<Waker>,
    /// Its future was dropped: free the slot when the completion arrives.
    abandoned: bool,
    /// Keeps the buffer lent (and alive) while librbd may touch it.
    _lend: Option<Lend>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: a slot is dropped only once its completion was polled out of the image (or
        // its rbd_aio_* call failed, so it was never queued): librbd is done with it.
        unsafe { ffi::rbd_aio_release(self.comp) };
    }
}

/// The data path of one queue: its own operations, reaped on its own runtime.
pub struct Queue {
    st: Rc<QueueState>,
}

struct QueueState {
    image: Arc<Image>,
    mbox_id: u32,
    mbox: Arc<Mailbox>,
    ops: RefCell<Slab<Slot>>,
    reaping: Cell<bool>,
}

/// Largest batch taken from `rbd_poll_io_events` at once.
const POLL_BATCH: usize = 64;
/// How long a dropped queue waits for librbd to finish its operations before leaking them.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

fn encode(mbox: u32, slot: usize) -> *mut c_void {
    (((mbox as u64) << 32) | slot as u64) as usize as *mut c_void
}

fn decode(arg: *mut c_void) -> (u32, u32) {
    let v = arg as usize as u64;
    ((v >> 32) as u32, v as u32)
}

impl Queue {
    pub fn new(image: Arc<Image>) -> Queue {
        let (mbox_id, mbox) = image.register();
        Queue {
            st: Rc::new(QueueState {
                image,
                mbox_id,
                mbox,
                ops: RefCell::new(Slab::new()),
                reaping: Cell::new(false),
            }),
        }
    }

    pub fn image(&self) -> &Arc<Image> {
        &self.st.image
    }

    /// Start one operation: `start(image, completion)` is the `rbd_aio_*` call.
    ///
    /// # Safety
    /// `start` makes librbd read or write only memory that `lend` keeps alive and lent, and
    /// nothing else of ours.
    unsafe fn submit(
        &self,
        lend: Option<Lend>,
        start: impl FnOnce(ffi::rbd_image_t, ffi::rbd_completion_t) -> c_int,
    ) -> io::Result<Op> {
        let st = &self.st;
        let key = {
            let mut ops = st.ops.borrow_mut();
            let entry = ops.vacant_entry();
            let key = entry.key();
            let mut comp: ffi::rbd_completion_t = std::ptr::null_mut();
            // SAFETY: out-pointer to a local; the argument is a plain number, never
            // dereferenced by librbd; no callback.
            let r =
                unsafe { ffi::rbd_aio_create_completion(encode(st.mbox_id, key), None, &mut comp) };
            if r < 0 {
                return Err(errno(r));
            }
            entry.insert(Slot {
                comp,
                result: None,
                waker: None,
                abandoned: false,
                _lend: lend,
            });
            key
        };
        let comp = st.ops.borrow()[key].comp;
        let r = start(st.image.raw, comp);
        if r < 0 {
            // Never queued: the slot (and its completion) can go at once.
            st.ops.borrow_mut().remove(key);
            return Err(errno(r));
        }
        if !st.reaping.get() {
            st.reaping.set(true);
            rt::spawn(reap(st.clone()));
        }
        Ok(Op {
            st: st.clone(),
            key,
            finished: false,
        })
    }

    /// Read `buf.len()` bytes at `off` into `buf`.
    pub async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        let iov = libc::iovec {
            iov_base: buf.addr().cast(),
            iov_len: buf.len(),
        };
        let want = buf.len() as isize;
        let lend = buf.lend_write();
        // SAFETY: librbd writes only `buf`'s bytes, which the write lend keeps alive and off
        // limits to the CPU until the completion is polled out; the iovec is copied during
        // the call.
        let op = unsafe {
            self.submit(Some(lend), |img, c| {
                ffi::rbd_aio_readv(img, &iov, 1, off, c)
            })
        }?;
        match op.await {
            n if n == want => Ok(()),
            n if n < 0 => Err(io::Error::from_raw_os_error(-n as i32)),
            _ => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    /// Write `buf` at `off`; with `fua`, durable when it completes.
    pub async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> io::Result<()> {
        let (ptr, len) = (buf.addr(), buf.len());
        let lend = buf.lend_read();
        // SAFETY: librbd reads only `buf`'s bytes, which the read lend keeps alive and
        // unchanged until the completion is polled out.
        let op = unsafe {
            self.submit(Some(lend), |img, c| {
                if fua {
                    ffi::rbd_aio_write2(
                        img,
                        off,
                        len,
                        ptr.cast(),
                        c,
                        ffi::LIBRADOS_OP_FLAG_FADVISE_FUA,
                    )
                } else {
                    let iov = libc::iovec {
                        iov_base: ptr.cast(),
                        iov_len: len,
                    };
                    ffi::rbd_aio_writev(img, &iov, 1, off, c)
                }
            })
        }?;
        match op.await {
            n if n < 0 => Err(io::Error::from_raw_os_error(-n as i32)),
            _ => Ok(()),
        }
    }

    pub async fn flush(&self) -> io::Result<()> {
        // SAFETY: a flush touches none of our memory.
        let op = unsafe { self.submit(None, |img, c| ffi::rbd_aio_flush(img, c)) }?;
        status(op.await)
    }

    pub async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: a discard touches none of our memory.
        let op = unsafe { self.submit(None, |img, c| ffi::rbd_aio_discard(img, off, len, c)) }?;
        status(op.await)
    }

    pub async fn write_zeroes(&self, off: u64, len: u64) -> io::Result<()> {
        // SAFETY: zeroing touches none of our memory.
        let op = unsafe {
            self.submit(None, |img, c| {
                ffi::rbd_aio_write_zeroes(img, off, len as usize, c, 0, 0)
            })
        }?;
        status(op.await)
    }

    /// Operations of this queue librbd has not finished (for tests).
    pub fn in_flight(&self) -> usize {
        self.st.ops.borrow().len()
    }
}

fn status(r: isize) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r as i32))
    } else {
        Ok(())
    }
}

/// A started operation; resolves to librbd's return value.
struct Op {
    st: Rc<QueueState>,
    key: usize,
    finished: bool,
}

impl Future for Op {
    type Output = isize;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<isize> {
        let mut ops = self.st.ops.borrow_mut();
        let slot = &mut ops[self.key];
        if let Some(r) = slot.result {
            let s = ops.remove(self.key);
            drop(ops);
            drop(s);
            self.finished = true;
            return Poll::Ready(r);
        }
        match &slot.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut ops = self.st.ops.borrow_mut();
        let done = match ops.get_mut(self.key) {
            Some(s) if s.result.is_some() => true,
            Some(s) => {
                s.abandoned = true;
                s.waker = None;
                false
            }
            None => false,
        };
        if done {
            let s = ops.remove(self.key);
            drop(ops);
            drop(s);
        }
    }
}

impl QueueState {
    /// Record a result on this thread: wake the waiting future, or free an abandoned slot.
    fn complete(&self, key: u32, r: isize) {
        let key = key as usize;
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(key) else {
            debug_assert!(false, "completion for unknown rbd slot {key}");
            return;
        };
        if slot.abandoned {
            let s = ops.remove(key);
            drop(ops);
            drop(s);
            return;
        }
        slot.result = Some(r);
        let w = slot.waker.take();
        drop(ops);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Results other queues collected for us.
    fn take_mail(&self) {
        let done = std::mem::take(&mut self.mbox.lock().done);
        for (key, r) in done {
            self.complete(key, r);
        }
    }

    /// Reset the eventfd, then take every completion librbd has queued on the image: ours are
    /// recorded here, others go to their queue's mailbox.
    fn poll_events(&self) {
        let mut cnt = 0u64;
        // SAFETY: reads 8 bytes into a local from our non-blocking eventfd (EAGAIN is fine:
        // another queue reset it, and polling below still finds what is queued).
        unsafe { libc::read(self.image.efd.as_raw_fd(), (&mut cnt as *mut u64).cast(), 8) };
        let mut comps = [std::ptr::null_mut(); POLL_BATCH];
        let mut others: Vec<(u32, u32, isize)> = Vec::new();
        loop {
            // SAFETY: valid handle; librbd writes at most POLL_BATCH pointers into `comps`.
            let n = unsafe {
                ffi::rbd_poll_io_events(self.image.raw, comps.as_mut_ptr(), POLL_BATCH as c_int)
            };
            if n <= 0 {
                break;
            }
            for &c in &comps[..n as usize] {
                // SAFETY: a completion just handed out by rbd_poll_io_events: finished, and
                // not released (only its owner releases it, after this).
                let (arg, r) =
                    unsafe { (ffi::rbd_aio_get_arg(c), ffi::rbd_aio_get_return_value(c)) };
                let (mbox, key) = decode(arg);
                if mbox == self.mbox_id {
                    self.complete(key, r);
                } else {
                    others.push((mbox, key, r));
                }
            }
            if (n as usize) < POLL_BATCH {
                break;
            }
        }
        if others.is_empty() {
            return;
        }
        let boxes = self
            .image
            .mailboxes
            .read()
            .unwrap_or_else(|e| e.into_inner());
        others.sort_unstable_by_key(|o| o.0);
        for group in others.chunk_by(|a, b| a.0 == b.0) {
            let Some(m) = boxes.get(group[0].0 as usize) else {
                tracing::error!("rbd completion for unknown queue {}", group[0].0);
                continue;
            };
            let w = {
                let mut g = m.lock();
                g.done.extend(group.iter().map(|&(_, k, r)| (k, r)));
                g.waker.take()
            };
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    fn efd(&self) -> RawFd {
        self.image.efd.as_raw_fd()
    }
}

/// While this queue has operations in flight: wait for the image's eventfd (on this thread's
/// ring) or for mail from another queue, and hand out what completed.
async fn reap(st: Rc<QueueState>) {
    let mut readable: Option<Pin<Box<dyn Future<Output = io::Result<u32>>>>> = None;
    loop {
        st.take_mail();
        st.poll_events();
        if st.ops.borrow().is_empty() {
            break;
        }
        let efd = st.efd();
        poll_fn(|cx| {
            {
                let mut g = st.mbox.lock();
                if !g.done.is_empty() {
                    return Poll::Ready(());
                }
                g.waker = Some(cx.waker().clone());
            }
            let r = readable.get_or_insert_with(|| Box::pin(rt::poll::readable(efd)));
            if r.as_mut().poll(cx).is_ready() {
                readable = None;
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }
    st.mbox.lock().waker = None;
    st.reaping.set(false);
}

impl Drop for QueueState {
    /// Only abandoned operations can be left (every future holds an `Rc` of this state):
    /// wait, blocking, for librbd to finish them before their buffers and the image go.
    fn drop(&mut self) {
        if self.ops.get_mut().is_empty() {
            return;
        }
        let start = Instant::now();
        loop {
            self.take_mail();
            self.poll_events();
            if self.ops.borrow().is_empty() {
                return;
            }
            if start.elapsed() > DRAIN_LIMIT {
                let n = self.ops.borrow().len();
                tracing::error!(
                    "{n} rbd operations still in flight after {} s: leaking their buffers and the image handle",
                    DRAIN_LIMIT.as_secs()
                );
                std::mem::forget(std::mem::take(self.ops.get_mut()));
                std::mem::forget(self.image.clone());
                return;
            }
            let mut p = libc::pollfd {
                fd: self.efd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd on the stack; bounded wait (mail from other queues arrives
            // without waking the eventfd, hence the short timeout).
            unsafe { libc::poll(&mut p, 1, 10) };
        }
    }
}

/// The message of a librados/librbd error number, for one-line errors.
pub fn describe_errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        // SAFETY: strerror returns a static string for any errno.
        Some(n) => unsafe { CStr::from_ptr(libc::strerror(n)) }
            .to_string_lossy()
            .into_owned(),
        None => e.to_string(),
    }
}

//! Tasks: boxed futures in a slab, woken through a ready list. A wake on the runtime's own thread
//! (nearly all: a completion or a sibling task) goes to a plain local list; one from another
//! thread goes to a locked list and pokes the eventfd if the loop sleeps in the kernel.

use std::cell::RefCell;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use crate::runtime::Inner;

/// Id of the future passed to `block_on`.
pub(crate) const MAIN_TASK: usize = usize::MAX;

/// State shared with wakers (which must be `Send + Sync`).
pub(crate) struct Shared {
    ready: Mutex<Vec<usize>>,
    eventfd: OwnedFd,
    /// Set while the loop blocks in `io_uring_enter`; a waker that sees it pokes the eventfd.
    pub(crate) sleeping: AtomicBool,
}

impl Shared {
    pub(crate) fn new(eventfd: OwnedFd) -> Shared {
        Shared {
            ready: Mutex::new(Vec::with_capacity(64)),
            eventfd,
            sleeping: AtomicBool::new(false),
        }
    }

    pub(crate) fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    pub(crate) fn waker(self: &Arc<Self>, id: usize) -> Waker {
        Waker::from(Arc::new(TaskWaker {
            id,
            shared: self.clone(),
        }))
    }

    /// Append the tasks woken from other threads to `out`.
    pub(crate) fn take_ready_into(&self, out: &mut Vec<usize>) {
        let mut q = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        out.append(&mut q);
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    fn schedule(&self, id: usize) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        if self.sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

struct TaskWaker {
    id: usize,
    shared: Arc<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !crate::runtime::wake_local(&self.shared, self.id) {
            self.shared.schedule(self.id);
        }
    }
}

pub(crate) struct TaskSlot {
    fut: Option<Pin<Box<dyn Future<Output = ()>>>>,
    waker: Waker,
}

struct JoinState<T> {
    value: Option<T>,
    waiter: Option<Waker>,
}

/// Awaits a spawned task's output. Dropping it detaches the task (it keeps running).
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut st = self.state.borrow_mut();
        match st.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                st.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> JoinHandle<T> {
    /// True once the task has produced its output (and it was not yet taken).
    pub fn is_finished(&self) -> bool {
        self.state.borrow().value.is_some()
    }
}

pub(crate) fn spawn_on<F>(inner: &Rc<Inner>, fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let state = Rc::new(RefCell::new(JoinState {
        value: None,
        waiter: None,
    }));
    let st = state.clone();
    let wrapped = async move {
        let v = fut.await;
        let w = {
            let mut s = st.borrow_mut();
            s.value = Some(v);
            s.waiter.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    };
    let mut tasks = inner.tasks.borrow_mut();
    let entry = tasks.vacant_entry();
    let id = entry.key();
    entry.insert(TaskSlot {
        fut: Some(Box::pin(wrapped)),
        waker: inner.shared.waker(id),
    });
    drop(tasks);
    inner.local_ready.borrow_mut().push(id);
    JoinHandle { state }
}

/// Poll task `id` once. The future is taken out of the slab while polled so that it may spawn.
pub(crate) fn poll_task(inner: &Rc<Inner>, id: usize) {
    let (mut fut, waker) = {
        let mut tasks = inner.tasks.borrow_mut();
        let Some(slot) = tasks.get_mut(id) else {
            return;
        };
        let Some(fut) = slot.fut.take() else { return };
        (fut, slot.waker.clone())
    };
    let mut cx = Context::from_waker(&waker);
    let done = fut.as_mut().poll(&mut cx).is_ready();
    let mut tasks = inner.tasks.borrow_mut();
    if done {
        tasks.remove(id);
    } else if let Some(slot) = tasks.get_mut(id) {
        slot.fut = Some(fut);
    }
}

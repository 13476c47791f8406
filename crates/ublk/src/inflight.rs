//! When a queue is done: the driver said ABORT (the device is stopping or quiescing) or the queue
//! failed, and no request it was handed is still being served. The driver may not abort a tag
//! whose next request it already started (it requeues that request instead), so "every tag saw
//! ABORT" is not the test; "stopping and nothing busy" is.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};

#[derive(Default)]
pub(crate) struct Inflight {
    /// Requests handed to the queue whose commit is not yet queued on the ring.
    busy: Cell<usize>,
    stopping: Cell<bool>,
    /// Why the queue gave up, if it did (the first reason).
    failure: RefCell<Option<String>>,
    waker: Cell<Option<Waker>>,
}

impl Inflight {
    /// The driver handed us `n` requests.
    pub(crate) fn handed(&self, n: usize) {
        self.busy.set(self.busy.get() + n);
    }

    /// The commits of `n` requests are queued on the ring.
    pub(crate) fn committed(&self, n: usize) {
        self.busy.set(self.busy.get() - n);
        if self.stopping.get() {
            self.wake();
        }
    }

    pub(crate) fn busy(&self) -> usize {
        self.busy.get()
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// The driver said UBLK_IO_RES_ABORT.
    pub(crate) fn abort(&self) {
        self.stopping.set(true);
        self.wake();
    }

    /// The queue cannot go on (the driver refused a command twice): end it once what is being
    /// served is committed, and report `why`.
    pub(crate) fn fail(&self, why: String) {
        tracing::error!("{why}");
        self.failure.borrow_mut().get_or_insert(why);
        self.abort();
    }

    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Stopping, and nothing busy.
    pub(crate) async fn done(&self) {
        poll_fn(|cx| {
            if self.stopping.get() && self.busy.get() == 0 {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

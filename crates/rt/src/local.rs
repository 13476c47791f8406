//! Small single-thread async primitives for tasks of one `rt` runtime: a FIFO lock (replies of a
//! connection go out one whole reply at a time), a byte budget (bounds memory per connection) and
//! a notification. No atomics: all of this is `!Send`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

/// Waiters in arrival order; a waiter is identified by a ticket so a dropped future can leave.
#[derive(Default)]
struct Queue {
    next: Cell<u64>,
    q: RefCell<VecDeque<(u64, Option<Waker>)>>,
}

impl Queue {
    fn join(&self) -> u64 {
        let t = self.next.get();
        self.next.set(t + 1);
        self.q.borrow_mut().push_back((t, None));
        t
    }
    fn is_head(&self, t: u64) -> bool {
        self.q.borrow().front().map(|x| x.0) == Some(t)
    }
    fn set_waker(&self, t: u64, w: &Waker) {
        if let Some(e) = self.q.borrow_mut().iter_mut().find(|e| e.0 == t) {
            e.1 = Some(w.clone());
        }
    }
    fn leave(&self, t: u64) {
        let mut q = self.q.borrow_mut();
        if let Some(i) = q.iter().position(|e| e.0 == t) {
            q.remove(i);
        }
        let w = q.front_mut().and_then(|e| e.1.take());
        drop(q);
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// Removes the ticket if the waiting future is dropped (e.g. by a timeout).
struct Ticket<'a>(&'a Queue, u64);
impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// A FIFO async lock.
#[derive(Default)]
pub struct Lock {
    held: Cell<bool>,
    waiters: Queue,
}

pub struct LockGuard<'a>(&'a Lock);

impl Lock {
    pub async fn lock(&self) -> LockGuard<'_> {
        let t = Ticket(&self.waiters, self.waiters.join());
        poll_fn(|cx| {
            if !self.held.get() && self.waiters.is_head(t.1) {
                self.held.set(true);
                return Poll::Ready(());
            }
            self.waiters.set_waker(t.1, cx.waker());
            Poll::Pending
        })
        .await;
        drop(t); // leaves the queue; the next waiter retries once we release
        LockGuard(self)
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.0.held.set(false);
        let w = self
            .0
            .waiters
            .q
            .borrow_mut()
            .front_mut()
            .and_then(|e| e.1.take());
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// A byte budget: `acquire(n)` waits (FIFO) until `n` units are free. Requests larger than the
/// whole budget are clamped to it, so they run alone instead of never.
pub struct Budget {
    total: u64,
    free: Cell<u64>,
    waiters: Queue,
    idle: RefCell<Vec<Waker>>,
    /// When the last permit came back (or the budget was made).
    idle_since: Cell<Instant>,
}

/// Units held until dropped; owns an `Rc` so it can move into a spawned task.
pub struct Permit {
    b: Rc<Budget>,
    n: u64,
}

impl Budget {
    pub fn new(total: u64) -> Budget {
        Budget {
            total,
            free: Cell::new(total),
            waiters: Queue::default(),
            idle: RefCell::new(Vec::new()),
            idle_since: Cell::new(Instant::now()),
        }
    }

    /// Since when no permit has been held; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        (self.free.get() == self.total).then(|| self.idle_since.get())
    }

    pub async fn acquire(self: &Rc<Self>, n: u64) -> Permit {
        let n = n.min(self.total);
        let t = Ticket(&self.waiters, self.waiters.join());
        poll_fn(|cx| {
            if self.free.get() >= n && self.waiters.is_head(t.1) {
                self.free.set(self.free.get() - n);
                return Poll::Ready(());
            }
            self.waiters.set_waker(t.1, cx.waker());
            Poll::Pending
        })
        .await;
        drop(t);
        Permit { b: self.clone(), n }
    }

    /// Wait until every permit has been returned.
    pub async fn idle(&self) {
        poll_fn(|cx| {
            if self.free.get() == self.total {
                return Poll::Ready(());
            }
            self.idle.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let b = &self.b;
        b.free.set(b.free.get() + self.n);
        let w = b
            .waiters
            .q
            .borrow_mut()
            .front_mut()
            .and_then(|e| e.1.take());
        if let Some(w) = w {
            w.wake();
        }
        if b.free.get() == b.total {
            b.idle_since.set(Instant::now());
            for w in b.idle.borrow_mut().drain(..) {
                w.wake();
            }
        }
    }
}

/// A notification that wakes every current waiter.
#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
    /// Resolves at the next `notify_all` after this call.
    pub async fn notified(&self) {
        let start = self.epoch.get();
        poll_fn(|cx| {
            if self.epoch.get() != start {
                return Poll::Ready(());
            }
            self.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Runtime, spawn};

    #[test]
    fn lock_is_fifo_and_budget_blocks() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let l = Rc::new(Lock::default());
            let order = Rc::new(RefCell::new(Vec::new()));
            let g = l.lock().await;
            let mut hs = vec![];
            for i in 0..3 {
                let (l, o) = (l.clone(), order.clone());
                hs.push(spawn(async move {
                    let _g = l.lock().await;
                    o.borrow_mut().push(i);
                    crate::fs::nop().await.unwrap();
                }));
            }
            crate::fs::nop().await.unwrap();
            assert!(order.borrow().is_empty());
            drop(g);
            for h in hs {
                h.await;
            }
            assert_eq!(*order.borrow(), vec![0, 1, 2]);

            let b = Rc::new(Budget::new(10));
            let p = b.acquire(8).await;
            let b2 = b.clone();
            let h = spawn(async move {
                let _p = b2.acquire(5).await;
            });
            crate::fs::nop().await.unwrap();
            assert!(!h.is_finished());
            drop(p);
            h.await;
            let t0 = b.idle_since().unwrap();
            let big = b.acquire(1000).await; // clamped: runs alone
            assert_eq!(b.free.get(), 0);
            assert_eq!(b.idle_since(), None);
            drop(big);
            assert!(b.idle_since().unwrap() >= t0);
        });
    }
}

//! A byte budget shared across threads: the server-wide cap on what the requests of every
//! connection, on every worker thread, may hold at once. [`rt::local::Budget`] is the
//! per-connection one and needs no lock; this one counts under a mutex that also holds the
//! waiters, in arrival order. A permit dropped on one thread wakes the waiter at the head on
//! whichever thread it runs (`rt` wakers are `Send`, and wake a loop sleeping in the kernel).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

pub struct SharedBudget {
    total: u64,
    state: Mutex<State>,
}

struct State {
    free: u64,
    next_ticket: u64,
    /// Waiting acquirers in arrival order; only the head may take units.
    waiters: VecDeque<(u64, Option<Waker>)>,
}

/// Units held until dropped (on any thread).
pub struct SharedPermit {
    b: Arc<SharedBudget>,
    n: u64,
}

impl SharedBudget {
    pub fn new(total: u64) -> Arc<SharedBudget> {
        Arc::new(SharedBudget {
            total,
            state: Mutex::new(State {
                free: total,
                next_ticket: 0,
                waiters: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Units not held by any permit.
    pub fn available(&self) -> u64 {
        self.lock().free
    }

    /// Wait (first come, first served) until `n` units are free and take them. More than the
    /// whole budget is clamped to it: such a request runs alone instead of never.
    pub async fn acquire(self: &Arc<Self>, n: u64) -> SharedPermit {
        let n = n.min(self.total);
        let ticket = {
            let mut s = self.lock();
            if s.waiters.is_empty() && s.free >= n {
                s.free -= n;
                return SharedPermit { b: self.clone(), n };
            }
            let t = s.next_ticket;
            s.next_ticket += 1;
            s.waiters.push_back((t, None));
            t
        };
        let mut queued = Queued {
            b: self,
            ticket,
            served: false,
        };
        poll_fn(|cx| {
            let mut s = self.lock();
            if s.free >= n && s.waiters.front().map(|w| w.0) == Some(ticket) {
                s.free -= n;
                s.waiters.pop_front();
                queued.served = true; // out of the queue: nothing left for the guard
                self.wake_head(s); // there may be room for the next one too
                return Poll::Ready(());
            }
            if let Some(w) = s.waiters.iter_mut().find(|w| w.0 == ticket) {
                w.1 = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await;
        SharedPermit { b: self.clone(), n }
    }

    /// Wake the waiter at the head of the queue, if it is waiting.
    fn wake_head(&self, mut s: MutexGuard<'_, State>) {
        let w = s.waiters.front_mut().and_then(|w| w.1.take());
        drop(s);
        if let Some(w) = w {
            w.wake();
        }
    }
}

/// Takes a waiter's ticket out of the queue if its future is dropped before it got its units.
struct Queued<'a> {
    b: &'a SharedBudget,
    ticket: u64,
    served: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        let mut s = self.b.lock();
        if let Some(i) = s.waiters.iter().position(|w| w.0 == self.ticket) {
            s.waiters.remove(i);
        }
        self.b.wake_head(s);
    }
}

impl Drop for SharedPermit {
    fn drop(&mut self) {
        let mut s = self.b.lock();
        s.free += self.n;
        self.b.wake_head(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rt::{Runtime, spawn};
    use std::time::Duration;

    #[test]
    fn waits_in_order_and_is_woken_from_another_thread() {
        let b = SharedBudget::new(10);
        let held = Runtime::new().unwrap().block_on(b.acquire(8));
        assert_eq!(b.available(), 2);
        // The permit goes back on another thread while this one's loop sleeps in the kernel.
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        let rt = Runtime::new().unwrap();
        let order = rt.block_on(async {
            let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let mut hs = Vec::new();
            for (i, n) in [(0, 5), (1, 1), (2, 4)] {
                let (b, o) = (b.clone(), order.clone());
                hs.push(spawn(async move {
                    let p = b.acquire(n).await;
                    o.borrow_mut().push(i);
                    rt::time::sleep(Duration::from_millis(10)).await;
                    drop(p);
                }));
                rt::fs::nop().await.unwrap(); // queue them in this order
            }
            for h in hs {
                h.await;
            }
            order.take()
        });
        t.join().unwrap();
        // 5 waits for the permit, and 1 waits behind it though 2 units were free: first come,
        // first served.
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(b.available(), 10);
    }

    #[test]
    fn a_dropped_waiter_leaves_the_queue_and_oversized_requests_are_clamped() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let b = SharedBudget::new(10);
            let p = b.acquire(10).await;
            assert_eq!(
                rt::time::timeout(Duration::from_millis(10), b.acquire(3))
                    .await
                    .err(),
                Some(rt::time::Elapsed)
            );
            drop(p);
            let big = b.acquire(1000).await; // clamped to 10: runs alone
            assert_eq!(b.available(), 0);
            drop(big);
            let _small = b.acquire(3).await; // the timed-out waiter is not in the way
            assert_eq!(b.available(), 7);
        });
    }
}

//! Single-thread synchronisation for tasks of one runtime: an unbounded channel and a oneshot.
//! No atomics or locks: everything here is `!Send` and lives on the loop's thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

struct Chan<T> {
    queue: VecDeque<T>,
    rx_waker: Option<Waker>,
    senders: usize,
    rx_alive: bool,
}

/// Sending half of [`channel`].
pub struct Sender<T>(Rc<RefCell<Chan<T>>>);
/// Receiving half of [`channel`].
pub struct Receiver<T>(Rc<RefCell<Chan<T>>>);

/// An unbounded multi-producer single-consumer channel.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let c = Rc::new(RefCell::new(Chan {
        queue: VecDeque::new(),
        rx_waker: None,
        senders: 1,
        rx_alive: true,
    }));
    (Sender(c.clone()), Receiver(c))
}

impl<T> Sender<T> {
    /// Queue `v`; gives it back if the receiver is gone.
    pub fn send(&self, v: T) -> Result<(), T> {
        let mut c = self.0.borrow_mut();
        if !c.rx_alive {
            return Err(v);
        }
        c.queue.push_back(v);
        if let Some(w) = c.rx_waker.take() {
            drop(c);
            w.wake();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.borrow_mut().senders += 1;
        Sender(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut c = self.0.borrow_mut();
        c.senders -= 1;
        if c.senders == 0
            && let Some(w) = c.rx_waker.take()
        {
            drop(c);
            w.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next value; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut c = self.0.borrow_mut();
            if let Some(v) = c.queue.pop_front() {
                return Poll::Ready(Some(v));
            }
            if c.senders == 0 {
                return Poll::Ready(None);
            }
            c.rx_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// A value if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        self.0.borrow_mut().queue.pop_front()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut c = self.0.borrow_mut();
        c.rx_alive = false;
        c.queue.clear();
    }
}

/// A one-value channel: `oneshot()` gives the sender and the receiver future.
pub fn oneshot<T>() -> (OneshotSender<T>, OneshotReceiver<T>) {
    let (tx, rx) = channel();
    (OneshotSender(tx), OneshotReceiver(rx))
}

pub struct OneshotSender<T>(Sender<T>);
pub struct OneshotReceiver<T>(Receiver<T>);

impl<T> OneshotSender<T> {
    pub fn send(self, v: T) -> Result<(), T> {
        self.0.send(v)
    }
}

impl<T> OneshotReceiver<T> {
    /// The value, or `None` if the sender was dropped without sending.
    pub async fn recv(mut self) -> Option<T> {
        self.0.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Runtime, spawn};

    #[test]
    fn channel_delivers_in_order_and_closes() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let (tx, mut rx) = channel();
            let tx2 = tx.clone();
            spawn(async move {
                for i in 0..3 {
                    tx.send(i).unwrap();
                    crate::fs::nop().await.unwrap();
                }
            });
            drop(tx2);
            let mut got = vec![];
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            assert_eq!(got, vec![0, 1, 2]);
        });
    }

    #[test]
    fn oneshot_dropped_sender_gives_none() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let (tx, rx) = oneshot::<u8>();
            drop(tx);
            assert_eq!(rx.recv().await, None);
            let (tx, rx) = oneshot();
            tx.send(5).unwrap();
            assert_eq!(rx.recv().await, Some(5));
        });
    }
}

/// A one-way flag another thread can raise, awaited on a runtime (`Send + Sync`). Raising it
/// wakes the waiting loop even when it sleeps in the kernel (through the runtime's eventfd).
#[derive(Clone, Default)]
pub struct Signal(std::sync::Arc<std::sync::Mutex<(bool, Option<Waker>)>>);

impl Signal {
    pub fn new() -> Signal {
        Signal::default()
    }
    /// Raise the flag and wake the waiter.
    pub fn raise(&self) {
        let w = {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            g.0 = true;
            g.1.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
    pub fn is_raised(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0
    }
    /// Wait until raised.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if g.0 {
                return Poll::Ready(());
            }
            g.1 = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod signal_tests {
    use super::*;
    use crate::Runtime;

    #[test]
    fn signal_from_another_thread_ends_the_wait() {
        let rt = Runtime::new().unwrap();
        let s = Signal::new();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(30));
            s2.raise();
        });
        rt.block_on(s.wait());
        assert!(s.is_raised());
        t.join().unwrap();
    }
}

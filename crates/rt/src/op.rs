//! One io_uring operation as a future.
//!
//! # The buffer-lifetime invariant
//! An SQE carries raw pointers (buffers, timespecs, sockaddrs) that the kernel dereferences at any
//! moment until the operation's completion is reaped. Every such pointer must point into memory
//! owned, directly or through an `Rc`, by the op's `data` (`T`), and that memory must not move when
//! `T` moves (heap allocations, never inline arrays). The `Op` holds `data` while it waits; if the
//! `Op` is dropped before its completion, `data` moves into the slot as `Lifecycle::Ignored` and is
//! freed only when the completion arrives. If the runtime is dropped with ops still in flight it
//! cancels them and waits; if they still do not finish it leaks their memory rather than free it
//! (`Runtime::drop`). So no future can free memory the kernel may still write.
//!
//! # The aliasing invariant
//! Keeping memory alive is not enough when an op borrows a buffer (`read_at(&mut buf)`): dropping
//! or forgetting the future ends the borrow, and the caller could then read bytes the kernel is
//! still writing. So the data of such an op also holds a lend of the buffer (`buf::Lend`), which
//! makes `IoBuf`'s CPU accessors panic until the data is dropped, that is until the completion
//! (or never, if the data is leaked). `Op::submit`'s contract covers this too: the CPU must not
//! touch memory the kernel may write while the op is in flight, however the future ends.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::squeue;

use crate::runtime::{Inner, current};

pub(crate) enum Lifecycle {
    /// Submitted; the waker of whoever polled last.
    Pending(Option<Waker>),
    /// Completed with (res, flags); waiting for the future to pick it up.
    Done(i32, u32),
    /// The future was dropped; keep its resources until the kernel is done.
    Ignored(#[allow(dead_code)] Box<dyn Any>), // held, never read: it keeps memory alive
    /// A multishot op: completions queue up until polled.
    Multi(VecDeque<(i32, u32)>, Option<Waker>),
}

/// The outcome of an op: the kernel's result (negative errno on failure), CQE flags, and the
/// resources handed back.
pub struct Completion<T> {
    pub result: i32,
    pub flags: u32,
    pub data: T,
}

impl<T> Completion<T> {
    /// `result` as `io::Result`: a negative value becomes the matching OS error.
    pub fn io_result(&self) -> io::Result<u32> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as u32)
        }
    }
}

/// A submitted single-shot op. `T` owns everything the SQE points to.
pub struct Op<T: 'static> {
    rt: Rc<Inner>,
    key: usize,
    data: Option<T>,
}

impl<T: 'static> Op<T> {
    /// Queue `entry` on the current thread's ring (submitted at the next loop turn).
    ///
    /// # Safety
    /// Every pointer in `entry` must point into heap memory owned by `data` (see module docs), or
    /// into memory that outlives the runtime. Until the completion, whether or not this `Op` is
    /// dropped or forgotten, no CPU access may race with the kernel's: nothing reads or writes
    /// bytes the op makes the kernel write, nor writes bytes it makes the kernel read (for an
    /// `IoBuf`, put the matching `Lend` in `data`).
    pub unsafe fn submit(entry: squeue::Entry, data: T) -> Op<T> {
        let rt = current();
        let key = rt.ops.borrow_mut().insert(Lifecycle::Pending(None));
        let entry = entry.user_data(key as u64);
        // SAFETY: forwarded from the caller.
        unsafe { rt.push(&entry) };
        Op {
            rt,
            key,
            data: Some(data),
        }
    }
}

impl<T: 'static + Unpin> Future for Op<T> {
    type Output = Completion<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion<T>> {
        let mut ops = self.rt.ops.borrow_mut();
        let slot = ops.get_mut(self.key).expect("op slot vanished");
        match slot {
            Lifecycle::Done(res, flags) => {
                let (result, flags) = (*res, *flags);
                ops.remove(self.key);
                drop(ops);
                let data = self.data.take().expect("op polled after completion");
                Poll::Ready(Completion {
                    result,
                    flags,
                    data,
                })
            }
            Lifecycle::Pending(w) => {
                match w {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            _ => unreachable!("single-shot op in multishot state"),
        }
    }
}

impl<T: 'static> Drop for Op<T> {
    fn drop(&mut self) {
        let Some(data) = self.data.take() else { return };
        let mut ops = self.rt.ops.borrow_mut();
        match ops.get_mut(self.key) {
            Some(Lifecycle::Done(..)) => {
                ops.remove(self.key);
            }
            Some(slot @ Lifecycle::Pending(_)) => {
                *slot = Lifecycle::Ignored(Box::new(data));
                drop(ops);
                // Nobody wants the result: ask the kernel to end it early (a timer would
                // otherwise stay armed for its whole duration). Ops that cannot be cancelled
                // just complete normally; either way the slot keeps `data` until then.
                let e = io_uring::opcode::AsyncCancel::new(self.key as u64)
                    .build()
                    .user_data(crate::runtime::IGNORED_USER_DATA);
                // SAFETY: a cancel request carries no pointers.
                unsafe { self.rt.push(&e) };
            }
            // The runtime gave up on its in-flight ops and leaked them (this future outlived
            // it): the kernel may still use `data`, so leak it too.
            None => std::mem::forget(data),
            _ => {}
        }
    }
}

/// An op on memory it does not own (a caller's `&mut [u8]`, as a format library hands its
/// storage layer). Owning the memory is impossible, so dropping the future instead waits, right
/// there, for the kernel to let go of it: the op is cancelled and this thread's ring is driven
/// until its completion arrives. The borrow therefore outlives the kernel's use of the memory
/// however the future ends, except by being leaked (`mem::forget`), which the unsafe
/// constructors' callers rule out.
pub struct BorrowOp<T: 'static> {
    op: Op<T>,
}

impl<T: 'static> BorrowOp<T> {
    /// Queue `entry`; like [`Op::submit`], with memory the op only borrows.
    ///
    /// # Safety
    /// As for [`Op::submit`], except that pointers may point into memory `data` does not own
    /// when that memory stays valid, and untouched by the CPU where the kernel writes it, until
    /// this `BorrowOp` completes or is dropped; and it must not be leaked. (Dropped after its
    /// runtime gave up on its ops, it aborts the process: the memory cannot be waited for.)
    pub unsafe fn submit(entry: squeue::Entry, data: T) -> BorrowOp<T> {
        // SAFETY: forwarded from the caller; `Drop` below keeps the borrow alive.
        BorrowOp {
            op: unsafe { Op::submit(entry, data) },
        }
    }
}

impl<T: 'static + Unpin> Future for BorrowOp<T> {
    type Output = Completion<T>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Completion<T>> {
        Pin::new(&mut self.op).poll(cx)
    }
}

impl<T: 'static> Drop for BorrowOp<T> {
    fn drop(&mut self) {
        let op = &self.op;
        if op.data.is_none() {
            return; // completed and taken
        }
        match op.rt.ops.borrow().get(op.key) {
            Some(Lifecycle::Pending(_)) => {}
            Some(_) => return, // done: `op` frees the slot
            None => {
                // The runtime gave up on its ops and leaked them, so this op outlived it: the
                // kernel may still write memory whose owner is about to get it back, and there
                // is no ring left to wait on. Nothing sound remains to do.
                eprintln!("rt: a BorrowOp outlived its runtime; aborting");
                std::process::abort();
            }
        }
        op.rt.cancel_and_wait(op.key);
        // `op` now finds its slot done and frees it.
    }
}

/// A submitted multishot op (e.g. multishot accept): yields one completion per `next()`.
pub struct MultiOp<T: 'static> {
    rt: Rc<Inner>,
    key: usize,
    data: Option<T>,
    finished: bool,
}

impl<T: 'static> MultiOp<T> {
    /// # Safety
    /// As for [`Op::submit`].
    pub unsafe fn submit(entry: squeue::Entry, data: T) -> MultiOp<T> {
        let rt = current();
        let key = rt
            .ops
            .borrow_mut()
            .insert(Lifecycle::Multi(VecDeque::new(), None));
        let entry = entry.user_data(key as u64);
        // SAFETY: forwarded from the caller.
        unsafe { rt.push(&entry) };
        MultiOp {
            rt,
            key,
            data: Some(data),
            finished: false,
        }
    }

    /// The next completion as (res, flags); `None` once the kernel ended the multishot.
    pub async fn next(&mut self) -> Option<(i32, u32)> {
        if self.finished {
            return None;
        }
        std::future::poll_fn(|cx| {
            let mut ops = self.rt.ops.borrow_mut();
            let Some(Lifecycle::Multi(q, w)) = ops.get_mut(self.key) else {
                unreachable!()
            };
            if let Some((res, flags)) = q.pop_front() {
                if !io_uring::cqueue::more(flags) {
                    self.finished = true;
                }
                return Poll::Ready(Some((res, flags)));
            }
            *w = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

impl<T: 'static> Drop for MultiOp<T> {
    fn drop(&mut self) {
        let data = self.data.take();
        let mut ops = self.rt.ops.borrow_mut();
        let ended = match ops.get(self.key) {
            Some(Lifecycle::Multi(q, _)) => q.iter().any(|(_, f)| !io_uring::cqueue::more(*f)),
            // The runtime leaked its in-flight ops (see `Op::drop`).
            None if !self.finished => {
                std::mem::forget(data);
                return;
            }
            _ => true,
        };
        if self.finished || ended {
            ops.try_remove(self.key);
            return;
        }
        // Still armed in the kernel: cancel it and keep its data until the final completion.
        if let Some(slot) = ops.get_mut(self.key) {
            *slot = Lifecycle::Ignored(Box::new(data));
        }
        drop(ops);
        let e = io_uring::opcode::AsyncCancel::new(self.key as u64)
            .build()
            .user_data(crate::runtime::IGNORED_USER_DATA);
        // SAFETY: a cancel request carries no pointers.
        unsafe { self.rt.push(&e) };
    }
}

//! Run-time choice of target without boxing per request: an enum per level, each method a match.
//! The exception is a filter (`--filter delay:...`): it wraps another `AnyTarget`, so its queue's
//! futures recurse through `AnyQueue` and are boxed, one allocation per request, only on devices
//! that use a filter. Unfiltered devices keep the allocation-free path.

use std::io;

use nbd::client::{NbdQueue, NbdTarget};
use targets::file::{FileQueue, FileTarget};
use targets::filter::delay::{Delay, DelayQueue};
use targets::mem::{MemQueue, MemTarget};
use targets::null::{NullQueue, NullTarget};
use targets::{Extent, Geometry, IoBuf, Target, TargetQueue};

pub enum AnyTarget {
    Null(NullTarget),
    Mem(MemTarget),
    File(FileTarget),
    Nbd(NbdTarget),
    Delay(Box<Delay<AnyTarget>>),
}

pub enum AnyQueue {
    Null(NullQueue),
    Mem(MemQueue),
    File(FileQueue),
    Nbd(NbdQueue),
    Delay(Box<DelayQueue<AnyQueue>>),
}

impl AnyTarget {
    /// How many queues (ublk queues, NBD export threads) the target can serve: an NBD server
    /// without multi-conn allows one; every other target has no limit.
    pub fn max_queues(&self) -> usize {
        match self {
            AnyTarget::Nbd(t) => t.max_queues(),
            AnyTarget::Delay(t) => t.inner().max_queues(),
            _ => usize::MAX,
        }
    }

    /// How the target moves data, for the log (one line each).
    pub fn notes(&self) -> Vec<String> {
        match self {
            AnyTarget::File(t) => {
                let (on, why) = t.inline_io();
                vec![format!(
                    "{}: {} ({why})",
                    t.path().display(),
                    if on {
                        "reads and writes inline on the queue threads"
                    } else {
                        "reads and writes through io_uring"
                    }
                )]
            }
            AnyTarget::Delay(t) => t.inner().notes(),
            _ => Vec::new(),
        }
    }
}

impl Target for AnyTarget {
    type Queue = AnyQueue;
    fn geometry(&self) -> Geometry {
        match self {
            AnyTarget::Null(t) => t.geometry(),
            AnyTarget::Mem(t) => t.geometry(),
            AnyTarget::File(t) => t.geometry(),
            AnyTarget::Nbd(t) => t.geometry(),
            AnyTarget::Delay(t) => t.geometry(),
        }
    }
    fn open_queue(&self, qid: u16) -> io::Result<AnyQueue> {
        Ok(match self {
            AnyTarget::Null(t) => AnyQueue::Null(t.open_queue(qid)?),
            AnyTarget::Mem(t) => AnyQueue::Mem(t.open_queue(qid)?),
            AnyTarget::File(t) => AnyQueue::File(t.open_queue(qid)?),
            AnyTarget::Nbd(t) => AnyQueue::Nbd(t.open_queue(qid)?),
            AnyTarget::Delay(t) => AnyQueue::Delay(Box::new(t.open_queue(qid)?)),
        })
    }
}

macro_rules! each {
    ($self:ident, $q:ident => $e:expr_2021) => {
        match $self {
            AnyQueue::Null($q) => $e,
            AnyQueue::Mem($q) => $e,
            AnyQueue::File($q) => $e,
            AnyQueue::Nbd($q) => $e,
            // Recursive (the filter's inner queue is an AnyQueue): box the future to give it a size.
            AnyQueue::Delay($q) => Box::pin(async move { $e }).await,
        }
    };
}

impl TargetQueue for AnyQueue {
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        each!(self, q => q.read(off, buf).await)
    }
    async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> io::Result<()> {
        each!(self, q => q.write(off, buf, fua).await)
    }
    async fn flush(&self) -> io::Result<()> {
        each!(self, q => q.flush().await)
    }
    async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        each!(self, q => q.discard(off, len).await)
    }
    async fn write_zeroes(&self, off: u64, len: u64, unmap: bool) -> io::Result<()> {
        each!(self, q => q.write_zeroes(off, len, unmap).await)
    }
    async fn block_status(&self, off: u64, len: u64) -> io::Result<Vec<Extent>> {
        each!(self, q => q.block_status(off, len).await)
    }
}

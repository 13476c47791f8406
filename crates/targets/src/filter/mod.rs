//! Filters: layers between a frontend and a target, in the spirit of nbdkit's filters. Every
//! method of [`Filter`] and [`FilterQueue`] passes through to the layer below (`next`) unless the
//! filter says otherwise, so a filter is only the few lines that differ, and one that does not
//! care about DISCARD cannot break it. [`Filtered`] stacks a filter on a target and is a target
//! itself, so filters stack on filters.
//!
//! A filter is `Send + Sync` (one per device, shared by its queues, like a target); its
//! [`FilterQueue`] is per queue and lives on that queue's thread, so per-queue state needs no
//! lock. State shared by every queue (a device-wide rate limit) lives in the `Filter`.

use std::io;

use crate::{Extent, Geometry, IoBuf, Target, TargetQueue};

pub mod delay;
pub mod error;
pub mod rate;
pub mod readonly;

/// The device-wide part of a filter.
pub trait Filter: Send + Sync + 'static {
    type Queue: FilterQueue + 'static;
    /// What the layer above sees, given what the layer below offers.
    fn geometry(&self, next: Geometry) -> Geometry {
        next
    }
    /// How many queues the stack can serve, given the layer below's limit.
    fn max_queues(&self, next: usize) -> usize {
        next
    }
    /// Lines for the log, given the layer below's.
    fn notes(&self, next: Vec<String>) -> Vec<String> {
        next
    }
    /// Per-queue part; called on the queue's own thread.
    fn open_queue(&self, qid: u16) -> io::Result<Self::Queue>;
}

/// The per-queue part of a filter: each request and the layer below to pass it to.
pub trait FilterQueue {
    async fn read<N: TargetQueue>(&self, next: &N, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        next.read(off, buf).await
    }
    async fn write<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        buf: &IoBuf,
        fua: bool,
    ) -> io::Result<()> {
        next.write(off, buf, fua).await
    }
    async fn flush<N: TargetQueue>(&self, next: &N) -> io::Result<()> {
        next.flush().await
    }
    async fn discard<N: TargetQueue>(&self, next: &N, off: u64, len: u64) -> io::Result<()> {
        next.discard(off, len).await
    }
    async fn write_zeroes<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        len: u64,
        unmap: bool,
    ) -> io::Result<()> {
        next.write_zeroes(off, len, unmap).await
    }
    async fn block_status<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        len: u64,
    ) -> io::Result<Vec<Extent>> {
        next.block_status(off, len).await
    }
}

/// `filter` stacked on `next`: a target.
pub struct Filtered<F, T> {
    pub filter: F,
    pub next: T,
}

impl<F: Filter, T: Target> Target for Filtered<F, T> {
    type Queue = FilteredQueue<F::Queue, T::Queue>;
    fn geometry(&self) -> Geometry {
        self.filter.geometry(self.next.geometry())
    }
    fn open_queue(&self, qid: u16) -> io::Result<Self::Queue> {
        Ok(FilteredQueue {
            filter: self.filter.open_queue(qid)?,
            next: self.next.open_queue(qid)?,
        })
    }
    fn max_queues(&self) -> usize {
        self.filter.max_queues(self.next.max_queues())
    }
    fn notes(&self) -> Vec<String> {
        self.filter.notes(self.next.notes())
    }
    fn resize(&self, size: u64) -> io::Result<()> {
        self.next.resize(size)
    }
    fn backing_size(&self) -> io::Result<Option<u64>> {
        self.next.backing_size()
    }
}

/// One queue of a [`Filtered`].
pub struct FilteredQueue<FQ, Q> {
    filter: FQ,
    next: Q,
}

impl<FQ: FilterQueue, Q: TargetQueue> TargetQueue for FilteredQueue<FQ, Q> {
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        self.filter.read(&self.next, off, buf).await
    }
    async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> io::Result<()> {
        self.filter.write(&self.next, off, buf, fua).await
    }
    async fn flush(&self) -> io::Result<()> {
        self.filter.flush(&self.next).await
    }
    async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        self.filter.discard(&self.next, off, len).await
    }
    async fn write_zeroes(&self, off: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.filter.write_zeroes(&self.next, off, len, unmap).await
    }
    async fn block_status(&self, off: u64, len: u64) -> io::Result<Vec<Extent>> {
        self.filter.block_status(&self.next, off, len).await
    }
}

/// An error as an `io::Error` from its errno.
pub(crate) fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

//! Targets: where a device's blocks live. A [`Target`] is opened once per device and once per
//! queue ([`Target::open_queue`]), so the data path of one queue needs no lock; state shared by
//! all queues (the mem target's RAM) says so where it lives.
//!
//! Frontends (the ublk queue, the NBD server) drive targets; targets know nothing of frontends.
//! Filters ([`filter`]) wrap a target and are targets themselves. How the command line names
//! them and their options is in [`kind`].

#![allow(async_fn_in_trait)] // our futures are !Send on purpose: one runtime per thread.

use std::io;

pub use filter::{Filter, FilterQueue, Filtered};
pub use kind::{FilterKind, Info, Opt, TargetKind};
pub use rt::IoBuf;

pub mod file;
pub mod filter;
pub mod kind;
pub mod mem;
pub mod null;
pub mod qcow2;
pub mod size;

/// Why a target could not be opened; the message is one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

/// What a target can do, advertised to the kernel or to NBD clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Caps {
    /// Writes may sit in a volatile cache: the frontend must forward FLUSH.
    pub flush: bool,
    /// Per-write durability (FUA) is implemented natively.
    pub fua: bool,
    pub discard: bool,
    pub write_zeroes: bool,
    pub read_only: bool,
    pub rotational: bool,
    /// The target reads or writes the bytes with the CPU (rules out zero-copy buffers).
    pub needs_cpu_access: bool,
    /// The target drops written data and reads zeroes (null): in user-copy mode nobody needs
    /// to move a write's data at all (a read's zeroes still go to the request).
    #[serde(default)]
    pub ignores_data: bool,
    /// Handed a buffer the CPU can reach, the target does the I/O inline (blocking calls on the
    /// queue thread), because its io_uring path would pass every request to a kernel worker
    /// thread (a file on tmpfs). A frontend using zero-copy buffers should then still hand it
    /// a CPU buffer when its queue is shallow: there the hand-off is most of a request's time.
    #[serde(default)]
    pub inline_io: bool,
    /// Several connections/queues see each other's completed writes and flushes cover all of
    /// them (NBD multi-conn).
    pub consistent_across_queues: bool,
}

/// Size and block sizes of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    /// Bytes; a multiple of `logical_block`.
    pub size: u64,
    pub logical_block: u32,
    pub physical_block: u32,
    pub caps: Caps,
}

/// Most extents one [`TargetQueue::block_status`] answer may hold. A frontend charges its memory
/// budget for this many, so a target with more to say stops here and answers a prefix.
pub const MAX_EXTENTS: usize = 1024;

/// One run of blocks with the same allocation state (for NBD BLOCK_STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated (reads as zero unless `zero` says otherwise).
    pub hole: bool,
    /// Known to read as zeroes.
    pub zero: bool,
}

/// A device-wide target. `Send + Sync`: queues on other threads open from it.
pub trait Target: Send + Sync + 'static {
    type Queue: TargetQueue + 'static;
    fn geometry(&self) -> Geometry;
    /// Per-queue handle; called on the queue's own thread.
    fn open_queue(&self, qid: u16) -> io::Result<Self::Queue>;
    /// How many queues (ublk queues, NBD export threads) the target can serve at once.
    fn max_queues(&self) -> usize {
        usize::MAX
    }
    /// How the target moves data, for the log (one line each).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Serve `size` bytes from now on (online resize; `geometry()` then reports it). Called
    /// while queues serve requests, before the frontend announces the new size, so no request
    /// beyond the old size arrives before this returns. Only growing is asked for. Targets that
    /// cannot follow refuse with EOPNOTSUPP; the message of any other error is one line.
    fn resize(&self, _size: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
    /// The size the target's backing has now (the file's length, the NBD server's export, the
    /// RBD image), rounded down to whole blocks: what a resize without a given size follows,
    /// after the backing grew elsewhere. `None` for resizable targets with nothing behind them
    /// (null, mem); EOPNOTSUPP for targets that cannot be resized. May block (a round trip to a
    /// server); never called on a queue thread.
    fn backing_size(&self) -> io::Result<Option<u64>> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
}

/// The data path of one queue. Offsets and lengths are bytes, checked against the geometry by
/// the frontend before they get here.
pub trait TargetQueue {
    /// Fill `buf` (its whole length) from `off`.
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()>;
    /// Store `buf` at `off`; with `fua`, durable before returning.
    async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> io::Result<()>;
    /// Make every completed write durable.
    async fn flush(&self) -> io::Result<()>;
    /// The range may be deallocated; reads afterwards return zeroes for our targets.
    async fn discard(&self, _off: u64, _len: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
    /// The range reads as zeroes afterwards; `unmap` allows deallocating it.
    async fn write_zeroes(&self, _off: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
    }
    /// Allocation of `[off, off+len)`, as at most [`MAX_EXTENTS`] extents covering at least a
    /// prefix of it.
    async fn block_status(&self, _off: u64, len: u64) -> io::Result<Vec<Extent>> {
        Ok(vec![Extent {
            len,
            hole: false,
            zero: false,
        }])
    }
}

/// EINVAL for requests outside the device.
pub fn check_range(geo: &Geometry, off: u64, len: u64) -> io::Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= geo.size => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// The block size of targets with no storage to follow (null, mem).
pub(crate) const LOGICAL_BLOCK: Opt = Opt::new(
    "logical-block",
    kind::Value::Size,
    "BYTES",
    "logical block size: 512 (default), 1024, 2048 or 4096",
);

pub(crate) fn default_block() -> u32 {
    512
}

/// A size and block size a target without storage can serve.
pub(crate) fn check_size(size: u64, block: u32) -> Result<(), OpenError> {
    if !matches!(block, 512 | 1024 | 2048 | 4096) {
        return Err(OpenError::Invalid(format!(
            "logical block size {block} is not one of 512, 1024, 2048, 4096"
        )));
    }
    if size == 0 {
        return Err(OpenError::Invalid("size must be greater than zero".into()));
    }
    if !size.is_multiple_of(block as u64) {
        return Err(OpenError::Invalid(format!(
            "size {size} is not a multiple of the {block}-byte block size"
        )));
    }
    Ok(())
}

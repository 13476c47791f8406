//! Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), so that a backend killed
//! with -9 and started again resubmits the requests it had taken from the rings and not
//! completed: the guest sees neither an error nor a lost write.
//!
//! The frontend asks us once for a shared memory file (GET_INFLIGHT_FD), keeps it for the
//! life of the device, and hands it to every backend it connects to (SET_INFLIGHT_FD). For
//! each queue it holds a region (split rings, the layout of the vhost-user spec):
//!
//! ```text
//! header (16 bytes): features u64, version u16 (1), desc_num u16, last_batch_head u16, used_idx u16
//! desc[desc_num], 16 bytes each: inflight u8, padding [u8; 5], next u16, counter u64
//! ```
//!
//! padded to a multiple of 64 bytes; the regions follow one another. The layout is ours to
//! choose (the frontend never reads it); this one follows the spec's so the file means the
//! same to any backend that follows it.
//!
//! The protocol, per queue:
//! - taking a chain from the available ring: `desc[head].counter = counter++`, then
//!   `desc[head].inflight = 1`, before the request goes anywhere;
//! - completing it: `desc[head].next = last_batch_head; last_batch_head = head` (a batch of
//!   one), then the used element and used index go into the ring, then
//!   `desc[head].inflight = 0` and `used_idx` = the ring's used index;
//! - starting again ([`QueueInflight::recover`]): if `used_idx` differs from the ring's, we
//!   died between publishing a completion and clearing its flag: clear `last_batch_head`'s.
//!   Every head still flagged was taken and not completed: resubmit them in counter order.
//!   The next chain to take from the available ring is `used + number in flight`.
//!
//! A crash is the death of this process only: stores already made to the shared mapping stay
//! in the file. The fields are therefore accessed as atomics (no torn or reordered stores);
//! ordering against the guest's view of the used ring is what the sequence above gives.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};

const HEADER: usize = 16;
const DESC: usize = 16;
const ALIGN: usize = 64;
const VERSION: u16 = 1;

/// Bytes of one queue's region.
pub fn queue_region_size(queue_size: u16) -> usize {
    (HEADER + DESC * queue_size as usize).next_multiple_of(ALIGN)
}

/// The whole shared file, mapped.
pub struct InflightRegion {
    ptr: *mut u8,
    len: usize,
    queue_size: u16,
    num_queues: u16,
    /// Kept so the frontend's copy and ours name the same file (and for GET_INFLIGHT_FD).
    _file: File,
}

// SAFETY: the mapping is plain shared memory. Each queue thread touches only its own queue's
// region (through atomics), and the control thread only maps and unmaps the whole file while no
// queue thread runs; `ptr` is never handed out as a Rust reference to non-atomic data.
unsafe impl Send for InflightRegion {}
// SAFETY: as above.
unsafe impl Sync for InflightRegion {}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes; every QueueInflight holds an Arc of us, so
        // none is left.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

impl InflightRegion {
    /// A new zeroed file for `num_queues` queues of `queue_size` (GET_INFLIGHT_FD). Returns the
    /// region and a duplicate of its fd for the frontend.
    pub fn create(num_queues: u16, queue_size: u16) -> io::Result<(InflightRegion, File)> {
        if num_queues == 0 || queue_size == 0 || !queue_size.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "bad inflight geometry",
            ));
        }
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"ublkd-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        let file = unsafe { File::from_raw_fd(fd) };
        let len = queue_region_size(queue_size) * num_queues as usize;
        file.set_len(len as u64)?;
        let dup = file.try_clone()?;
        Ok((
            InflightRegion::map(file, 0, len as u64, num_queues, queue_size)?,
            dup,
        ))
    }

    /// Map the frontend's file (SET_INFLIGHT_FD). Its geometry must match what its size says.
    pub fn map(
        file: File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> io::Result<InflightRegion> {
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_string());
        if num_queues == 0 || queue_size == 0 {
            return Err(bad("inflight region for no queue"));
        }
        let need = queue_region_size(queue_size) * num_queues as usize;
        if size < need as u64 || size > 1 << 30 || !offset.is_multiple_of(4096) {
            return Err(bad("inflight region of the wrong size"));
        }
        let flen = file.metadata()?.len();
        if offset.checked_add(size).is_none_or(|end| end > flen) {
            return Err(bad("inflight region past the end of its file"));
        }
        // SAFETY: a shared read-write mapping of `size` bytes of a file that holds them;
        // checked for failure below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(InflightRegion {
            ptr: p.cast(),
            len: size as usize,
            queue_size,
            num_queues,
            _file: file,
        })
    }

    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The tracker of queue `q` with `size` descriptors (at most the file's queue size).
    pub fn queue(self: &Arc<Self>, q: u16, size: u16) -> Option<QueueInflight> {
        if q >= self.num_queues || size == 0 || size > self.queue_size {
            return None;
        }
        let base = queue_region_size(self.queue_size) * q as usize;
        let t = QueueInflight {
            // SAFETY: base + region size <= len (checked in map).
            base: unsafe { self.ptr.add(base) },
            size,
            counter: 0,
            _region: self.clone(),
        };
        Some(t)
    }
}

/// One queue's view of the inflight file. Lives on that queue's thread.
pub struct QueueInflight {
    base: *mut u8,
    size: u16,
    counter: u64,
    _region: Arc<InflightRegion>,
}

// SAFETY: `base` points into a mapping `_region` keeps alive; only this value touches this
// queue's region, through atomics.
unsafe impl Send for QueueInflight {}

impl QueueInflight {
    // Field accessors. SAFETY (all): each address lies inside this queue's region (index
    // checked against `size` <= the region's desc_num) and is aligned for its type (the mapping
    // is page aligned, regions are 64-byte aligned, fields are at offsets that are multiples
    // of their size); the memory is only accessed atomically while mapped.
    fn u16_at(&self, off: usize) -> &AtomicU16 {
        unsafe { AtomicU16::from_ptr(self.base.add(off).cast()) }
    }
    fn version(&self) -> &AtomicU16 {
        self.u16_at(8)
    }
    fn desc_num(&self) -> &AtomicU16 {
        self.u16_at(10)
    }
    fn last_batch_head(&self) -> &AtomicU16 {
        self.u16_at(12)
    }
    fn used_idx(&self) -> &AtomicU16 {
        self.u16_at(14)
    }
    fn inflight(&self, head: u16) -> &AtomicU8 {
        assert!(head < self.size);
        unsafe { AtomicU8::from_ptr(self.base.add(HEADER + DESC * head as usize)) }
    }
    fn next(&self, head: u16) -> &AtomicU16 {
        assert!(head < self.size);
        self.u16_at(HEADER + DESC * head as usize + 6)
    }
    fn counter(&self, head: u16) -> &AtomicU64 {
        assert!(head < self.size);
        unsafe { AtomicU64::from_ptr(self.base.add(HEADER + DESC * head as usize + 8).cast()) }
    }

    /// Start tracking at ring start. `ring_used` is the used index in the guest's used ring.
    /// Returns the heads to resubmit, in the order they were first taken, and the index of
    /// the next chain to take from the available ring; `None` when the region is new (or of
    /// another ring size): nothing was in flight, and the caller's base holds.
    pub fn recover(&mut self, ring_used: u16) -> Option<(Vec<u16>, u16)> {
        let o = Ordering::SeqCst;
        if self.version().load(o) != VERSION || self.desc_num().load(o) != self.size {
            // Fresh (or of another size: stale after a ring resize): start clean.
            for h in 0..self.size {
                self.inflight(h).store(0, o);
                self.counter(h).store(0, o);
            }
            self.last_batch_head().store(0, o);
            self.used_idx().store(ring_used, o);
            self.desc_num().store(self.size, o);
            self.version().store(VERSION, o);
            self.counter = 0;
            return None;
        }
        let recorded = self.used_idx().load(o);
        if recorded != ring_used {
            // Died after publishing the last completion but before clearing its flag. Our
            // batches hold one element, so one more completion at most is unaccounted for.
            let gap = ring_used.wrapping_sub(recorded);
            let mut h = self.last_batch_head().load(o);
            for _ in 0..gap.min(self.size) {
                if h >= self.size {
                    break;
                }
                self.inflight(h).store(0, o);
                h = self.next(h).load(o);
            }
            self.used_idx().store(ring_used, o);
        }
        let mut heads: Vec<(u64, u16)> = (0..self.size)
            .filter(|&h| self.inflight(h).load(o) == 1)
            .map(|h| (self.counter(h).load(o), h))
            .collect();
        heads.sort_unstable();
        self.counter = heads.last().map_or(0, |&(c, _)| c + 1);
        let next_avail = ring_used.wrapping_add(heads.len() as u16);
        Some((heads.into_iter().map(|(_, h)| h).collect(), next_avail))
    }

    /// A chain was taken from the available ring (before anything is done with it).
    pub fn begin(&mut self, head: u16) {
        if head >= self.size {
            return;
        }
        self.counter(head).store(self.counter, Ordering::SeqCst);
        self.counter += 1;
        self.inflight(head).store(1, Ordering::SeqCst);
    }

    /// Before its used element is published.
    pub fn pre_complete(&self, head: u16) {
        if head >= self.size {
            return;
        }
        let o = Ordering::SeqCst;
        self.next(head).store(self.last_batch_head().load(o), o);
        self.last_batch_head().store(head, o);
    }

    /// After the used index went to `used` with this completion.
    pub fn post_complete(&self, head: u16, used: u16) {
        if head >= self.size {
            return;
        }
        self.inflight(head).store(0, Ordering::SeqCst);
        self.used_idx().store(used, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_resubmits_in_order_and_skips_what_was_published() {
        let (r, f) = InflightRegion::create(2, 8).unwrap();
        let r = Arc::new(r);
        let mut q = r.queue(1, 8).unwrap();
        assert!(q.recover(0).is_none(), "a new region has nothing in flight");
        for h in [5, 2, 7, 0] {
            q.begin(h);
        }
        // 2 completes fully; 7's used element is published but we "die" before its flag clears.
        q.pre_complete(2);
        q.post_complete(2, 1);
        q.pre_complete(7);
        drop(q);
        drop(r);
        // A new backend maps the frontend's copy of the file.
        let len = f.metadata().unwrap().len();
        let r2 = Arc::new(InflightRegion::map(f, 0, len, 2, 8).unwrap());
        let mut q2 = r2.queue(1, 8).unwrap();
        let (heads, next) = q2.recover(2).unwrap();
        assert_eq!(heads, vec![5, 0]);
        assert_eq!(next, 4, "used 2 + 2 in flight");
        // Queue 0 is untouched and fresh.
        assert!(r2.queue(0, 8).unwrap().recover(0).is_none());
        // New work counts on from the resubmitted.
        q2.begin(3);
        let (heads, _) = q2.recover(2).unwrap();
        assert_eq!(heads, vec![5, 0, 3]);
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(InflightRegion::create(0, 8).is_err());
        assert!(InflightRegion::create(1, 100).is_err());
        let (r, f) = InflightRegion::create(1, 8).unwrap();
        let r = Arc::new(r);
        assert!(r.queue(1, 8).is_none());
        assert!(r.queue(0, 16).is_none());
        assert!(InflightRegion::map(f.try_clone().unwrap(), 0, 1 << 20, 1, 8).is_err());
        assert!(InflightRegion::map(f, 0, 64, 4, 8).is_err());
    }
}

//! Provided buffers (`IORING_REGISTER_PBUF_RING`): a ring of equal buffers the kernel picks from
//! when an op with buffer select completes, naming the one it filled in the completion's flags.
//! Multishot ops need them: each completion brings its own buffer.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::cqueue;

/// `struct io_uring_buf`: one ring entry.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    /// In entry 0 this field is the ring's tail (`struct io_uring_buf_ring`).
    resv: u16,
}

/// The ring and its buffers in one page-aligned allocation, registered with a ring. The runtime
/// holds it until the ring is closed (or leaks it with the ring's other memory), so the kernel
/// never sees it freed.
pub(crate) struct PbufMem {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    count: u16,
    size: u32,
    tail: Cell<u16>,
}

impl Drop for PbufMem {
    fn drop(&mut self) {
        // SAFETY: allocated in `PbufMem::new` with this layout; dropped only after the ring that
        // knew it was closed (see `Inner`'s field order) or never (leaked).
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

impl PbufMem {
    pub(crate) fn new(count: u16, size: u32) -> io::Result<Rc<PbufMem>> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "provided buffers: count must be a power of two <= 32768, size > 0",
            ));
        }
        let ring_bytes = count as usize * std::mem::size_of::<RingEntry>();
        let total = ring_bytes + count as usize * size as usize;
        let layout = std::alloc::Layout::from_size_align(total, 4096).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "provided buffers too large")
        })?;
        // SAFETY: non-zero size (count >= 1, size >= 1).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let m = Rc::new(PbufMem {
            ptr,
            layout,
            count,
            size,
            tail: Cell::new(0),
        });
        for bid in 0..count {
            m.push(bid);
        }
        Ok(m)
    }

    pub(crate) fn ring_addr(&self) -> u64 {
        self.ptr as u64
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        let ring_bytes = self.count as usize * std::mem::size_of::<RingEntry>();
        // SAFETY: bid < count, so the offset stays inside the allocation.
        unsafe { self.ptr.add(ring_bytes + bid as usize * self.size as usize) }
    }

    /// Give buffer `bid` (back) to the kernel.
    fn push(&self, bid: u16) {
        assert!(bid < self.count);
        let tail = self.tail.get();
        let slot = (tail & (self.count - 1)) as usize;
        // SAFETY: slot < count, inside the ring part of the allocation. The kernel reads entries
        // only below the published tail, and this one is above it until the store below.
        unsafe {
            let e = self.ptr.cast::<RingEntry>().add(slot);
            (*e).addr = self.buf_ptr(bid) as u64;
            (*e).len = self.size;
            (*e).bid = bid;
        }
        let tail = tail.wrapping_add(1);
        self.tail.set(tail);
        // SAFETY: offset 14 of the ring is the u16 tail, 2-byte aligned; the kernel reads it
        // concurrently, hence atomic; Release orders the entry writes above before it.
        let t = unsafe { &*self.ptr.add(14).cast::<AtomicU16>() };
        t.store(tail, Ordering::Release);
    }
}

/// A handle to one group of provided buffers (see `Runtime::provide_buffers`).
pub struct ProvidedBufs {
    pub(crate) mem: Rc<PbufMem>,
    pub(crate) bgid: u16,
}

impl ProvidedBufs {
    /// The group id to put in an SQE's `buf_group`.
    pub fn group(&self) -> u16 {
        self.bgid
    }

    /// Size of each buffer.
    pub fn buf_size(&self) -> u32 {
        self.mem.size
    }

    /// If the completion (`res`, `flags`) carries a buffer, call `f` with its first `res` bytes
    /// and then give the buffer back to the kernel. `None` when it carries no buffer.
    ///
    /// # Safety
    /// `(res, flags)` is a completion, as the kernel posted it, of an op that selected a buffer
    /// from this group, and it is consumed at most once. Otherwise `flags` could name a buffer
    /// the kernel owns (and may be writing while `f` reads it), or give one buffer back twice
    /// (so the kernel could hand it to two completions at once).
    pub unsafe fn consume<R>(&self, res: i32, flags: u32, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let bid = cqueue::buffer_select(flags)?;
        if bid >= self.mem.count {
            return None;
        }
        let len = (res.max(0) as usize).min(self.mem.size as usize);
        // SAFETY: the kernel handed buffer `bid` to us with this completion (the caller's
        // contract) and will not touch it until `push` returns it below; `len` is within it.
        let r = f(unsafe { std::slice::from_raw_parts(self.mem.buf_ptr(bid), len) });
        self.mem.push(bid);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use crate::Runtime;
    use crate::op::MultiOp;
    use io_uring::{opcode, types};
    use std::os::fd::AsRawFd;

    /// A multishot read over a pipe delivers each write in a provided buffer, and buffers given
    /// back are picked again: more writes than buffers all arrive intact.
    #[test]
    fn multishot_read_cycles_through_provided_buffers() {
        let rt = Runtime::new().unwrap();
        let bufs = rt.provide_buffers(5, 2, 64).unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let mut w = w;
        let got = rt.block_on(async {
            let e = opcode::ReadMulti::new(types::Fd(r.as_raw_fd()), 0, bufs.group()).build();
            // SAFETY: no pointers: data lands in provided buffers, which live as long as `rt`.
            let mut op = unsafe { MultiOp::submit(e, ()) };
            let mut got = Vec::new();
            for i in 0..6u8 {
                use std::io::Write;
                w.write_all(&[i; 3]).unwrap();
                let (res, flags) = op.next().await.expect("multishot ended");
                assert!(res > 0, "read failed: {res}");
                // SAFETY: a completion of `op`, which selects from `bufs`, consumed once.
                let bytes = unsafe { bufs.consume(res, flags, |b| b.to_vec()) }.expect("no buffer");
                got.push(bytes);
            }
            got
        });
        let want: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 3]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn rejects_counts_the_kernel_cannot_take() {
        let rt = Runtime::new().unwrap();
        assert!(rt.provide_buffers(1, 3, 64).is_err());
        assert!(rt.provide_buffers(1, 4, 0).is_err());
    }
}

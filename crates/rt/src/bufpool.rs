//! A per-thread free list of heap buffer memory. Servers allocate a buffer per request (the NBD
//! server per read, the NBD client per reply); at 4 KiB and 4096-byte alignment every one went
//! through glibc's aligned-allocation path and back (a quarter of the NBD export's CPU on qcow2
//! reads, docs/bench-nbd.md). Freed blocks of a few power-of-two sizes are kept here instead and
//! handed out again zeroed, so [`crate::IoBuf::with_capacity`] keeps its promise.
//!
//! Bounded: at most [`KEEP_BYTES`] per thread; beyond that blocks go back to the allocator. A
//! block freed on another thread than the one that allocated it joins that thread's list (it is
//! plain global-allocator memory, so any thread may hand it back).

use std::alloc::Layout;
use std::cell::RefCell;
use std::ptr::NonNull;

use crate::buf::ALIGN;

/// Block sizes kept: 4 KiB, 8 KiB, ..., 128 KiB.
const CLASSES: usize = 6;
/// Most bytes one thread keeps: two connections at depth 64 of 4 KiB reads fit.
pub const KEEP_BYTES: usize = 1 << 20;

struct Pool {
    free: [Vec<NonNull<u8>>; CLASSES],
    bytes: usize,
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (c, list) in self.free.iter_mut().enumerate() {
            for p in list.drain(..) {
                // SAFETY: every kept block was allocated with exactly `layout_of(c)` and is
                // owned by the list alone.
                unsafe { std::alloc::dealloc(p.as_ptr(), layout_of(c)) };
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool { free: Default::default(), bytes: 0 });
}

fn layout_of(class: usize) -> Layout {
    Layout::from_size_align(ALIGN << class, ALIGN).expect("valid class layout")
}

/// The class serving `size` bytes, if it is small enough to be pooled.
fn class_of(size: usize) -> Option<usize> {
    let c = size.max(ALIGN).next_power_of_two().trailing_zeros() - ALIGN.trailing_zeros();
    (c < CLASSES as u32).then_some(c as usize)
}

/// The class a block of `layout` is kept in, if it is one of the classes' layouts.
fn pooled_class(layout: Layout) -> Option<usize> {
    class_of(layout.size()).filter(|&c| layout_of(c) == layout)
}

/// The layout a buffer of `size` bytes is allocated with: its class's, when pooled (so a block
/// freed by one size fits any request of its class), else `size` rounded to [`ALIGN`].
pub(crate) fn layout_for(size: usize) -> Layout {
    match class_of(size) {
        Some(c) => layout_of(c),
        None => Layout::from_size_align(size.max(1).next_multiple_of(ALIGN), ALIGN)
            .expect("buffer too large"),
    }
}

/// A block with `layout` (from [`layout_for`]) whose first `used` bytes (rounded up to
/// [`ALIGN`]) are zero, the only ones a buffer of that capacity exposes: a kept block, or a
/// new allocation (zeroed whole).
pub(crate) fn alloc_zeroed(layout: Layout, used: usize) -> NonNull<u8> {
    let kept = pooled_class(layout).and_then(|c| {
        POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            let b = p.free[c].pop();
            if b.is_some() {
                p.bytes -= layout.size();
            }
            b
        })
        .ok()
        .flatten()
    });
    if let Some(b) = kept {
        let n = used.next_multiple_of(ALIGN).min(layout.size());
        // SAFETY: a kept block of `layout.size()` >= n bytes, owned by us alone now.
        unsafe { std::ptr::write_bytes(b.as_ptr(), 0, n) };
        return b;
    }
    // SAFETY: layout has a non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// Give a block back: kept when its class has room, else freed.
///
/// # Safety
/// `p` came from [`alloc_zeroed`] with `layout`, and nothing refers to it any more.
pub(crate) unsafe fn free(p: NonNull<u8>, layout: Layout) {
    if let Some(c) = pooled_class(layout) {
        let kept = POOL
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                if pool.bytes + layout.size() > KEEP_BYTES {
                    return false;
                }
                pool.bytes += layout.size();
                pool.free[c].push(p);
                true
            })
            .unwrap_or(false);
        if kept {
            return;
        }
    }
    // SAFETY: the caller's contract: allocated with `layout`, unreferenced.
    unsafe { std::alloc::dealloc(p.as_ptr(), layout) };
}

/// Bytes this thread keeps now (for tests).
pub fn kept_bytes() -> usize {
    POOL.with(|p| p.borrow().bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_and_large_sizes_are_not_pooled() {
        assert_eq!(layout_for(1).size(), 4096);
        assert_eq!(layout_for(4096).size(), 4096);
        assert_eq!(layout_for(4097).size(), 8192);
        assert_eq!(layout_for(12 << 10).size(), 16 << 10);
        assert_eq!(layout_for(128 << 10).size(), 128 << 10);
        assert_eq!(layout_for((128 << 10) + 1).size(), 132 << 10);
        assert_eq!(class_of((128 << 10) + 1), None);
    }

    #[test]
    fn a_block_comes_back_zeroed_and_the_pool_is_bounded() {
        let l = layout_for(4096);
        let p = alloc_zeroed(l, 4096);
        // SAFETY: a fresh 4 KiB block.
        unsafe {
            std::ptr::write_bytes(p.as_ptr(), 0xab, 4096);
            free(p, l);
        }
        let before = kept_bytes();
        assert!(before >= 4096);
        let q = alloc_zeroed(l, 4096);
        assert_eq!(q, p, "the kept block is handed out again");
        assert_eq!(kept_bytes(), before - 4096);
        // SAFETY: 4096 readable bytes of our block.
        let s = unsafe { std::slice::from_raw_parts(q.as_ptr(), 4096) };
        assert!(s.iter().all(|&b| b == 0), "handed out zeroed");
        // SAFETY: ours, unreferenced (the slice is not used again).
        unsafe { free(q, l) };
        // Fill past the bound: the pool keeps at most KEEP_BYTES.
        let big = layout_for(128 << 10);
        let blocks: Vec<_> = (0..(KEEP_BYTES / (128 << 10)) + 8)
            .map(|_| alloc_zeroed(big, 128 << 10))
            .collect();
        for b in blocks {
            // SAFETY: each block is ours and unreferenced.
            unsafe { free(b, big) };
        }
        assert!(kept_bytes() <= KEEP_BYTES);
    }
}

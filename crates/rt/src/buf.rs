//! I/O buffers a target sees: a byte region we own (heap or a lazily-backed mapping), or a kernel
//! buffer that sits in the ring's fixed-buffer table (zero copy: io_uring ops can use it, the CPU
//! cannot).
//!
//! An `IoBuf` is a view (offset, capacity, length) into reference-counted memory. Ops clone the
//! reference into their resources, so memory outlives every op that points into it (see `op.rs`).
//! If an op using a buffer is dropped before it completes, the kernel may still write into it: its
//! contents are then unspecified, but the memory stays valid.

use std::io;
use std::ptr::NonNull;
use std::rc::Rc;

/// Alignment of every buffer we allocate: enough for O_DIRECT on any block size we serve.
pub const ALIGN: usize = 4096;

enum Backing {
    /// `std::alloc` memory with this layout.
    Heap(std::alloc::Layout),
    /// An anonymous `MAP_NORESERVE` mapping of this length: pages cost RSS only once touched.
    Mapped(usize),
    /// No memory of ours: a kernel buffer registered in the ring's fixed table.
    Kernel,
}

pub(crate) struct Mem {
    ptr: *mut u8,
    backing: Backing,
}

impl Drop for Mem {
    fn drop(&mut self) {
        match self.backing {
            // SAFETY: ptr came from `alloc_zeroed` with exactly this layout, and the last `Rc`
            // (including those held by in-flight ops) is gone, so nobody points into it.
            Backing::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr, layout) },
            // SAFETY: ptr/len are the mapping we created; no reference remains (as above).
            Backing::Mapped(len) => unsafe {
                libc::munmap(self.ptr.cast(), len);
            },
            Backing::Kernel => {}
        }
    }
}

/// A buffer handle. Not `Clone`: one owner issues ops on it at a time.
pub struct IoBuf {
    mem: Rc<Mem>,
    off: usize,
    cap: usize,
    len: usize,
    /// Index in the ring's fixed-buffer table, when the memory is registered there.
    fixed: Option<u16>,
}

impl IoBuf {
    /// A zeroed heap buffer of `cap` bytes, aligned to [`ALIGN`]; its length starts at `cap`.
    pub fn with_capacity(cap: usize) -> IoBuf {
        let size = cap.max(1).next_multiple_of(ALIGN);
        let layout = std::alloc::Layout::from_size_align(size, ALIGN).expect("buffer too large");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        IoBuf {
            mem: Rc::new(Mem {
                ptr: ptr.as_ptr(),
                backing: Backing::Heap(layout),
            }),
            off: 0,
            cap,
            len: cap,
            fixed: None,
        }
    }

    /// One lazily-backed mapping cut into `slots` buffers of `slot_size` bytes (rounded up to
    /// [`ALIGN`]). Virtual size is `slots * slot_size`; resident size grows only with use, and
    /// [`IoBuf::release`] gives pages back.
    pub fn arena(slots: usize, slot_size: usize) -> io::Result<Vec<IoBuf>> {
        let stride = slot_size.max(1).next_multiple_of(ALIGN);
        let total = stride
            .checked_mul(slots)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        if total == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: anonymous private mapping; arguments are valid; result checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Slots are touched sparsely (a 4k request touches one page of a 512k slot); with
        // transparent huge pages set to "always" every touch would make 2 MiB resident.
        // SAFETY: advice on our own fresh mapping; failure only costs memory, so it is ignored.
        unsafe { libc::madvise(p, total, libc::MADV_NOHUGEPAGE) };
        let mem = Rc::new(Mem {
            ptr: p.cast(),
            backing: Backing::Mapped(total),
        });
        Ok((0..slots)
            .map(|i| IoBuf {
                mem: mem.clone(),
                off: i * stride,
                cap: slot_size,
                len: slot_size,
                fixed: None,
            })
            .collect())
    }

    /// A kernel-owned buffer at `index` of the ring's fixed-buffer table (ublk zero copy). Only
    /// io_uring fixed-buffer ops can move its bytes.
    pub fn kernel_fixed(index: u16, len: usize) -> IoBuf {
        IoBuf {
            mem: Rc::new(Mem {
                ptr: std::ptr::null_mut(),
                backing: Backing::Kernel,
            }),
            off: 0,
            cap: len,
            len,
            fixed: Some(index),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Set the length of the valid region. Panics past the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap,
            "IoBuf::set_len({len}) beyond capacity {}",
            self.cap
        );
        self.len = len;
    }
    /// Whether the CPU can read and write the bytes (false for zero-copy kernel buffers).
    pub fn is_cpu_accessible(&self) -> bool {
        !matches!(self.mem.backing, Backing::Kernel)
    }
    /// The fixed-buffer table index, if the memory is registered in the ring.
    pub fn fixed_index(&self) -> Option<u16> {
        self.fixed
    }
    /// Mark this buffer's memory as registered at `index` of the ring's fixed-buffer table.
    ///
    /// # Safety
    /// The caller registered exactly this memory at `index` on the ring that will use it.
    pub unsafe fn set_fixed_index(&mut self, index: Option<u16>) {
        self.fixed = index;
    }

    /// The bytes `[0, len)`. Panics for a kernel buffer (zero copy): targets that touch bytes ask
    /// for copy mode.
    pub fn as_slice(&self) -> &[u8] {
        assert!(
            self.is_cpu_accessible(),
            "CPU access to a zero-copy kernel buffer"
        );
        // SAFETY: ptr+off..+len lies inside the allocation (len <= cap, views never overlap), and
        // `&self` prevents a simultaneous `as_mut_slice` on this handle.
        unsafe { std::slice::from_raw_parts(self.mem.ptr.add(self.off), self.len) }
    }
    /// The bytes `[0, len)`, mutably. Panics for a kernel buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(
            self.is_cpu_accessible(),
            "CPU access to a zero-copy kernel buffer"
        );
        // SAFETY: as in `as_slice`; `&mut self` makes this the only borrow of this view.
        unsafe { std::slice::from_raw_parts_mut(self.mem.ptr.add(self.off), self.len) }
    }

    /// Address of the first byte, for SQEs (for a kernel buffer: 0, the offset into it).
    pub fn addr(&self) -> *mut u8 {
        if self.is_cpu_accessible() {
            // SAFETY: in bounds of the allocation.
            unsafe { self.mem.ptr.add(self.off) }
        } else {
            std::ptr::null_mut::<u8>().wrapping_add(self.off)
        }
    }

    /// A view of bytes `[from, len)` sharing this buffer's memory and fixed-buffer slot, to finish
    /// a short transfer in place. Only handed to the kernel while the caller still holds this
    /// buffer, so no second CPU borrow of the bytes is ever made through it.
    pub(crate) fn tail(&self, from: usize) -> IoBuf {
        assert!(
            from <= self.len,
            "IoBuf::tail({from}) beyond length {}",
            self.len
        );
        IoBuf {
            mem: self.mem.clone(),
            off: self.off + from,
            cap: self.len - from,
            len: self.len - from,
            fixed: self.fixed,
        }
    }

    /// A keep-alive token for the memory, for op resources.
    pub fn keepalive(&self) -> KeepAlive {
        KeepAlive(self.mem.clone())
    }

    /// Give this view's pages back to the kernel (mapped arenas only; heap buffers keep theirs).
    /// The bytes read as zero afterwards.
    pub fn release(&mut self) {
        self.release_from(0);
    }

    /// Give back the pages of `[from, capacity)` (`from` rounded up to a page): the bytes there
    /// read as zero afterwards. Mapped arenas only.
    pub fn release_from(&mut self, from: usize) {
        if let Backing::Mapped(_) = self.mem.backing {
            let start = from.next_multiple_of(ALIGN);
            let end = self.cap.next_multiple_of(ALIGN);
            if start >= end {
                return;
            }
            // SAFETY: the range lies within this view's stride of our mapping and is page
            // aligned; DONTNEED on private anonymous memory drops the pages (they read as zero).
            unsafe {
                libc::madvise(
                    self.mem.ptr.add(self.off + start).cast(),
                    end - start,
                    libc::MADV_DONTNEED,
                )
            };
        }
    }
}

impl std::fmt::Debug for IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuf")
            .field("len", &self.len)
            .field("cap", &self.cap)
            .field("fixed", &self.fixed)
            .finish()
    }
}

/// Keeps a buffer's memory alive while the kernel may use it.
pub struct KeepAlive(#[allow(dead_code)] Rc<Mem>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_buffer_is_aligned_and_zeroed() {
        let mut b = IoBuf::with_capacity(10000);
        assert_eq!(b.addr() as usize % ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[9999] = 7;
        b.set_len(5);
        assert_eq!(b.len(), 5);
        b.set_len(10000);
        assert_eq!(b.as_slice()[9999], 7);
    }

    #[test]
    fn arena_slots_are_disjoint_and_release_zeroes() {
        let mut v = IoBuf::arena(3, 5000).unwrap();
        assert_eq!(v.len(), 3);
        for (i, b) in v.iter_mut().enumerate() {
            b.as_mut_slice().fill(i as u8 + 1);
        }
        for (i, b) in v.iter().enumerate() {
            assert!(b.as_slice().iter().all(|&x| x == i as u8 + 1));
            assert_eq!(b.addr() as usize % ALIGN, 0);
        }
        v[1].release();
        assert!(v[1].as_slice().iter().all(|&x| x == 0));
        assert!(v[2].as_slice().iter().all(|&x| x == 3));
    }

    #[test]
    #[should_panic(expected = "beyond capacity")]
    fn set_len_past_capacity_panics() {
        IoBuf::with_capacity(16).set_len(17);
    }

    #[test]
    fn kernel_buffer_is_not_cpu_accessible() {
        let b = IoBuf::kernel_fixed(3, 4096);
        assert!(!b.is_cpu_accessible());
        assert_eq!(b.fixed_index(), Some(3));
    }
}

//! I/O buffers a target sees: a byte region we own (heap or a lazily-backed mapping), or a kernel
//! buffer that sits in the ring's fixed-buffer table (zero copy: io_uring ops can use it, the CPU
//! cannot).
//!
//! An `IoBuf` is a view (offset, capacity, length) into reference-counted memory. Ops clone the
//! reference into their resources, so memory outlives every op that points into it (see `op.rs`).
//!
//! # Lends: no CPU access to bytes the kernel may be using
//! Ops borrow the `IoBuf` (`read_at(&mut buf)`), but an op future can be dropped or forgotten
//! while its SQE is in flight, which ends the borrow while the kernel still uses the bytes. So
//! every op that lets the kernel at a view's bytes also holds a [`Lend`] of the view, in the op's
//! data: it ends when that data is dropped, i.e. when the completion has arrived (at once if the
//! future completes; on the CQE if the future was dropped, see `op.rs`; never if the future was
//! forgotten or the runtime leaked its in-flight ops: the bytes then stay lent forever, which is
//! safe). While lent:
//! - for the kernel to write ([`IoBuf::lend_write`]: read, recv), `as_slice`, `as_mut_slice` and
//!   `release` panic: the bytes may change under any reference;
//! - for the kernel to read ([`IoBuf::lend_read`]: write, send), `as_slice` still works (both
//!   sides only read), `as_mut_slice` and `release` panic (the kernel would send torn data).
//!
//! The state is a counter per view, shared with the views that overlap it (its tails) and
//! separate for each arena slot. Costs: one `Rc` clone and one `Cell` add per op, the reverse
//! when its data is dropped; one compare per `as_slice`. Starting an op never checks: the
//! kernel racing itself is not a Rust data race, only CPU accesses are.
//!
//! Ublk's command ops (`fs::uring_cmd16*`) take no lends (the driver's protocol, not the op's
//! life, decides when it touches a tag buffer); they are `unsafe` instead.

use std::cell::Cell;
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
    /// Memory another party owns and may change at any moment (a VM's RAM, shared with the
    /// running guest): io_uring ops may use it, the CPU may not (a Rust reference to bytes a
    /// guest writes concurrently would be undefined behaviour; see [`IoBuf::foreign`]). The box
    /// keeps the mapping alive until the last view and the last op on it are gone.
    Foreign(#[allow(dead_code)] Box<dyn std::any::Any>),
}

pub(crate) struct Mem {
    ptr: *mut u8,
    backing: Backing,
}

impl Drop for Mem {
    fn drop(&mut self) {
        match self.backing {
            // SAFETY: ptr came from `bufpool::alloc_zeroed` with exactly this layout, and the
            // last `Rc` (including those held by in-flight ops) is gone, so nobody points into it.
            Backing::Heap(layout) => unsafe {
                crate::bufpool::free(NonNull::new_unchecked(self.ptr), layout)
            },
            // SAFETY: ptr/len are the mapping we created; no reference remains (as above).
            Backing::Mapped(len) => unsafe {
                libc::munmap(self.ptr.cast(), len);
            },
            Backing::Kernel | Backing::Foreign(_) => {}
        }
    }
}

/// One lend count for one stretch of memory: a whole heap buffer, or one arena slot. Shared by
/// the views into that stretch (a buffer and its tails).
struct Slot {
    mem: Rc<Mem>,
    /// `READ_LEND` per kernel-reads lend plus `WRITE_LEND` per kernel-writes lend.
    lent: Cell<u64>,
}

const READ_LEND: u64 = 1;
/// Above any count of read lends that can exist (each is an op in flight or forgotten).
const WRITE_LEND: u64 = 1 << 32;

impl Slot {
    fn new(mem: Rc<Mem>) -> Rc<Slot> {
        Rc::new(Slot {
            mem,
            lent: Cell::new(0),
        })
    }
}

/// A buffer handle. Not `Clone`: one owner issues ops on it at a time.
pub struct IoBuf {
    slot: Rc<Slot>,
    off: usize,
    cap: usize,
    len: usize,
    /// Index in the ring's fixed-buffer table, when the memory is registered there.
    fixed: Option<u16>,
}

impl IoBuf {
    /// A zeroed heap buffer of `cap` bytes, aligned to [`ALIGN`]; its length starts at `cap`.
    /// Small ones reuse memory this thread freed before (`bufpool`).
    pub fn with_capacity(cap: usize) -> IoBuf {
        let layout = crate::bufpool::layout_for(cap);
        let ptr = crate::bufpool::alloc_zeroed(layout, cap);
        IoBuf {
            slot: Slot::new(Rc::new(Mem {
                ptr: ptr.as_ptr(),
                backing: Backing::Heap(layout),
            })),
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
                slot: Slot::new(mem.clone()),
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
            slot: Slot::new(Rc::new(Mem {
                ptr: std::ptr::null_mut(),
                backing: Backing::Kernel,
            })),
            off: 0,
            cap: len,
            len,
            fixed: Some(index),
        }
    }

    /// A view of `len` bytes at `ptr` in memory that is not ours: guest RAM mapped from a
    /// VM's memory file, which the guest may read and write at any time. Like a
    /// [`IoBuf::kernel_fixed`] buffer it is *not* CPU-accessible (`as_slice` panics): only
    /// io_uring ops reach its bytes, by address, so no Rust reference to memory that changes
    /// under it is ever made. A target that must touch bytes (`Caps::needs_cpu_access`) is
    /// handed a bounce buffer instead, copied with volatile accesses by the caller. Lends
    /// work as for any buffer, so the kernel and the frontend's own code never overlap.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be mapped readable and writable for as long as `keep` lives, and
    /// `keep` must be what keeps it mapped (an `Arc` of the mapping): ops on this view and its
    /// tails hold `keep` until their completions, even after the view is dropped.
    pub unsafe fn foreign(ptr: *mut u8, len: usize, keep: Box<dyn std::any::Any>) -> IoBuf {
        IoBuf {
            slot: Slot::new(Rc::new(Mem {
                ptr,
                backing: Backing::Foreign(keep),
            })),
            off: 0,
            cap: len,
            len,
            fixed: None,
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
    /// Whether the CPU can read and write the bytes (false for zero-copy kernel buffers and
    /// for foreign memory such as guest RAM).
    pub fn is_cpu_accessible(&self) -> bool {
        !matches!(self.slot.mem.backing, Backing::Kernel | Backing::Foreign(_))
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
    /// for copy mode. Panics while the kernel may write the bytes (see the module docs: an op
    /// receiving into them was dropped before it completed).
    #[track_caller]
    pub fn as_slice(&self) -> &[u8] {
        assert!(
            self.is_cpu_accessible(),
            "CPU access to a zero-copy kernel buffer"
        );
        if self.slot.lent.get() >= WRITE_LEND {
            lent_panic("read", "for writing");
        }
        // SAFETY: ptr+off..+len lies inside the allocation (len <= cap <= the view's stretch).
        // No kernel write to these bytes can be pending (no write lend, checked above), and none
        // can start while the slice lives: starting one takes `&mut` of this view
        // (`lend_write`), or of the buffer a crate-internal tail came from. CPU writes need
        // `&mut self` of this view; other views of the same bytes are tails, which the crate
        // only hands to the kernel.
        unsafe { std::slice::from_raw_parts(self.slot.mem.ptr.add(self.off), self.len) }
    }
    /// The bytes `[0, len)`, mutably. Panics for a kernel buffer, and while the bytes are lent to
    /// the kernel at all (an op reading or writing them was dropped before it completed).
    #[track_caller]
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        assert!(
            self.is_cpu_accessible(),
            "CPU access to a zero-copy kernel buffer"
        );
        self.check_unlent("written");
        // SAFETY: as in `as_slice`, and no kernel access is pending at all (checked above);
        // `&mut self` makes this the only borrow of this view.
        unsafe { std::slice::from_raw_parts_mut(self.slot.mem.ptr.add(self.off), self.len) }
    }

    #[track_caller]
    fn check_unlent(&self, what: &str) {
        match self.slot.lent.get() {
            0 => {}
            n if n >= WRITE_LEND => lent_panic(what, "for writing"),
            _ => lent_panic(what, "for reading"),
        }
    }

    /// Whether an op may still let the kernel at the bytes (see the module docs).
    pub fn is_lent(&self) -> bool {
        self.slot.lent.get() != 0
    }

    /// Whether an op may still let the kernel write the bytes (`as_slice` would panic).
    pub fn is_lent_for_writing(&self) -> bool {
        self.slot.lent.get() >= WRITE_LEND
    }

    /// Lend the bytes to the kernel to read (a write or send op holds the token until its
    /// completion). Until the token is dropped, `as_slice` works and `as_mut_slice` panics.
    pub fn lend_read(&self) -> Lend {
        self.lend(READ_LEND)
    }

    /// Lend the bytes to the kernel to write (a read or recv op holds the token until its
    /// completion). Until the token is dropped, every CPU access panics.
    pub fn lend_write(&mut self) -> Lend {
        self.lend(WRITE_LEND)
    }

    fn lend(&self, weight: u64) -> Lend {
        let s = &self.slot;
        s.lent.set(s.lent.get() + weight);
        Lend {
            slot: s.clone(),
            weight,
        }
    }

    /// Address of the first byte, for SQEs (for a kernel buffer: 0, the offset into it).
    pub fn addr(&self) -> *mut u8 {
        if matches!(self.slot.mem.backing, Backing::Kernel) {
            std::ptr::null_mut::<u8>().wrapping_add(self.off)
        } else {
            // SAFETY: in bounds of the allocation (or of the foreign mapping).
            unsafe { self.slot.mem.ptr.add(self.off) }
        }
    }

    /// A view of bytes `[from, len)` sharing this buffer's memory, fixed-buffer slot and lend
    /// state, to finish a short transfer in place. It overlaps this buffer, so a lend of either
    /// is a lend of both. The crate only hands tails to the kernel, never makes CPU slices of
    /// them, and lends one for writing only while it holds this buffer by `&mut`.
    pub(crate) fn tail(&self, from: usize) -> IoBuf {
        assert!(
            from <= self.len,
            "IoBuf::tail({from}) beyond length {}",
            self.len
        );
        IoBuf {
            slot: self.slot.clone(),
            off: self.off + from,
            cap: self.len - from,
            len: self.len - from,
            fixed: self.fixed,
        }
    }

    /// A keep-alive token for the memory, for op resources. It does not lend the bytes: ops that
    /// take only this (`fs::uring_cmd16*`) are `unsafe` and leave CPU access to their caller.
    pub fn keepalive(&self) -> KeepAlive {
        KeepAlive(self.slot.mem.clone())
    }

    /// Give this view's pages back to the kernel (mapped arenas only; heap buffers keep theirs).
    /// The bytes read as zero afterwards. Panics while they are lent (it changes them).
    #[track_caller]
    pub fn release(&mut self) {
        self.release_from(0);
    }

    /// Give back the pages of `[from, capacity)` (`from` rounded up to a page): the bytes there
    /// read as zero afterwards. Mapped arenas only. Panics while the bytes are lent.
    #[track_caller]
    pub fn release_from(&mut self, from: usize) {
        if let Backing::Mapped(_) = self.slot.mem.backing {
            self.check_unlent("released");
            let start = from.next_multiple_of(ALIGN);
            let end = self.cap.next_multiple_of(ALIGN);
            if start >= end {
                return;
            }
            // SAFETY: the range lies within this view's stride of our mapping and is page
            // aligned; DONTNEED on private anonymous memory drops the pages (they read as zero).
            unsafe {
                libc::madvise(
                    self.slot.mem.ptr.add(self.off + start).cast(),
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
            .field("lent", &self.slot.lent.get())
            .finish()
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn lent_panic(what: &str, how: &str) -> ! {
    panic!(
        "IoBuf {what} while lent to the kernel {how}: an op on it was dropped or forgotten \
         before it completed, and the bytes stay the kernel's until its completion arrives \
         (use a fresh buffer, or wait until IoBuf::is_lent says false)"
    )
}

/// Keeps a buffer's memory alive while the kernel may use it.
pub struct KeepAlive(#[allow(dead_code)] Rc<Mem>);

/// A buffer view lent to the kernel (see the module docs): keeps its memory alive and keeps the
/// CPU off its bytes until dropped. Ops hold it in their data, so it ends when the kernel is done.
pub struct Lend {
    slot: Rc<Slot>,
    weight: u64,
}

impl Drop for Lend {
    fn drop(&mut self) {
        let s = &self.slot;
        s.lent.set(s.lent.get() - self.weight);
    }
}

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

    fn panics(f: impl FnOnce()) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
    }

    /// A read lend (the kernel reads) allows CPU reads only; a write lend (the kernel writes)
    /// allows nothing; both end when the token is dropped.
    #[test]
    fn lends_gate_cpu_access() {
        let mut b = IoBuf::with_capacity(64);
        let r = b.lend_read();
        let r2 = b.lend_read();
        assert!(b.is_lent() && !b.is_lent_for_writing());
        assert_eq!(b.as_slice().len(), 64);
        assert!(panics(|| b.as_mut_slice()[0] = 1));
        drop(r);
        assert!(panics(|| b.as_mut_slice()[0] = 1), "one read lend is left");
        drop(r2);
        b.as_mut_slice()[0] = 1;
        let w = b.lend_write();
        assert!(b.is_lent_for_writing());
        assert!(panics(|| {
            b.as_slice();
        }));
        assert!(panics(|| b.as_mut_slice()[0] = 2));
        drop(w);
        assert!(!b.is_lent());
        assert_eq!(b.as_slice()[0], 1);
    }

    /// A tail overlaps its buffer: lending either blocks both. Arena slots do not overlap: each
    /// has its own state although they share one mapping.
    #[test]
    fn tails_share_lends_and_arena_slots_do_not() {
        let b = IoBuf::with_capacity(100);
        let mut t = b.tail(40);
        let w = t.lend_write();
        assert!(panics(|| {
            b.as_slice();
        }));
        drop(w);
        let r = b.lend_read();
        assert!(panics(|| t.as_mut_slice()[0] = 1));
        drop(r);
        t.as_mut_slice()[0] = 7;
        assert_eq!(b.as_slice()[40], 7);

        let mut v = IoBuf::arena(2, 4096).unwrap();
        let w = v[0].lend_write();
        v[1].as_mut_slice().fill(3);
        assert!(panics(|| {
            v[0].as_slice();
        }));
        assert!(panics(|| v[0].release()));
        drop(w);
        v[0].release();
        assert!(v[1].as_slice().iter().all(|&x| x == 3));
    }

    #[test]
    fn foreign_memory_is_reached_by_address_only_and_kept_alive() {
        let backing = std::rc::Rc::new(vec![7u8; 8192]);
        let ptr = backing.as_ptr() as *mut u8;
        // SAFETY: the Vec lives as long as the Rc we hand over as keep-alive; nothing writes it.
        let b = unsafe { IoBuf::foreign(ptr.wrapping_add(4096), 4096, Box::new(backing.clone())) };
        assert!(!b.is_cpu_accessible());
        assert_eq!(b.addr(), ptr.wrapping_add(4096));
        assert_eq!(b.tail(96).addr(), ptr.wrapping_add(4192));
        assert!(panics(|| {
            b.as_slice();
        }));
        assert_eq!(std::rc::Rc::strong_count(&backing), 2);
        drop(b);
        assert_eq!(std::rc::Rc::strong_count(&backing), 1);
    }

    #[test]
    fn kernel_buffer_is_not_cpu_accessible() {
        let b = IoBuf::kernel_fixed(3, 4096);
        assert!(!b.is_cpu_accessible());
        assert_eq!(b.fixed_index(), Some(3));
    }
}

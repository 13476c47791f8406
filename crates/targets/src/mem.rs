//! `mem`: a RAM disk. One lazily-backed anonymous mapping shared by every queue; untouched and
//! discarded ranges cost no memory and read as zeroes.
//!
//! Shared state: queues on different threads copy in and out of the same mapping. Each copy runs
//! chunk by chunk under a striped lock, so two threads never touch the same bytes at once (no data
//! race); requests are not atomic across chunks, which a block device never promises anyway.
//!
//! Growing online: the mapping reserves more address space than the disk's size (inaccessible,
//! costing neither memory nor commit charge) and only the disk's part is readable and writable;
//! growing makes more of the reservation accessible. The mapping never moves, so queues copying
//! in and out of it need no coordination with a resize.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::kind::{Info, Opt, TargetKind, Value};
use crate::{
    Caps, Extent, Geometry, IoBuf, MAX_EXTENTS, OpenError, Target, TargetQueue, check_size,
};

const CHUNK: u64 = 64 << 10;
const STRIPES: usize = 1024;
const PAGE: u64 = 4096;
/// Pages asked about per mincore call (one byte each, on the stack).
const WINDOW_PAGES: usize = 4096;

/// Address space reserved per RAM disk for online growth (virtual only).
const RESERVE: u64 = 1 << 40;

struct Ram {
    ptr: *mut u8,
    /// Bytes of the mapping the disk uses now (readable and writable).
    size: AtomicU64,
    /// Bytes mapped (the rest inaccessible until a resize).
    reserved: u64,
    stripes: Vec<Mutex<()>>,
}

// SAFETY: the mapping is only accessed under the stripe lock of the chunk being touched.
unsafe impl Send for Ram {}
// SAFETY: as above.
unsafe impl Sync for Ram {}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: our own mapping; no queue can hold a reference (they hold the Arc).
        unsafe { libc::munmap(self.ptr.cast(), self.reserved as usize) };
    }
}

impl Ram {
    /// Map `size` bytes, reserving room to grow where the address space allows.
    fn new(size: u64) -> io::Result<Ram> {
        let len = usize::try_from(size.next_multiple_of(PAGE).max(PAGE))
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))?;
        let map = |len: usize, prot: i32| {
            // SAFETY: a new anonymous private mapping at an address of the kernel's choosing.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            (p != libc::MAP_FAILED).then_some(p)
        };
        let reserve = (RESERVE as usize).max(len);
        let (p, reserved) = match map(reserve, libc::PROT_NONE) {
            // SAFETY: the first `len` bytes of the mapping we just made.
            Some(p)
                if unsafe { libc::mprotect(p, len, libc::PROT_READ | libc::PROT_WRITE) } == 0 =>
            {
                (p, reserve)
            }
            r => {
                // No room for a reservation (RLIMIT_AS, a small address space): exactly the
                // disk, which then cannot grow.
                if let Some(p) = r {
                    // SAFETY: the mapping just made, unused.
                    unsafe { libc::munmap(p, reserve) };
                }
                let p = map(len, libc::PROT_READ | libc::PROT_WRITE)
                    .ok_or_else(io::Error::last_os_error)?;
                (p, len)
            }
        };
        Ok(Ram {
            ptr: p.cast(),
            size: AtomicU64::new(size),
            reserved: reserved as u64,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// Make `[0, size)` usable; never shrinks. Called by one thread at a time (the target's
    /// resize lock).
    fn grow(&self, size: u64) -> io::Result<()> {
        let old = self.size.load(Ordering::Acquire);
        if size < old {
            return Err(io::Error::other("the mem target does not shrink"));
        }
        let (from, to) = (old.next_multiple_of(PAGE), size.next_multiple_of(PAGE));
        if to > self.reserved {
            return Err(io::Error::other(format!(
                "the mem target can grow to at most {} (the address space reserved when it was created)",
                crate::size::format_size(self.reserved)
            )));
        }
        if to > from {
            // SAFETY: a page-aligned range inside our reservation, not yet in use by any queue
            // (requests stay below the old size until this returns).
            let r = unsafe {
                libc::mprotect(
                    self.ptr.add(from as usize).cast(),
                    (to - from) as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.size.store(size, Ordering::Release);
        Ok(())
    }

    /// Run `f(chunk_offset_in_disk, bytes)` over `[off, off+len)` chunk by chunk, each under its
    /// stripe lock.
    fn for_each_chunk(&self, off: u64, len: u64, mut f: impl FnMut(u64, &mut [u8])) {
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let chunk_end = ((pos / CHUNK) + 1) * CHUNK;
            let n = chunk_end.min(end) - pos;
            let _g = self.stripes[((pos / CHUNK) as usize) % STRIPES]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // SAFETY: [pos, pos+n) is inside the mapping (callers check ranges against the size),
            // and the stripe lock makes this the only live reference to those bytes.
            let s =
                unsafe { std::slice::from_raw_parts_mut(self.ptr.add(pos as usize), n as usize) };
            f(pos, s);
            pos += n;
        }
    }

    /// Zero a range, giving whole pages back to the kernel.
    fn zero(&self, off: u64, len: u64) {
        self.for_each_chunk(off, len, |pos, s| {
            let end = pos + s.len() as u64;
            let first_page = pos.next_multiple_of(PAGE);
            let last_page = end / PAGE * PAGE;
            if last_page > first_page {
                let head = (first_page - pos) as usize;
                let tail = (end - last_page) as usize;
                s[..head].fill(0);
                let n = s.len();
                s[n - tail..].fill(0);
                // SAFETY: page-aligned range inside our private anonymous mapping; DONTNEED makes
                // it read back as zeroes.
                unsafe {
                    libc::madvise(
                        self.ptr.add(first_page as usize).cast(),
                        (last_page - first_page) as usize,
                        libc::MADV_DONTNEED,
                    )
                };
            } else {
                s.fill(0);
            }
        });
    }
}

pub struct MemTarget {
    ram: Arc<Ram>,
    /// `geo.size` as created; the size now is `ram.size`.
    geo: Geometry,
    resizing: Mutex<()>,
}

impl MemTarget {
    pub fn new(size: u64, logical_block: u32) -> io::Result<MemTarget> {
        let ram = Ram::new(size)?;
        let caps = Caps {
            discard: true,
            write_zeroes: true,
            needs_cpu_access: true,
            consistent_across_queues: true,
            ..Caps::default()
        };
        Ok(MemTarget {
            ram: Arc::new(ram),
            geo: Geometry {
                size,
                logical_block,
                physical_block: logical_block.max(4096),
                caps,
            },
            resizing: Mutex::new(()),
        })
    }
}

/// `-t mem --size N [--logical-block B]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemConfig {
    pub size: u64,
    #[serde(default = "crate::default_block")]
    pub logical_block: u32,
}

impl TargetKind for MemTarget {
    const INFO: Info = Info {
        name: "mem",
        about: "RAM, gone when the daemon exits; untouched and discarded ranges cost no memory",
        opts: &[
            Opt::new(
                "size",
                Value::Size,
                "SIZE",
                "device size (K/M/G/T suffixes)",
            )
            .short('s')
            .required(),
            crate::LOGICAL_BLOCK,
        ],
    };
    type Config = MemConfig;
    fn check(c: &MemConfig) -> Result<(), OpenError> {
        check_size(c.size, c.logical_block)
    }
    fn open(c: &MemConfig) -> Result<MemTarget, OpenError> {
        check_size(c.size, c.logical_block)?;
        MemTarget::new(c.size, c.logical_block).map_err(|e| {
            OpenError::Io(format!(
                "cannot reserve {} of memory: {e}",
                crate::size::format_size(c.size)
            ))
        })
    }
    fn describe(c: &MemConfig) -> String {
        format!("mem {}", crate::size::format_size(c.size))
    }
}

impl Target for MemTarget {
    type Queue = MemQueue;
    fn geometry(&self) -> Geometry {
        Geometry {
            size: self.ram.size.load(Ordering::Acquire),
            ..self.geo
        }
    }
    /// Nothing behind it to follow: a resize needs the size.
    fn backing_size(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
    fn resize(&self, size: u64) -> io::Result<()> {
        check_size(size, self.geo.logical_block).map_err(|e| io::Error::other(e.to_string()))?;
        let _one_at_a_time = self.resizing.lock().unwrap_or_else(|e| e.into_inner());
        self.ram.grow(size)
    }
    fn open_queue(&self, _qid: u16) -> io::Result<MemQueue> {
        Ok(MemQueue {
            ram: self.ram.clone(),
        })
    }
}

pub struct MemQueue {
    ram: Arc<Ram>,
}

impl TargetQueue for MemQueue {
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        let dst = buf.as_mut_slice();
        self.ram.for_each_chunk(off, dst.len() as u64, |pos, s| {
            let at = (pos - off) as usize;
            dst[at..at + s.len()].copy_from_slice(s);
        });
        Ok(())
    }
    async fn write(&self, off: u64, buf: &IoBuf, _fua: bool) -> io::Result<()> {
        let src = buf.as_slice();
        self.ram.for_each_chunk(off, src.len() as u64, |pos, s| {
            let at = (pos - off) as usize;
            s.copy_from_slice(&src[at..at + s.len()]);
        });
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        self.ram.zero(off, len);
        Ok(())
    }
    async fn write_zeroes(&self, off: u64, len: u64, _unmap: bool) -> io::Result<()> {
        self.ram.zero(off, len);
        Ok(())
    }
    async fn block_status(&self, off: u64, len: u64) -> io::Result<Vec<Extent>> {
        // mincore tells which pages are resident: absent pages were never written or were
        // discarded, so they read as zeroes. One window of pages at a time into a fixed buffer,
        // and at most MAX_EXTENTS extents (a prefix of the range): the answer's memory does not
        // grow with the length asked about.
        let end = off + len;
        let map_end = self.ram.size.load(Ordering::Acquire).next_multiple_of(PAGE);
        let mut resident = [0u8; WINDOW_PAGES];
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = off;
        while pos < end {
            let start = pos / PAGE * PAGE;
            let stop = (start + WINDOW_PAGES as u64 * PAGE)
                .min(end.next_multiple_of(PAGE))
                .min(map_end);
            // SAFETY: [start, stop) is page aligned, inside our mapping, and at most
            // WINDOW_PAGES pages long: `resident` has a byte for each.
            let r = unsafe {
                libc::mincore(
                    self.ram.ptr.add(start as usize).cast(),
                    (stop - start) as usize,
                    resident.as_mut_ptr(),
                )
            };
            if r != 0 {
                break; // "allocated" is always a safe answer for the rest
            }
            let pages = ((stop - start) / PAGE) as usize;
            for (i, v) in resident[..pages].iter().enumerate() {
                let page_end = (start + (i as u64 + 1) * PAGE).min(end);
                if page_end <= pos {
                    continue;
                }
                let hole = v & 1 == 0;
                let n = page_end - pos;
                if let Some(e) = out.last_mut().filter(|e| e.hole == hole) {
                    e.len += n;
                } else if out.len() == MAX_EXTENTS {
                    return Ok(out);
                } else {
                    out.push(Extent {
                        len: n,
                        hole,
                        zero: hole,
                    });
                }
                pos = page_end;
            }
        }
        if pos < end && out.len() < MAX_EXTENTS {
            out.push(Extent {
                len: end - pos,
                hole: false,
                zero: false,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rt::Runtime;

    #[test]
    fn write_read_discard_round_trip_across_chunks() {
        let t = MemTarget::new(1 << 20, 512).unwrap();
        let q = t.open_queue(0).unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut w = IoBuf::with_capacity(200_000);
            w.as_mut_slice()
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 253) as u8 + 1);
            q.write(60_000, &w, false).await.unwrap();
            let mut r = IoBuf::with_capacity(200_000);
            q.read(60_000, &mut r).await.unwrap();
            assert_eq!(r.as_slice(), w.as_slice());
            q.discard(70_000, 100_000).await.unwrap();
            q.read(60_000, &mut r).await.unwrap();
            assert_eq!(&r.as_slice()[..10_000], &w.as_slice()[..10_000]);
            assert!(r.as_slice()[10_000..110_000].iter().all(|&b| b == 0));
            assert_eq!(&r.as_slice()[110_000..], &w.as_slice()[110_000..]);
            let ext = q.block_status(0, 1 << 20).await.unwrap();
            assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 1 << 20);
            assert!(ext[0].hole, "first 56K never written: {ext:?}");
            assert!(ext.iter().any(|e| !e.hole));
        });
    }

    #[test]
    fn grows_online_keeping_data_and_refuses_to_shrink() {
        let t = MemTarget::new(1 << 20, 512).unwrap();
        let q = t.open_queue(0).unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut w = IoBuf::with_capacity(4096);
            w.as_mut_slice().fill(0xa5);
            q.write((1 << 20) - 4096, &w, false).await.unwrap();
            t.resize(3 << 20).unwrap();
            assert_eq!(t.geometry().size, 3 << 20);
            // The new range is usable from a queue opened before the resize, and reads zeroes
            // until written.
            let mut r = IoBuf::with_capacity(4096);
            q.read((3 << 20) - 4096, &mut r).await.unwrap();
            assert!(r.as_slice().iter().all(|&b| b == 0));
            q.write((3 << 20) - 4096, &w, false).await.unwrap();
            q.read((3 << 20) - 4096, &mut r).await.unwrap();
            assert_eq!(r.as_slice(), w.as_slice());
            q.read((1 << 20) - 4096, &mut r).await.unwrap();
            assert_eq!(r.as_slice(), w.as_slice());
        });
        let e = t.resize(1 << 20).unwrap_err().to_string();
        assert_eq!(e, "the mem target does not shrink");
        let e = t.resize((4 << 20) + 1).unwrap_err().to_string();
        assert!(e.contains("not a multiple"), "{e}");
        let e = t.resize(RESERVE * 2).unwrap_err().to_string();
        assert!(e.contains("can grow to at most 1T"), "{e}");
        assert_eq!(t.geometry().size, 3 << 20);
    }

    #[test]
    fn block_status_is_bounded_however_fragmented() {
        // Every other page written: 4096 runs in 16 MiB, more than MAX_EXTENTS.
        let t = MemTarget::new(32 << 20, 512).unwrap();
        let q = t.open_queue(0).unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let w = IoBuf::with_capacity(PAGE as usize);
            for p in (0..16 << 20).step_by(2 * PAGE as usize) {
                q.write(p, &w, false).await.unwrap();
            }
            let ext = q.block_status(0, 32 << 20).await.unwrap();
            assert_eq!(ext.len(), MAX_EXTENTS);
            assert_eq!(
                ext.iter().map(|e| e.len).sum::<u64>(),
                MAX_EXTENTS as u64 * PAGE
            );
            assert!(!ext[0].hole && ext[1].hole);
            // Past the written part: one hole reaching the end of the range, across windows.
            let ext = q.block_status(16 << 20, 16 << 20).await.unwrap();
            assert_eq!(ext.len(), 1);
            assert_eq!((ext[0].len, ext[0].hole), (16 << 20, true));
            // A range that starts and ends inside pages.
            let ext = q.block_status(512, 4096).await.unwrap();
            assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 4096);
            assert!(!ext[0].hole && ext[0].len == 3584);
        });
    }
}

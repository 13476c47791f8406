//! Guest memory: the regions the frontend shares with us (memfd or hugetlbfs files), mapped
//! into this process, and how a new table reaches the queue threads.
//!
//! The frontend names memory three ways: guest-physical addresses (descriptors), its own
//! virtual addresses (the ring addresses of SET_VRING_ADDR) and file offsets. [`Memory`] is
//! one immutable table of mapped regions with both lookups; vm-memory's `GuestMemoryMmap`
//! does the mapping, the bounds checks and the volatile accesses.
//!
//! A new table (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) is published in [`SharedMemory`]
//! with an atomic swap, and the control thread replies only once no queue thread still
//! translates addresses with the old one ([`SharedMemory::publish`]): each queue thread
//! loads the table at the start of a *pass* (pop and parse new requests, complete finished
//! ones; no await inside) and announces its passes in an atomic word. Requests parsed before
//! the swap keep their own `Arc` of the old table, so memory their I/O points into stays
//! mapped until they complete.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Most memory regions (ADD_MEM_REG slots) we accept.
pub const MAX_REGIONS: usize = 64;

/// One region as the frontend described it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    pub guest_phys_addr: u64,
    pub size: u64,
    /// The frontend's virtual address of the region (ring addresses are given in these).
    pub user_addr: u64,
    pub mmap_offset: u64,
}

/// An immutable table of mapped guest memory regions.
#[derive(Default)]
pub struct Memory {
    pub mmap: GuestMemoryMmap,
    regions: Vec<(RegionInfo, Arc<GuestRegionMmap>)>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.regions.iter().map(|r| r.0))
            .finish()
    }
}

/// Why a memory table was refused (the frontend gets an error reply).
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memory region {0:#x}+{1:#x} is empty, overflows or overlaps another")]
    Bad(u64, u64),
    #[error("more than {MAX_REGIONS} memory regions")]
    TooMany,
    #[error("cannot map memory region {0:#x}+{1:#x}: {2}")]
    Map(u64, u64, String),
    #[error("no memory region {0:#x}+{1:#x} to remove")]
    NotFound(u64, u64),
}

impl Memory {
    /// Map `regions` (each with its file).
    pub fn new(regions: Vec<(RegionInfo, File)>) -> Result<Memory, MemoryError> {
        let mut m = Memory::default();
        for (info, file) in regions {
            m = m.with_region(info, file)?;
        }
        Ok(m)
    }

    fn map(info: &RegionInfo, file: File) -> Result<GuestRegionMmap, MemoryError> {
        let bad = || MemoryError::Bad(info.guest_phys_addr, info.size);
        let size = usize::try_from(info.size).map_err(|_| bad())?;
        if size == 0
            || info.guest_phys_addr.checked_add(info.size).is_none()
            || info.user_addr.checked_add(info.size).is_none()
        {
            return Err(bad());
        }
        let map_err = |e: String| MemoryError::Map(info.guest_phys_addr, info.size, e);
        // MAP_SHARED (from_file): the guest's pages themselves, not a copy.
        let region = MmapRegion::from_file(FileOffset::new(file, info.mmap_offset), size)
            .map_err(|e| map_err(e.to_string()))?;
        GuestRegionMmap::new(region, GuestAddress(info.guest_phys_addr))
            .ok_or_else(|| map_err("guest address range overflows".into()))
    }

    /// This table plus one more region.
    pub fn with_region(&self, info: RegionInfo, file: File) -> Result<Memory, MemoryError> {
        if self.regions.len() >= MAX_REGIONS {
            return Err(MemoryError::TooMany);
        }
        if info.size == 0
            || info.guest_phys_addr.checked_add(info.size).is_none()
            || info.user_addr.checked_add(info.size).is_none()
        {
            return Err(MemoryError::Bad(info.guest_phys_addr, info.size));
        }
        // No overflow: both ends were checked when each region was added.
        let overlaps = |a: u64, b: u64, len: u64| a < b + len && b < a + info.size;
        if self.regions.iter().any(|(r, _)| {
            overlaps(info.guest_phys_addr, r.guest_phys_addr, r.size)
                || overlaps(info.user_addr, r.user_addr, r.size)
        }) {
            return Err(MemoryError::Bad(info.guest_phys_addr, info.size));
        }
        let region = Arc::new(Memory::map(&info, file)?);
        let mut regions = self.regions.clone();
        regions.push((info, region));
        Memory::from_parts(regions)
    }

    /// This table less the region `info` names (by guest address and size).
    pub fn without_region(&self, info: &RegionInfo) -> Result<Memory, MemoryError> {
        let mut regions = self.regions.clone();
        let i = regions
            .iter()
            .position(|(r, _)| r.guest_phys_addr == info.guest_phys_addr && r.size == info.size)
            .ok_or(MemoryError::NotFound(info.guest_phys_addr, info.size))?;
        regions.remove(i);
        Memory::from_parts(regions)
    }

    fn from_parts(regions: Vec<(RegionInfo, Arc<GuestRegionMmap>)>) -> Result<Memory, MemoryError> {
        let mmap = GuestMemoryMmap::from_arc_regions(regions.iter().map(|r| r.1.clone()).collect())
            .map_err(|e| MemoryError::Map(0, 0, e.to_string()))?;
        Ok(Memory { mmap, regions })
    }

    /// The guest address of the frontend's virtual address `va` (ring addresses).
    pub fn va_to_gpa(&self, va: u64) -> Option<GuestAddress> {
        self.regions.iter().find_map(|(r, _)| {
            (va >= r.user_addr && va - r.user_addr < r.size)
                .then(|| GuestAddress(r.guest_phys_addr + (va - r.user_addr)))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The host address of guest bytes `[gpa, gpa + len)`, if they lie inside one mapped
    /// region (`len` > 0).
    pub fn host_addr(&self, gpa: u64, len: usize) -> Option<*mut u8> {
        use vm_memory::{GuestMemoryRegion, MemoryRegionAddress};
        let (r, region) = self
            .regions
            .iter()
            .find(|(r, _)| gpa >= r.guest_phys_addr && gpa - r.guest_phys_addr < r.size)?;
        let off = gpa - r.guest_phys_addr;
        if len == 0 || (len as u64) > r.size - off {
            return None;
        }
        region.get_host_address(MemoryRegionAddress(off)).ok()
    }
}

/// The current table, and the handshake that retires old ones (see the module docs).
pub struct SharedMemory {
    current: ArcSwap<Memory>,
    epoch: AtomicU64,
    /// One word per running queue thread: `epoch << 1 | in_pass`.
    passes: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Default for SharedMemory {
    fn default() -> Self {
        SharedMemory {
            current: ArcSwap::from_pointee(Memory::default()),
            epoch: AtomicU64::new(0),
            passes: Mutex::new(Vec::new()),
        }
    }
}

/// A queue thread's registration: its pass word, removed on drop.
pub struct PassToken {
    shared: Arc<SharedMemory>,
    word: Arc<AtomicU64>,
}

impl PassToken {
    /// Start a pass: the table to translate addresses with until [`PassToken::end`].
    pub fn begin(&self) -> Arc<Memory> {
        let e = self.shared.epoch.load(Ordering::SeqCst);
        self.word.store(e << 1 | 1, Ordering::SeqCst);
        self.shared.current.load_full()
    }
    /// End a pass: addresses are no longer translated with the table `begin` returned.
    pub fn end(&self) {
        let w = self.word.load(Ordering::Relaxed);
        self.word.store(w & !1, Ordering::SeqCst);
    }
}

impl Drop for PassToken {
    fn drop(&mut self) {
        let mut v = self.shared.passes.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| !Arc::ptr_eq(w, &self.word));
    }
}

impl SharedMemory {
    pub fn current(&self) -> Arc<Memory> {
        self.current.load_full()
    }

    /// Register a queue thread.
    pub fn token(self: &Arc<Self>) -> PassToken {
        let word = Arc::new(AtomicU64::new(0));
        self.passes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(word.clone());
        PassToken {
            shared: self.clone(),
            word,
        }
    }

    /// Make `m` the table, and return once no queue thread is in a pass that began with an
    /// older one. A pass never waits for I/O, so this takes microseconds; a queue thread stuck
    /// for a second (a bug) is logged and not waited for.
    pub fn publish(&self, m: Memory) {
        self.current.store(Arc::new(m));
        let now = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let words: Vec<Arc<AtomicU64>> = self
            .passes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let deadline = Instant::now() + Duration::from_secs(1);
        for w in words {
            loop {
                let s = w.load(Ordering::SeqCst);
                if s & 1 == 0 || s >> 1 >= now {
                    break;
                }
                if Instant::now() > deadline {
                    tracing::warn!(
                        "a queue thread did not finish its pass within 1 s of a memory table change"
                    );
                    break;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A memfd-backed table with regions at the given (guest address, size), user addresses
    /// at guest address + 1 TiB. Returns the table and the files (to inspect).
    pub(crate) fn memfd_memory(regions: &[(u64, u64)]) -> Memory {
        let mut v = Vec::new();
        for &(gpa, size) in regions {
            let f = memfd(size);
            v.push((
                RegionInfo {
                    guest_phys_addr: gpa,
                    size,
                    user_addr: gpa + (1 << 40),
                    mmap_offset: 0,
                },
                f,
            ));
        }
        Memory::new(v).unwrap()
    }

    pub(crate) fn memfd(size: u64) -> File {
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd we own.
        let f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f
    }

    #[test]
    fn lookups_and_bounds() {
        use vm_memory::Bytes;
        let m = memfd_memory(&[(0, 1 << 20), (4 << 20, 1 << 20)]);
        assert_eq!(m.va_to_gpa((1 << 40) + 5), Some(GuestAddress(5)));
        assert_eq!(
            m.va_to_gpa((1 << 40) + (4 << 20) + 7),
            Some(GuestAddress((4 << 20) + 7))
        );
        assert_eq!(m.va_to_gpa(5), None);
        assert!(m.host_addr(0, 1 << 20).is_some());
        assert!(m.host_addr(1, 1 << 20).is_none(), "past the region's end");
        assert!(m.host_addr(2 << 20, 1).is_none(), "a hole");
        assert!(m.host_addr(0, 0).is_none());
        m.mmap
            .write_slice(b"hello", GuestAddress((4 << 20) + 10))
            .unwrap();
        let p = m.host_addr((4 << 20) + 10, 5).unwrap();
        // SAFETY: 5 bytes inside a mapping m keeps alive; nobody else writes it.
        assert_eq!(unsafe { std::slice::from_raw_parts(p, 5) }, b"hello");
        let mut f = memfd(4096);
        f.write_all(b"x").unwrap();
        let overlap = RegionInfo {
            guest_phys_addr: 4096,
            size: 4096,
            user_addr: 1 << 50,
            mmap_offset: 0,
        };
        assert!(m.with_region(overlap, f).is_err());
        let gone = m
            .without_region(&RegionInfo {
                guest_phys_addr: 0,
                size: 1 << 20,
                user_addr: 0,
                mmap_offset: 0,
            })
            .unwrap();
        assert!(gone.host_addr(0, 1).is_none());
        assert!(gone.host_addr(4 << 20, 1).is_some());
    }

    #[test]
    fn publish_waits_for_passes_that_began_with_the_old_table() {
        let shared = Arc::new(SharedMemory::default());
        let t = shared.token();
        let old = t.begin();
        assert!(old.is_empty());
        let s2 = shared.clone();
        let h = std::thread::spawn(move || {
            s2.publish(memfd_memory(&[(0, 4096)]));
            Instant::now()
        });
        std::thread::sleep(Duration::from_millis(30));
        let ended = Instant::now();
        t.end();
        let published = h.join().unwrap();
        assert!(
            published >= ended,
            "publish returned while a pass used the old table"
        );
        assert!(!t.begin().is_empty());
        t.end();
        // An idle queue does not hold up a publish.
        shared.publish(Memory::default());
        drop(t);
        assert!(shared.passes.lock().unwrap().is_empty());
    }
}

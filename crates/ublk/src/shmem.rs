//! A shared-memory buffer for UBLK_F_SHMEM_ZC (Linux 7.1+): a file (on hugetlbfs, tmpfs or
//! /dev/shm) that an application maps too and does O_DIRECT I/O from. We map it shared and
//! register it; the driver pins its pages, and a request whose pages all lie in it arrives with
//! UBLK_IO_F_SHMEM_ZC and the offset in `addr` instead of being copied: the target reads or
//! writes the application's pages through our mapping. Other requests take the device's
//! ordinary buffer mode.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// The driver's limit on one buffer (the offset in `addr` has 32 bits).
pub const MAX_LEN: u64 = 1 << 32;

/// Our shared mapping of the whole file, unmapped on drop.
#[derive(Debug)]
pub struct ShmemBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, valid until drop; the bytes in it belong to the
// application's requests, which the driver hands to one tag at a time (as request pages in the
// other modes), so sharing the pointer between queue threads adds no data race of ours.
unsafe impl Send for ShmemBuf {}
unsafe impl Sync for ShmemBuf {}

impl ShmemBuf {
    /// Map `path` shared, read-write. Its size must be a non-zero multiple of the page size, at
    /// most 4 GiB. Errors are one line naming the file.
    pub fn open(path: &Path) -> Result<ShmemBuf, String> {
        let what = |e: io::Error| format!("--shmem {}: {e}", path.display());
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(what)?;
        // The driver pins the pages for as long as the device lives: memory that stays put
        // (tmpfs, /dev/shm, hugetlbfs). A disk file's page cache cannot be pinned that way.
        // SAFETY: statfs is plain integers, valid all zero.
        let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: fstatfs fills the struct we own from an open fd.
        if unsafe { libc::fstatfs(f.as_raw_fd(), &mut fs) } != 0 {
            return Err(what(io::Error::last_os_error()));
        }
        if !matches!(fs.f_type, libc::TMPFS_MAGIC | libc::HUGETLBFS_MAGIC) {
            return Err(format!(
                "--shmem {}: not on tmpfs or hugetlbfs (the driver pins the file's pages while the device lives)",
                path.display()
            ));
        }
        let len = f.metadata().map_err(what)?.len();
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        if len == 0 || len % page != 0 || len > MAX_LEN {
            return Err(format!(
                "--shmem {}: its size ({len} bytes) must be a non-zero multiple of {page} bytes, at most 4 GiB",
                path.display()
            ));
        }
        // SAFETY: a fresh shared mapping of `len` bytes of an open file; the kernel picks the
        // address, and nothing else in this process refers to it yet.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(what(io::Error::last_os_error()));
        }
        Ok(ShmemBuf {
            ptr: ptr.cast(),
            len: len as usize,
        })
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start of `len` bytes at `off`, or `None` past the end (a request the driver should
    /// never have matched).
    pub fn at(&self, off: usize, len: usize) -> Option<*mut u8> {
        (off.checked_add(len)? <= self.len).then(|| self.ptr.wrapping_add(off))
    }
}

/// Copy `len` bytes (a multiple of 8, both ends 8-byte aligned) with volatile accesses: one end
/// is memory another process may write at any time.
///
/// # Safety
/// `src..src+len` must be readable and `dst..dst+len` writable, not overlapping, 8-byte aligned.
pub unsafe fn volatile_copy(src: *const u8, dst: *mut u8, len: usize) {
    let (s, d) = (src.cast::<u64>(), dst.cast::<u64>());
    for i in 0..len / 8 {
        // SAFETY: in bounds and aligned, as the caller promises.
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) };
    }
}

impl Drop for ShmemBuf {
    fn drop(&mut self) {
        // SAFETY: our own mapping, made in `open`; nothing refers to it once the last owner
        // (the device and its queues hold it in an Arc) drops it.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

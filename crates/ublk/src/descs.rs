//! The read-only descriptor array the driver fills for one queue, one `ublksrv_io_desc` per tag,
//! mapped from the char device.

use std::io;
use std::os::fd::RawFd;

use crate::uapi::*;

pub(crate) struct DescArray {
    ptr: *const ublksrv_io_desc,
    len: usize,
    map_len: usize,
}

impl DescArray {
    pub(crate) fn map(fd: RawFd, q_id: u16, depth: u16) -> io::Result<DescArray> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let map_len =
            (depth as usize * std::mem::size_of::<ublksrv_io_desc>()).next_multiple_of(page);
        let off = desc_mmap_offset(q_id, page);
        // SAFETY: a shared read-only mapping of the char device at the driver's documented offset;
        // the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                off as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(DescArray {
            ptr: p.cast(),
            len: depth as usize,
            map_len,
        })
    }

    /// The descriptor of `tag`, read after its fetch completed (the driver wrote it before
    /// posting the completion and does not touch it until we commit).
    pub(crate) fn get(&self, tag: u16) -> ublksrv_io_desc {
        assert!((tag as usize) < self.len);
        // SAFETY: in bounds of the mapping; volatile because the kernel writes it.
        unsafe { std::ptr::read_volatile(self.ptr.add(tag as usize)) }
    }
}

impl Drop for DescArray {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr as *mut _, self.map_len) };
    }
}

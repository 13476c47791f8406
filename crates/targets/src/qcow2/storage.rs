//! imago's `Storage` on our io_uring runtime: the image file (and its backing files) read and
//! written by the ring of whichever queue thread asks, never by a blocking call or another
//! runtime.
//!
//! A file in memory (tmpfs, ramfs) that io_uring could only serve through a worker thread per
//! request is read and written with blocking `preadv`/`pwritev` on the queue thread instead,
//! as the file target does (`file::inline_by_default`): a file in memory never waits for a
//! device, and the hand-off to the worker and back cost three times the CPU of the request.
//!
//! imago hands its storage layer borrowed slices (`IoVectorMut<'_>`) through `async unsafe fn`s.
//! Those reads and writes are `rt::fs::readv_at`/`writev_at`, whose futures, when dropped (imago
//! drops sibling requests when one fails), wait for the kernel to let go of the memory before the
//! borrow can end. imago never leaks a future, so the borrowed memory is never written after its
//! owner got it back. A write whose future was dropped has thus settled too, which is why
//! `settle_writes` can keep imago's default (nothing to wait for).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use imago::io_buffers::{IoVector, IoVectorMut};
use imago::storage::PreallocateMode;
use imago::storage::drivers::CommonStorageHelper;
use imago::{Storage, StorageCreateOptions, StorageOpenOptions};

/// A file or block device driven by the calling thread's io_uring runtime.
#[derive(Debug)]
pub struct UringFile {
    file: File,
    path: PathBuf,
    /// O_DIRECT alignment (1 when buffered).
    align: usize,
    /// Blocking calls on the calling thread instead of io_uring (a file in memory).
    inline: bool,
    blockdev: bool,
    /// The file system refused FALLOC_FL_ZERO_RANGE (tmpfs): go straight to the fallback.
    no_zero_range: AtomicBool,
    /// ... and FALLOC_FL_PUNCH_HOLE too (ramfs): write zeroes.
    no_punch: AtomicBool,
    /// Grows with writes past the end; nothing else changes the file meanwhile.
    size: AtomicU64,
    helper: CommonStorageHelper,
}

impl fmt::Display for UringFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

/// The O_DIRECT alignment the file system wants (statx DIOALIGN), else a page.
fn dio_alignment(file: &File) -> usize {
    // SAFETY: statx fills the struct through a valid pointer; empty path + AT_EMPTY_PATH = fd.
    let stx = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        );
        (r == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0).then_some(stx)
    };
    match stx {
        Some(s) if s.stx_dio_offset_align != 0 => {
            (s.stx_dio_offset_align.max(s.stx_dio_mem_align) as usize).max(512)
        }
        _ => 4096,
    }
}

/// BLKGETSIZE64 = _IOR(0x12, 114, size_t)
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn file_size(file: &File, blockdev: bool) -> io::Result<u64> {
    if !blockdev {
        return Ok(file.metadata()?.len());
    }
    let mut size = 0u64;
    // SAFETY: the ioctl writes one u64 through a valid pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

impl UringFile {
    fn open_with(opts: &StorageOpenOptions, create: bool) -> io::Result<UringFile> {
        let path = opts
            .get_filename()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
            .to_path_buf();
        let mut o = OpenOptions::new();
        o.read(true).write(opts.get_writable() || create);
        if create {
            o.create_new(true);
        }
        let direct = opts.get_direct();
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        let file = o
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let blockdev = file.metadata()?.file_type().is_block_device();
        let size = file_size(&file, blockdev)?;
        let inline = !blockdev && crate::file::inline_by_default(file.as_raw_fd()).0;
        Ok(UringFile {
            inline,
            align: if direct { dio_alignment(&file) } else { 1 },
            file,
            path,
            blockdev,
            no_zero_range: AtomicBool::new(false),
            no_punch: AtomicBool::new(false),
            size: AtomicU64::new(size),
            helper: CommonStorageHelper::default(),
        })
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// fallocate(2) over `[offset, offset + length)` with `mode`. A blocking call for a file in
    /// memory: io_uring runs every fallocate on a worker thread, a hand-off per call (and per
    /// cluster allocated, through write-zeroes), where tmpfs only works in memory (a large
    /// punch frees many pages, but waits for no device).
    async fn fallocate(&self, mode: i32, offset: u64, length: u64) -> io::Result<()> {
        if !self.inline {
            return rt::fs::fallocate(self.fd(), mode, offset, length).await;
        }
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(length))
        else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: a plain system call on our own descriptor; no memory is passed.
            if unsafe { libc::fallocate(self.fd(), mode, off, len) } == 0 {
                return Ok(());
            }
            match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => {}
                e => return Err(e),
            }
        }
    }

    /// Write zeroes over the range from the thread's shared zero buffer.
    async fn write_zero_bytes(&self, offset: u64, length: u64) -> io::Result<()> {
        let z = rt::zeroes::zeroes();
        for (at, buf) in z.pieces(length) {
            if self.inline {
                let iov = vec![libc::iovec {
                    iov_base: buf.as_slice().as_ptr() as *mut libc::c_void,
                    iov_len: buf.len(),
                }];
                // (The kernel only reads the buffer, which outlives the call.)
                if blocking_rw(self.fd(), iov, offset + at, true)? < buf.len() as u64 {
                    return Err(io::Error::from_raw_os_error(libc::EIO));
                }
            } else {
                rt::fs::write_all_at(self.fd(), buf, offset + at, 0).await?;
            }
        }
        Ok(())
    }
}

/// The most iovecs one readv/writev takes.
const IOV_MAX: usize = 1024;

/// Blocking preadv/pwritev over all of `iov` at `off`; returns the bytes moved (short only at
/// end of file for a read). For a file in memory, where the call never waits for a device.
fn blocking_rw(fd: RawFd, mut iov: Vec<libc::iovec>, off: u64, write: bool) -> io::Result<u64> {
    let mut done = 0u64;
    while !iov.is_empty() {
        let n = iov.len().min(IOV_MAX) as i32;
        let at = (off + done) as libc::off_t;
        // SAFETY: the iovecs describe memory imago lends us for the call (see the module docs);
        // the call returns before we do.
        let r = unsafe {
            if write {
                libc::pwritev(fd, iov.as_ptr(), n, at)
            } else {
                libc::preadv(fd, iov.as_ptr(), n, at)
            }
        };
        match r {
            0 => break,
            r if r > 0 => {
                done += r as u64;
                advance(&mut iov, r as usize);
            }
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => {}
                e => return Err(e),
            },
        }
    }
    Ok(done)
}

/// Skip `n` bytes of `iov` (after a short transfer).
fn advance(iov: &mut Vec<libc::iovec>, mut n: usize) {
    while n > 0 && !iov.is_empty() {
        let first = &mut iov[0];
        if n >= first.iov_len {
            n -= first.iov_len;
            iov.remove(0);
        } else {
            first.iov_base = first.iov_base.cast::<u8>().wrapping_add(n).cast();
            first.iov_len -= n;
            n = 0;
        }
    }
}

impl Storage for UringFile {
    async fn open(opts: StorageOpenOptions) -> io::Result<Self> {
        UringFile::open_with(&opts, false)
    }

    async fn create_open(opts: StorageCreateOptions) -> io::Result<Self> {
        let size = opts.get_size();
        let f = UringFile::open_with(&opts.get_open_options(), true)?;
        if size > 0 {
            f.resize(size, PreallocateMode::None).await?;
        }
        Ok(f)
    }

    fn mem_align(&self) -> usize {
        self.align
    }

    fn req_align(&self) -> usize {
        self.align
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.size.load(Ordering::Relaxed))
    }

    /// Relative names are relative to this file's directory, as QEMU resolves backing files.
    fn resolve_relative_path<P: AsRef<Path>>(&self, relative: P) -> io::Result<PathBuf> {
        let r = relative.as_ref();
        if r.is_absolute() {
            return Ok(r.to_path_buf());
        }
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        Ok(dir.join(r))
    }

    fn get_filename(&self) -> Option<PathBuf> {
        Some(self.path.clone())
    }

    async unsafe fn pure_readv(&self, bufv: IoVectorMut<'_>, offset: u64) -> io::Result<()> {
        let want = bufv.len();
        // SAFETY: the iovecs describe `bufv`'s slices, which imago lends us for this call.
        let mut iov = unsafe { bufv.as_iovec() }.to_vec();
        let mut done = 0u64;
        if self.inline {
            done = blocking_rw(self.fd(), iov.clone(), offset, false)?;
            advance(&mut iov, done as usize);
        }
        while done < want {
            // SAFETY: `bufv` is borrowed for this whole function and so outlives the op (whose
            // drop waits for the kernel); imago does not touch it until we return.
            let part = iov[..iov.len().min(IOV_MAX)].to_vec();
            let n = unsafe { rt::fs::readv_at(self.fd(), part, offset + done) }.await?;
            if n == 0 {
                // Past the end of the file: zeroes, as the trait wants.
                for v in &iov {
                    // SAFETY: the kernel is done with these bytes; they are `bufv`'s.
                    unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
                }
                return Ok(());
            }
            done += n as u64;
            advance(&mut iov, n);
        }
        Ok(())
    }

    async unsafe fn pure_writev(&self, bufv: IoVector<'_>, offset: u64) -> io::Result<()> {
        let want = bufv.len();
        // SAFETY: as in `pure_readv`.
        let mut iov = unsafe { bufv.as_iovec() }.to_vec();
        let mut done = 0u64;
        if self.inline {
            done = blocking_rw(self.fd(), iov.clone(), offset, true)?;
            advance(&mut iov, done as usize);
        }
        while done < want {
            // SAFETY: as in `pure_readv`; the kernel only reads these bytes.
            let part = iov[..iov.len().min(IOV_MAX)].to_vec();
            let n = unsafe { rt::fs::writev_at(self.fd(), part, offset + done, 0) }.await?;
            if n == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            done += n as u64;
            advance(&mut iov, n);
        }
        self.size.fetch_max(offset + want, Ordering::Relaxed);
        Ok(())
    }

    async unsafe fn pure_write_zeroes(&self, offset: u64, length: u64) -> io::Result<()> {
        let unsupported =
            |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL));
        if self.blockdev {
            match self
                .fallocate(
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset,
                    length,
                )
                .await
            {
                Err(e) if unsupported(&e) => self.write_zero_bytes(offset, length).await?,
                r => r?,
            }
            return Ok(());
        }
        let end = offset + length;
        let mut zero_from = offset; // what is left to zero by writing
        if !self.no_zero_range.load(Ordering::Relaxed) {
            match self
                .fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, length)
                .await
            {
                Ok(()) => zero_from = end,
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.no_zero_range.store(true, Ordering::Relaxed)
                }
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        // No ZERO_RANGE (tmpfs): inside the file a punched hole reads as zeroes, without
        // copying a cluster of zeroes per allocation; past its end, allocating extends it.
        if zero_from < end && !self.no_punch.load(Ordering::Relaxed) {
            let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            match self.fallocate(punch, offset, length).await {
                Ok(()) => {
                    zero_from = end.min(self.size.load(Ordering::Relaxed)).max(offset);
                    if zero_from < end {
                        match self.fallocate(0, zero_from, end - zero_from).await {
                            Ok(()) => zero_from = end,
                            // (Past the end: nothing there to zero, writing extends the file.)
                            Err(e) if unsupported(&e) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    self.no_punch.store(true, Ordering::Relaxed)
                }
                Err(e) if unsupported(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if zero_from < end {
            self.write_zero_bytes(zero_from, end - zero_from).await?;
        }
        self.size.fetch_max(end, Ordering::Relaxed);
        Ok(())
    }

    async unsafe fn pure_discard(&self, offset: u64, length: u64) -> io::Result<()> {
        // Advisory: a file system that cannot punch holes keeps the data, which is allowed.
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match self.fallocate(mode, offset, length).await {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r,
        }
    }

    /// Nothing is buffered in userspace.
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    async fn sync(&self) -> io::Result<()> {
        rt::fs::fsync(self.fd(), true).await
    }

    async unsafe fn invalidate_cache(&self) -> io::Result<()> {
        Ok(())
    }

    fn get_storage_helper(&self) -> &CommonStorageHelper {
        &self.helper
    }

    async fn resize(&self, new_size: u64, prealloc_mode: PreallocateMode) -> io::Result<()> {
        if self.blockdev {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cannot resize a block device",
            ));
        }
        let old = self.size.load(Ordering::Relaxed);
        self.file.set_len(new_size)?;
        if new_size > old && prealloc_mode != PreallocateMode::None {
            self.fallocate(0, old, new_size - old).await?;
        }
        self.size.store(new_size, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write-zeroes over old data and past the end: zeroes where asked, the data around them
    /// kept, the file grown; on tmpfs (no ZERO_RANGE: holes inside the file, allocation past its
    /// end, blocking calls) and on the disk under /var/tmp (ZERO_RANGE, through the ring).
    #[test]
    fn write_zeroes_zeroes_keeps_the_rest_and_grows_the_file() {
        use std::os::unix::fs::MetadataExt;
        const K: u64 = 1024;
        for dir in ["/dev/shm", "/var/tmp"] {
            if !Path::new(dir).is_dir() {
                continue;
            }
            let d = tempfile::tempdir_in(dir).unwrap();
            let path = d.path().join("z.img");
            std::fs::write(&path, vec![0xa5u8; 256 << 10]).unwrap();
            let opts = StorageOpenOptions::new().filename(&path).write(true);
            let f = UringFile::open_with(&opts, false).unwrap();
            // Inside, unaligned inside, across the end (the second call goes straight to the
            // fallback where ZERO_RANGE was refused).
            let ranges = [(64 * K, 64 * K), (130 * K + 100, 3000), (192 * K, 128 * K)];
            rt::Runtime::new().unwrap().block_on(async {
                for (off, len) in ranges {
                    // SAFETY: no borrowed buffers are involved.
                    unsafe { f.pure_write_zeroes(off, len) }.await.unwrap();
                }
            });
            let got = std::fs::read(&path).unwrap();
            assert_eq!(
                got.len() as u64,
                320 * K,
                "{dir}: the file grows to the zeroed end"
            );
            assert_eq!(f.size().unwrap(), 320 * K, "{dir}");
            for (i, &b) in got.iter().enumerate() {
                let i = i as u64;
                let zeroed = ranges.iter().any(|&(o, l)| (o..o + l).contains(&i));
                assert_eq!(b, if zeroed { 0 } else { 0xa5 }, "{dir}: byte {i}");
            }
            let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
            if dir == "/dev/shm" {
                assert!(f.inline, "tmpfs is served inline");
            }
            if f.inline {
                assert!(
                    f.no_zero_range.load(Ordering::Relaxed),
                    "tmpfs has no ZERO_RANGE"
                );
                // Holes where the file had data (64 KiB and 64 KiB), pages past the old end:
                // written zeroes would leave all 320 KiB allocated.
                assert!(allocated <= 200 * K, "{dir}: {allocated} bytes allocated");
            } else {
                // (ext4, xfs, btrfs: the disk file systems this would run on.)
                assert!(
                    !f.no_zero_range.load(Ordering::Relaxed),
                    "{dir}: ZERO_RANGE works"
                );
            }
        }
    }

    #[test]
    fn advance_skips_whole_and_partial_iovecs() {
        let mut a = [0u8; 10];
        let mut b = [0u8; 10];
        let mut iov = vec![
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: 10,
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: 10,
            },
        ];
        advance(&mut iov, 13);
        assert_eq!(iov.len(), 1);
        assert_eq!(iov[0].iov_len, 7);
        assert_eq!(iov[0].iov_base as usize, b.as_ptr() as usize + 3);
        advance(&mut iov, 7);
        assert!(iov.is_empty());
    }
}

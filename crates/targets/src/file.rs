//! `file`: a regular file or a block device, through io_uring. O_DIRECT by default (no double
//! caching; the page cache of the host is not our cache). FLUSH is fdatasync, FUA is RWF_DSYNC,
//! DISCARD punches a hole, WRITE_ZEROES zeroes a range with fallocate.
//!
//! Inline I/O: io_uring can only run a read or write in the submitting thread when the file
//! system supports non-blocking attempts (FMODE_NOWAIT); tmpfs does not, so io_uring hands
//! every request to one of its worker threads and back, two thread wake-ups per request. For
//! files in memory (tmpfs, ramfs) the target therefore does the I/O with plain pread/pwrite on
//! the queue thread whenever the buffer is one the CPU can reach ([`InlineIo`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::kind::{Info, Opt, TargetKind, Value};
use crate::{Caps, Extent, Geometry, IoBuf, OpenError, Target, TargetQueue};

pub struct FileTarget {
    file: Arc<File>,
    path: PathBuf,
    /// `geo.size` as opened; `size` is the size now (online resize may grow it).
    geo: Geometry,
    size: AtomicU64,
    direct: bool,
    blockdev: bool,
    /// Why `auto` would (or would not) serve inline, for the log.
    inline_auto: (bool, &'static str),
}

/// When the file target does its I/O with blocking calls on the queue thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InlineIo {
    /// Inline for files in memory (tmpfs, ramfs) that io_uring cannot read or write without a
    /// worker thread; io_uring otherwise.
    #[default]
    Auto,
    /// Always inline when the buffer allows it: fast on memory, but a slow backing store stalls
    /// every request of the queue behind the one being served.
    On,
    /// Always io_uring.
    Off,
}

impl InlineIo {
    pub fn name(self) -> &'static str {
        match self {
            InlineIo::Auto => "auto",
            InlineIo::On => "on",
            InlineIo::Off => "off",
        }
    }
}

/// statfs magic numbers of file systems whose data lives in RAM.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// Is the file system holding `fd` one whose data lives in RAM? `None` if fstatfs fails.
fn on_memory_fs(fd: RawFd) -> Option<bool> {
    // SAFETY: fstatfs fills the struct through a valid pointer.
    let magic = unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(fd, &mut st) != 0 {
            return None;
        }
        st.f_type as i64
    };
    Some(magic == TMPFS_MAGIC || magic == RAMFS_MAGIC)
}

/// Would `auto` serve this file inline? Only a file in memory (a blocking call never waits for
/// a device) whose file system io_uring cannot drive without a worker thread.
pub(crate) fn inline_by_default(fd: RawFd) -> (bool, &'static str) {
    match on_memory_fs(fd) {
        None => return (false, "file system unknown"),
        Some(false) => return (false, "not a file system in memory"),
        Some(true) => {}
    }
    // RWF_NOWAIT is refused with EOPNOTSUPP exactly when the file lacks FMODE_NOWAIT, the test
    // io_uring uses to decide to hand a read or write to a worker thread.
    let mut probe = IoBuf::with_capacity(4096);
    let iov = libc::iovec {
        iov_base: probe.as_mut_slice().as_mut_ptr().cast(),
        iov_len: 4096,
    };
    // SAFETY: one iovec over our own 4 KiB buffer, aligned for O_DIRECT.
    let r = unsafe { libc::preadv2(fd, &iov, 1, 0, libc::RWF_NOWAIT) };
    if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) {
        (
            true,
            "in memory, and io_uring would use a worker thread per request",
        )
    } else {
        (
            false,
            "in memory, but io_uring can serve it without a worker thread",
        )
    }
}

/// BLKGETSIZE64 = _IOR(0x12, 114, size_t)
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// BLKSSZGET = _IO(0x12, 104)
const BLKSSZGET: libc::c_ulong = 0x1268;

fn blockdev_size(fd: RawFd) -> io::Result<(u64, u32)> {
    let mut size: u64 = 0;
    let mut ssz: libc::c_int = 0;
    // SAFETY: both ioctls write one integer of the given type through a valid pointer.
    unsafe {
        if libc::ioctl(fd, BLKGETSIZE64, &mut size) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(fd, BLKSSZGET, &mut ssz) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((size, ssz.max(512) as u32))
}

/// The O_DIRECT offset alignment the file system wants (statx DIOALIGN, Linux 6.1+), if known.
fn dio_alignment(fd: RawFd) -> Option<u32> {
    // SAFETY: statx fills the struct through a valid pointer; empty path + AT_EMPTY_PATH = fd.
    unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let r = libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        );
        if r == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0 {
            Some(stx.stx_dio_offset_align)
        } else {
            None
        }
    }
}

impl FileTarget {
    /// Open `path` for a device of `size` bytes (default: the file's size). `buffered` skips
    /// O_DIRECT. When the file system refuses O_DIRECT we fall back to buffered I/O and warn.
    pub fn open(
        path: &Path,
        size: Option<u64>,
        buffered: bool,
        read_only: bool,
    ) -> Result<FileTarget, OpenError> {
        let ctx = |e: io::Error| OpenError::Io(format!("cannot open {}: {}", path.display(), e));
        let meta = std::fs::metadata(path).map_err(ctx)?;
        let blockdev = meta.file_type().is_block_device();
        if !meta.is_file() && !blockdev {
            return Err(OpenError::Invalid(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        }
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(!read_only);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(path)
        };
        let (file, direct) = if buffered {
            (open(false).map_err(ctx)?, false)
        } else {
            match open(true) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(
                        "{}: the file system refuses O_DIRECT; using buffered I/O (pass --buffered to choose this)",
                        path.display()
                    );
                    (open(false).map_err(ctx)?, false)
                }
                Err(e) => return Err(ctx(e)),
            }
        };
        let (file_size, mut lbs) = if blockdev {
            blockdev_size(file.as_raw_fd()).map_err(ctx)?
        } else {
            (meta.len(), 512)
        };
        if direct && let Some(a) = dio_alignment(file.as_raw_fd()) {
            lbs = lbs.max(a).clamp(512, 4096);
        }
        let size = match size {
            Some(s) if s > file_size => {
                return Err(OpenError::Invalid(format!(
                    "{} holds {} bytes, smaller than --size {} (grow it first, e.g. truncate -s {})",
                    path.display(),
                    file_size,
                    s,
                    s
                )));
            }
            Some(s) => s,
            None => file_size,
        };
        if size == 0 {
            return Err(OpenError::Invalid(format!(
                "{} is empty; give it a size first (truncate -s 1G {})",
                path.display(),
                path.display()
            )));
        }
        if size % lbs as u64 != 0 {
            return Err(OpenError::Invalid(format!(
                "size {} of {} is not a multiple of the {}-byte block size",
                size,
                path.display(),
                lbs
            )));
        }
        let caps = Caps {
            flush: true,
            fua: true,
            discard: !read_only,
            write_zeroes: !read_only,
            read_only,
            rotational: false,
            needs_cpu_access: false,
            ignores_data: false,
            inline_io: false,
            consistent_across_queues: true,
        };
        let inline_auto = if blockdev {
            (false, "a block device")
        } else {
            inline_by_default(file.as_raw_fd())
        };
        let mut t = FileTarget {
            file: Arc::new(file),
            path: path.to_path_buf(),
            geo: Geometry {
                size,
                logical_block: lbs,
                physical_block: lbs.max(4096),
                caps,
            },
            size: AtomicU64::new(size),
            direct,
            blockdev,
            inline_auto,
        };
        t.set_inline_io(InlineIo::Auto);
        Ok(t)
    }

    /// Choose when to serve inline (see [`InlineIo`]); `open` starts at `Auto`.
    pub fn set_inline_io(&mut self, mode: InlineIo) {
        self.geo.caps.inline_io = match mode {
            InlineIo::Auto => self.inline_auto.0,
            InlineIo::On => true,
            InlineIo::Off => false,
        };
    }

    /// Bytes the file (or block device) holds now.
    fn backing_len(&self) -> io::Result<u64> {
        if self.blockdev {
            Ok(blockdev_size(self.file.as_raw_fd())?.0)
        } else {
            Ok(self.file.metadata()?.len())
        }
    }

    /// Whether requests are served inline, and why `auto` decided as it did.
    pub fn inline_io(&self) -> (bool, &'static str) {
        (self.geo.caps.inline_io, self.inline_auto.1)
    }

    pub fn is_direct(&self) -> bool {
        self.direct
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `-t file --path FILE [--size N] [--buffered] [--inline-io WHEN] [--read-only]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub buffered: bool,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub inline_io: InlineIo,
}

impl TargetKind for FileTarget {
    const INFO: Info = Info {
        name: "file",
        about: "a regular file or block device, through io_uring (O_DIRECT unless --buffered)",
        opts: &[
            Opt::new("path", Value::Path, "FILE", "the file or block device")
                .short('f')
                .required(),
            Opt::new(
                "size",
                Value::Size,
                "SIZE",
                "device size, at most the file's (default: the file's size)",
            )
            .short('s'),
            Opt::flag("buffered", "use the page cache instead of O_DIRECT"),
            Opt::new(
                "inline-io",
                Value::Choice(&["auto", "on", "off"]),
                "WHEN",
                "blocking reads and writes on the queue threads instead of io_uring: auto (files \
                 on tmpfs or ramfs, which io_uring would hand to a worker thread per request), \
                 on (always; a slow backing store then stalls the queue), off",
            ),
        ],
    };
    type Config = FileConfig;
    fn open(c: &FileConfig) -> Result<FileTarget, OpenError> {
        let mut t = FileTarget::open(&c.path, c.size, c.buffered, c.read_only)?;
        t.set_inline_io(c.inline_io);
        Ok(t)
    }
    fn describe(c: &FileConfig) -> String {
        format!(
            "file {}{}{}",
            c.path.display(),
            if c.buffered { " (buffered)" } else { "" },
            match c.inline_io {
                InlineIo::Auto => String::new(),
                m => format!(" (inline-io {})", m.name()),
            }
        )
    }
}

impl Target for FileTarget {
    type Queue = FileQueue;
    fn geometry(&self) -> Geometry {
        Geometry {
            size: self.size.load(Ordering::Acquire),
            ..self.geo
        }
    }
    /// Grows a regular file (sparse, like `truncate -s`) when it is smaller than `size`; a
    /// block device must already hold `size` bytes.
    fn resize(&self, size: u64) -> io::Result<()> {
        let lbs = self.geo.logical_block as u64;
        if !size.is_multiple_of(lbs) {
            return Err(io::Error::other(format!(
                "size {size} is not a multiple of the {lbs}-byte block size"
            )));
        }
        if size < self.size.load(Ordering::Acquire) {
            return Err(io::Error::other("the file target does not shrink"));
        }
        let have = self.backing_len()?;
        if have < size {
            if self.blockdev || self.geo.caps.read_only {
                return Err(io::Error::other(format!(
                    "{} holds {have} bytes, fewer than {size}{}",
                    self.path.display(),
                    if self.blockdev {
                        ": grow the block device first"
                    } else {
                        " and is open read-only"
                    }
                )));
            }
            self.file.set_len(size).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot grow {}: {e}", self.path.display()),
                )
            })?;
        }
        self.size.store(size, Ordering::Release);
        Ok(())
    }
    fn backing_size(&self) -> io::Result<Option<u64>> {
        let lbs = self.geo.logical_block as u64;
        Ok(Some(self.backing_len()? / lbs * lbs))
    }
    fn notes(&self) -> Vec<String> {
        let (on, why) = self.inline_io();
        vec![format!(
            "{}: {} ({why})",
            self.path.display(),
            if on {
                "reads and writes inline on the queue threads"
            } else {
                "reads and writes through io_uring"
            }
        )]
    }
    fn open_queue(&self, _qid: u16) -> io::Result<FileQueue> {
        Ok(FileQueue {
            file: self.file.clone(),
            blockdev: self.blockdev,
            inline: self.geo.caps.inline_io,
        })
    }
}

pub struct FileQueue {
    file: Arc<File>,
    blockdev: bool,
    /// Serve CPU-reachable buffers with blocking calls on this thread.
    inline: bool,
}

impl FileQueue {
    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Zeroes by writing, for file systems without fallocate modes. The zeroes come from the
    /// thread's shared zero buffer: a flood of such requests allocates nothing per request.
    async fn write_zero_buffers(&self, off: u64, len: u64) -> io::Result<()> {
        let z = rt::zeroes::zeroes();
        for (at, buf) in z.pieces(len) {
            rt::fs::write_all_at(self.fd(), buf, off + at, 0).await?;
        }
        Ok(())
    }
}

impl TargetQueue for FileQueue {
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        if self.inline && buf.is_cpu_accessible() {
            let b = buf.as_mut_slice();
            let n = rt::fs::pread_full(self.fd(), b, off)?;
            b[n..].fill(0); // past the end of the file
            return Ok(());
        }
        rt::fs::read_exact_at(self.fd(), buf, off).await
    }
    async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> io::Result<()> {
        let flags = if fua { libc::RWF_DSYNC } else { 0 };
        if self.inline && buf.is_cpu_accessible() {
            return rt::fs::pwrite_all(self.fd(), buf.as_slice(), off, flags);
        }
        rt::fs::write_all_at(self.fd(), buf, off, flags).await
    }
    async fn flush(&self) -> io::Result<()> {
        rt::fs::fsync(self.fd(), true).await
    }
    async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match rt::fs::fallocate(self.fd(), mode, off, len).await {
            // Discard is advisory; a file system that cannot punch still reads back old data
            // correctly, but we promise zeroes, so write them.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zero_buffers(off, len).await
            }
            r => r,
        }
    }
    async fn write_zeroes(&self, off: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap || self.blockdev {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match rt::fs::fallocate(self.fd(), mode, off, len).await {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) =>
            {
                self.write_zero_buffers(off, len).await
            }
            r => r,
        }
    }
    async fn block_status(&self, off: u64, len: u64) -> io::Result<Vec<Extent>> {
        if self.blockdev {
            return Ok(vec![Extent {
                len,
                hole: false,
                zero: false,
            }]);
        }
        // SEEK_DATA/SEEK_HOLE are quick metadata lookups; done synchronously.
        let fd = self.fd();
        let end = off + len;
        // SAFETY: lseek on our own fd.
        let data = unsafe { libc::lseek(fd, off as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                // No data after off: all hole.
                Some(libc::ENXIO) => Ok(vec![Extent {
                    len,
                    hole: true,
                    zero: true,
                }]),
                _ => Ok(vec![Extent {
                    len,
                    hole: false,
                    zero: false,
                }]),
            };
        }
        let data = data as u64;
        if data > off {
            return Ok(vec![Extent {
                len: data.min(end) - off,
                hole: true,
                zero: true,
            }]);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, off as i64, libc::SEEK_HOLE) };
        // `off` is data, so the next hole (or end of file) lies past it.
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).clamp(off + 1, end)
        };
        Ok(vec![Extent {
            len: hole - off,
            hole: false,
            zero: false,
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rt::Runtime;

    #[test]
    fn grows_the_file_online_and_refuses_what_it_cannot() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("grow.img");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let t = FileTarget::open(&path, None, true, false).unwrap();
        t.resize(4 << 20).unwrap();
        assert_eq!(t.geometry().size, 4 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
        let q = t.open_queue(0).unwrap();
        Runtime::new().unwrap().block_on(async {
            let mut r = IoBuf::with_capacity(4096);
            q.read((4 << 20) - 4096, &mut r).await.unwrap();
            assert!(r.as_slice().iter().all(|&b| b == 0));
            q.read(0, &mut r).await.unwrap();
            assert!(r.as_slice().iter().all(|&b| b == 7));
        });
        let e = t.resize(2 << 20).unwrap_err().to_string();
        assert_eq!(e, "the file target does not shrink");
        let e = t.resize((8 << 20) + 100).unwrap_err().to_string();
        assert!(
            e.contains("not a multiple of the 512-byte block size"),
            "{e}"
        );
        // Within a file larger than --size: the file is left as it is.
        let small = FileTarget::open(&path, Some(1 << 20), true, false).unwrap();
        small.resize(2 << 20).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
        // Read-only: cannot grow the file.
        let ro = FileTarget::open(&path, None, true, true).unwrap();
        let e = ro.resize(8 << 20).unwrap_err().to_string();
        assert!(
            e.ends_with("fewer than 8388608 and is open read-only"),
            "{e}"
        );
        assert_eq!(ro.geometry().size, 4 << 20);
    }

    #[test]
    fn round_trip_flush_discard_zeroes() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let p = dir.path().join("disk.img");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let t = FileTarget::open(&p, None, false, false).unwrap();
        assert_eq!(t.geometry().size, 1 << 20);
        let q = t.open_queue(0).unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut w = IoBuf::with_capacity(65536);
            w.as_mut_slice()
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 199) as u8 + 1);
            q.write(8192, &w, true).await.unwrap();
            q.flush().await.unwrap();
            let mut r = IoBuf::with_capacity(65536);
            q.read(8192, &mut r).await.unwrap();
            assert_eq!(r.as_slice(), w.as_slice());
            q.discard(8192, 4096).await.unwrap();
            q.write_zeroes(16384, 4096, false).await.unwrap();
            q.read(8192, &mut r).await.unwrap();
            assert!(r.as_slice()[..4096].iter().all(|&b| b == 0));
            assert_eq!(&r.as_slice()[4096..8192], &w.as_slice()[4096..8192]);
            assert!(r.as_slice()[8192..12288].iter().all(|&b| b == 0));
            assert_eq!(&r.as_slice()[12288..], &w.as_slice()[12288..]);
            let ext = q.block_status(0, 4096).await.unwrap();
            assert!(ext[0].hole, "{ext:?}");
        });
        // The bytes are really in the file.
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes[8192 + 4096 + 5], ((4096 + 5) % 199) as u8 + 1);
    }

    /// tmpfs cannot zero a range in place (no FALLOC_FL_ZERO_RANGE), so write-zeroes without
    /// unmap writes zeroes: more than one buffer of them, two requests at once.
    #[test]
    fn write_zeroes_by_writing_where_the_file_system_cannot() {
        if !std::path::Path::new("/dev/shm").is_dir() {
            return;
        }
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let p = shm.path().join("disk.img");
        std::fs::write(&p, vec![0xeeu8; 4 << 20]).unwrap();
        let t = FileTarget::open(&p, None, true, false).unwrap();
        let q = std::rc::Rc::new(t.open_queue(0).unwrap());
        let (off, len) = (4096u64, (2u64 << 20) + 8192);
        Runtime::new().unwrap().block_on(async {
            // Two at once share the zero buffer.
            let tasks: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
                    rt::spawn(async move { q.write_zeroes(off, len, false).await })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes[..off as usize].iter().all(|&b| b == 0xee));
        assert!(
            bytes[off as usize..(off + len) as usize]
                .iter()
                .all(|&b| b == 0)
        );
        assert!(bytes[(off + len) as usize..].iter().all(|&b| b == 0xee));
    }

    #[test]
    fn zeroing_by_writing_covers_exactly_the_range() {
        // The fallback for file systems without fallocate modes, called directly: pieces of
        // the shared zero buffer, O_DIRECT-aligned, over a range that is not a power of two.
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, vec![0xa5u8; 4 << 20]).unwrap();
        let t = FileTarget::open(&p, None, false, false).unwrap();
        let q = t.open_queue(0).unwrap();
        let (off, len) = (8192u64, (2u64 << 20) + 12288);
        Runtime::new()
            .unwrap()
            .block_on(q.write_zero_buffers(off, len))
            .unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let (a, b) = (off as usize, (off + len) as usize);
        assert!(bytes[..a].iter().all(|&x| x == 0xa5));
        assert!(bytes[a..b].iter().all(|&x| x == 0));
        assert!(bytes[b..].iter().all(|&x| x == 0xa5));
    }

    #[test]
    fn inline_io_round_trip_and_auto_choice() {
        // A disk file system (when the temp dir is on one): auto goes through io_uring.
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let p = dir.path().join("disk.img");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let mut t = FileTarget::open(&p, None, false, false).unwrap();
        let in_memory = on_memory_fs(File::open(&p).unwrap().as_raw_fd()).unwrap();
        if !in_memory {
            assert_eq!(t.inline_io(), (false, "not a file system in memory"));
        }
        t.set_inline_io(InlineIo::On);
        assert!(t.geometry().caps.inline_io);
        let q = t.open_queue(0).unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut w = IoBuf::with_capacity(8192);
            w.as_mut_slice().fill(0x5a);
            q.write(4096, &w, true).await.unwrap();
            // Reading past the end of the file: the tail reads as zeroes.
            let mut r = IoBuf::with_capacity(8192);
            r.as_mut_slice().fill(1);
            q.read((1 << 20) - 4096, &mut r).await.unwrap();
            assert!(r.as_slice()[..4096].iter().all(|&b| b == 0));
            assert!(r.as_slice()[4096..].iter().all(|&b| b == 0));
            q.read(4096, &mut r).await.unwrap();
            assert_eq!(r.as_slice(), w.as_slice());
        });
        assert_eq!(std::fs::read(&p).unwrap()[4096 + 100], 0x5a);
        t.set_inline_io(InlineIo::Off);
        assert!(!t.geometry().caps.inline_io);
        // A file in memory: auto names it as such, whichever way it decides for this kernel.
        if std::path::Path::new("/dev/shm").is_dir() {
            let shm = tempfile::tempdir_in("/dev/shm").unwrap();
            let p = shm.path().join("disk.img");
            File::create(&p).unwrap().set_len(1 << 20).unwrap();
            let t = FileTarget::open(&p, None, false, false).unwrap();
            assert!(
                t.inline_io().1.starts_with("in memory"),
                "{:?}",
                t.inline_io()
            );
        }
    }

    #[test]
    fn bad_inputs_have_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.img");
        let e = FileTarget::open(&missing, None, false, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("nope.img") && e.contains("No such file"), "{e}");
        let p = dir.path().join("small.img");
        File::create(&p).unwrap().set_len(4096).unwrap();
        let e = FileTarget::open(&p, Some(8192), false, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("smaller than --size"), "{e}");
        File::create(&p).unwrap().set_len(1000).unwrap();
        let e = FileTarget::open(&p, None, true, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a multiple"), "{e}");
        let e = FileTarget::open(dir.path(), None, true, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("neither a regular file"), "{e}");
    }
}

//! File and device ops: positioned read/write (plain or fixed-buffer), fsync, fallocate,
//! uring_cmd (ublk's command channel), close.

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types};

use crate::buf::{IoBuf, KeepAlive};
use crate::op::{BorrowOp, Completion, Op};

/// Read `buf.len()` bytes at `off` in one op. Returns the byte count (short at end of file).
pub async fn read_at(fd: RawFd, buf: &mut IoBuf, off: u64) -> io::Result<usize> {
    let len = buf.len() as u32;
    let e = match buf.fixed_index() {
        Some(i) => opcode::ReadFixed::new(types::Fd(fd), buf.addr(), len, i)
            .offset(off)
            .build(),
        None => opcode::Read::new(types::Fd(fd), buf.addr(), len)
            .offset(off)
            .build(),
    };
    // SAFETY: the SQE points into `buf`'s bytes; the write lend in the op's data keeps their
    // memory alive and the CPU off them until the completion (buf.rs).
    let c = unsafe { Op::submit(e, buf.lend_write()) }.await;
    c.io_result().map(|n| n as usize)
}

/// Write `buf.len()` bytes at `off` in one op; `rw_flags` may carry `RWF_DSYNC` (FUA).
pub async fn write_at(fd: RawFd, buf: &IoBuf, off: u64, rw_flags: i32) -> io::Result<usize> {
    write_part(fd, buf, 0, buf.len(), off, rw_flags).await
}

/// Write `buf[start..start + len]` at `off` in one op (the range is checked by the callers).
async fn write_part(
    fd: RawFd,
    buf: &IoBuf,
    start: usize,
    len: usize,
    off: u64,
    rw_flags: i32,
) -> io::Result<usize> {
    let addr = buf.addr().wrapping_add(start);
    let e = match buf.fixed_index() {
        Some(i) => opcode::WriteFixed::new(types::Fd(fd), addr, len as u32, i)
            .offset(off)
            .rw_flags(rw_flags)
            .build(),
        None => opcode::Write::new(types::Fd(fd), addr, len as u32)
            .offset(off)
            .rw_flags(rw_flags)
            .build(),
    };
    // SAFETY: as in `read_at`, with a read lend: the kernel only reads the bytes, so CPU reads
    // stay allowed and CPU writes panic until the completion.
    let c = unsafe { Op::submit(e, buf.lend_read()) }.await;
    c.io_result().map(|n| n as usize)
}

/// Read exactly `buf.len()` bytes at `off`; the part past end of file reads as zeroes (for a
/// kernel buffer, which the CPU cannot zero, end of file is EIO).
pub async fn read_exact_at(fd: RawFd, buf: &mut IoBuf, off: u64) -> io::Result<()> {
    let want = buf.len();
    let mut done = read_at(fd, buf, off).await?;
    // Rare: a short read. Continue into the rest of the same buffer (fixed slot included).
    while done < want {
        let mut rest = buf.tail(done);
        let m = read_at(fd, &mut rest, off + done as u64).await?;
        if m == 0 {
            if !buf.is_cpu_accessible() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            buf.as_mut_slice()[done..].fill(0);
            return Ok(());
        }
        done += m;
    }
    Ok(())
}

/// Write all of `buf` at `off`, continuing after short writes.
pub async fn write_all_at(fd: RawFd, buf: &IoBuf, off: u64, rw_flags: i32) -> io::Result<()> {
    let want = buf.len();
    let mut done = 0;
    while done < want {
        let m = write_part(fd, buf, done, want - done, off + done as u64, rw_flags).await?;
        if m == 0 {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        done += m;
    }
    Ok(())
}

/// Read into borrowed memory, the iovecs `iov`, at `off` in one op; returns the byte count
/// (short at end of file). For storage layers handed a caller's slices (a format library's
/// `&mut [u8]`), which cannot be owned by the op: dropping the future waits for the kernel.
///
/// # Safety
/// Every iovec must describe memory that stays valid, and that the CPU neither reads nor writes,
/// until the returned future completes or is dropped; the future must not be leaked
/// ([`BorrowOp`](crate::op::BorrowOp)).
pub unsafe fn readv_at(
    fd: RawFd,
    iov: Vec<libc::iovec>,
    off: u64,
) -> impl std::future::Future<Output = io::Result<usize>> {
    let e = opcode::Readv::new(types::Fd(fd), iov.as_ptr().cast(), iov.len() as u32)
        .offset(off)
        .build();
    // SAFETY: the iovec array is heap memory owned by the op; the memory it describes is the
    // caller's, under this function's contract.
    let op = unsafe { BorrowOp::submit(e, iov) };
    async move { op.await.io_result().map(|n| n as usize) }
}

/// Write from borrowed memory, the iovecs `iov`, at `off` in one op; `rw_flags` may carry
/// `RWF_DSYNC`. Returns the byte count.
///
/// # Safety
/// As for [`readv_at`], except that the CPU may read the memory meanwhile (not write it).
pub unsafe fn writev_at(
    fd: RawFd,
    iov: Vec<libc::iovec>,
    off: u64,
    rw_flags: i32,
) -> impl std::future::Future<Output = io::Result<usize>> {
    let e = opcode::Writev::new(types::Fd(fd), iov.as_ptr().cast(), iov.len() as u32)
        .offset(off)
        .rw_flags(rw_flags)
        .build();
    // SAFETY: as in `readv_at`.
    let op = unsafe { BorrowOp::submit(e, iov) };
    async move { op.await.io_result().map(|n| n as usize) }
}

/// Blocking: read into `buf` from `off` until it is full or the file ends; returns the bytes
/// read. For callers that chose to block this thread (a file in memory, ublk user copy).
pub fn pread_full(fd: RawFd, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: pread writes at most rest.len() bytes into memory we borrow mutably.
        let n = unsafe {
            libc::pread(
                fd,
                rest.as_mut_ptr().cast(),
                rest.len(),
                (off + done as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => {}
                e => return Err(e),
            },
        }
    }
    Ok(done)
}

/// Blocking: write all of `buf` at `off`; `rw_flags` may carry `RWF_DSYNC`. A write that makes
/// no progress is EIO.
pub fn pwrite_all(fd: RawFd, buf: &[u8], off: u64, rw_flags: i32) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        };
        // SAFETY: one iovec over memory we borrow; pwritev2 only reads it.
        let n =
            unsafe { libc::pwritev2(fd, &iov, 1, (off + done as u64) as libc::off_t, rw_flags) };
        match n {
            0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
            n if n > 0 => done += n as usize,
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::Interrupted => {}
                e => return Err(e),
            },
        }
    }
    Ok(())
}

/// fsync (or fdatasync when `datasync`).
pub async fn fsync(fd: RawFd, datasync: bool) -> io::Result<()> {
    let mut b = opcode::Fsync::new(types::Fd(fd));
    if datasync {
        b = b.flags(types::FsyncFlags::DATASYNC);
    }
    // SAFETY: no pointers.
    unsafe { Op::submit(b.build(), ()) }
        .await
        .io_result()
        .map(drop)
}

/// fallocate(2) with `mode` (e.g. `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`).
pub async fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> io::Result<()> {
    let e = opcode::Fallocate::new(types::Fd(fd), len)
        .offset(off)
        .mode(mode)
        .build();
    // SAFETY: no pointers.
    unsafe { Op::submit(e, ()) }.await.io_result().map(drop)
}

/// An `IORING_OP_URING_CMD` with a 16-byte payload. `addr` goes to `sqe->addr`; `keep` holds any
/// memory the command makes the kernel touch (ublk's tag buffer) until it completes.
///
/// Unlike the buffer ops (`read_at`, `net::recv`, ...), this takes no lend on an [`IoBuf`]: what
/// the driver behind `fd` reads or writes, and when, is up to its protocol (a ublk fetch makes
/// the driver write the tag buffer before it completes, a commit makes it read the buffer while
/// it is processed), so only the caller can know that the CPU and the driver take turns.
///
/// # Safety
/// - Every address the driver dereferences for this command (`addr`, addresses inside `cmd`, and
///   addresses handed over by earlier commands that this one lets the driver use) points into
///   memory that `keep` keeps alive, or that otherwise outlives the command. `keep` is held
///   until the completion, even if the future is dropped, and leaked if the runtime gives up on
///   in-flight ops.
/// - The caller follows the driver's protocol so that the CPU never reads or writes bytes the
///   driver may be writing, nor writes bytes it may be reading, for as long as it may do so:
///   for ublk, a tag's buffer belongs to the driver from the submission of the command that
///   names it (FETCH_REQ, COMMIT_AND_FETCH_REQ, PREP/COMMIT_IO_CMDS) until the driver hands the
///   tag back (that fetch completes, or the batch fetch delivers the tag).
/// - `fd`, `cmd_op` and `cmd` name a command that does nothing else to this process's memory.
pub async unsafe fn uring_cmd16(
    fd: RawFd,
    cmd_op: u32,
    cmd: [u8; 16],
    addr: Option<u64>,
    keep: Option<KeepAlive>,
) -> Completion<Option<KeepAlive>> {
    let mut b = opcode::UringCmd16::new(types::Fd(fd), cmd_op).cmd(cmd);
    if let Some(a) = addr {
        b = b.addr(Some(a));
    }
    // SAFETY: the command's pointers lead into memory `keep` owns, and the CPU stays off it
    // while the driver may use it: both forwarded from the caller's contract.
    unsafe { Op::submit(b.build(), keep) }.await
}

/// An `IORING_OP_URING_CMD` whose command points at an array: `sqe->addr`/`sqe->len` name
/// `keep`'s memory (ublk's batch prep/commit element arrays). Queued on the ring when called,
/// not when first polled.
///
/// # Safety
/// As for [`uring_cmd16`]: `addr..addr+len` lies in heap memory owned by `keep` (which does not
/// move when `keep` moves), and so does every address inside the array that the driver may
/// dereference (ublk copy mode: the tag buffers named by the elements), or that memory
/// otherwise outlives the command; the CPU follows the driver's protocol for those buffers.
pub unsafe fn uring_cmd16_array<T: 'static + Unpin>(
    fd: RawFd,
    cmd_op: u32,
    cmd: [u8; 16],
    addr: u64,
    len: u32,
    keep: T,
) -> Op<T> {
    let e = opcode::UringCmd16::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .addr(Some(addr))
        .build();
    let e = crate::sqe::with_len(e, len);
    // SAFETY: the array and the memory it names are owned by `keep`, which the op holds until
    // completion, and the caller follows the driver's protocol (forwarded contract).
    unsafe { Op::submit(e, keep) }
}

/// A multishot `IORING_OP_URING_CMD` that fills buffers of `bufs`' group (ublk's batch fetch).
/// `keep` holds memory the driver may write while the command is armed (ublk's copy-mode tag
/// buffers); it is leaked with the op if the ring goes away first.
///
/// # Safety
/// As for [`uring_cmd16`]: while the command is armed the driver may write into memory that
/// earlier commands named (ublk copy mode: every tag buffer); `keep` must keep all of it alive,
/// and the CPU touches such a buffer only while the protocol gives it to us (ublk: from the
/// completion that delivers its tag until the commit naming it is submitted). The SQE itself
/// carries no pointers: completions land in provided buffers, which live as long as the ring.
pub unsafe fn uring_cmd16_multishot<T: 'static>(
    fd: RawFd,
    cmd_op: u32,
    cmd: [u8; 16],
    bufs: &crate::pbuf::ProvidedBufs,
    keep: T,
) -> crate::op::MultiOp<T> {
    let e = opcode::UringCmd16::new(types::Fd(fd), cmd_op)
        .cmd(cmd)
        .build()
        .flags(io_uring::squeue::Flags::BUFFER_SELECT);
    let e = crate::sqe::with_uring_cmd_flags(e, crate::sqe::IORING_URING_CMD_MULTISHOT);
    let e = crate::sqe::with_buf_group(e, bufs.group());
    // SAFETY: no pointers in the SQE: the kernel writes only into provided buffers, which live
    // as long as the ring, and into memory `keep` owns, at times the caller's protocol allows.
    unsafe { crate::op::MultiOp::submit(e, keep) }
}

/// A no-op round trip through the ring (tests, wakeups).
pub async fn nop() -> io::Result<()> {
    // SAFETY: no pointers.
    unsafe { Op::submit(opcode::Nop::new().build(), ()) }
        .await
        .io_result()
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dropping a borrowed-memory read waits for the kernel: a read from an empty pipe is
    /// cancelled before the drop returns, so data written to the pipe afterwards never lands in
    /// the memory the caller got back.
    #[test]
    fn a_dropped_borrowed_read_lets_go_of_the_memory_before_the_drop_returns() {
        let (r, mut w) = std::io::pipe().unwrap();
        let mut mem = vec![7u8; 64];
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let iov = vec![libc::iovec {
                iov_base: mem.as_mut_ptr().cast(),
                iov_len: mem.len(),
            }];
            // SAFETY: `mem` outlives the future, is untouched until it is dropped, and the
            // future is dropped, not leaked.
            let fut = unsafe { readv_at(r.as_raw_fd(), iov, 0) };
            let t = crate::time::timeout(std::time::Duration::from_millis(20), fut).await;
            assert!(t.is_err(), "nothing to read yet");
        });
        use std::io::Write;
        w.write_all(&[1u8; 64]).unwrap();
        rt.block_on(crate::time::sleep(std::time::Duration::from_millis(20)));
        assert!(
            mem.iter().all(|&b| b == 7),
            "the kernel wrote after the drop"
        );
    }
    use crate::Runtime;
    use std::os::fd::AsRawFd;

    /// A short read continues into the rest of the same buffer: a tail view lands its bytes at
    /// the right place, and a read that ends at end of file leaves zeroes after the data.
    #[test]
    fn short_reads_continue_in_place() {
        use std::io::Write;
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8 + 1).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        let rt = Runtime::new().unwrap();
        let mut buf = IoBuf::with_capacity(8192);
        buf.as_mut_slice().fill(0xee);
        let mut rest = buf.tail(1000);
        let n = rt
            .block_on(read_at(f.as_raw_fd(), &mut rest, 1000))
            .unwrap();
        assert_eq!(n, 5000);
        assert!(buf.as_slice()[..1000].iter().all(|&x| x == 0xee));
        assert_eq!(&buf.as_slice()[1000..6000], &data[1000..]);
        buf.as_mut_slice().fill(0xee);
        rt.block_on(read_exact_at(f.as_raw_fd(), &mut buf, 0))
            .unwrap();
        assert_eq!(&buf.as_slice()[..6000], &data[..]);
        assert!(buf.as_slice()[6000..].iter().all(|&x| x == 0));
    }

    #[test]
    fn write_then_read_back_through_the_ring() {
        let rt = Runtime::new().unwrap();
        let f = tempfile::tempfile().unwrap();
        let fd = f.as_raw_fd();
        rt.block_on(async {
            let mut w = IoBuf::with_capacity(8192);
            w.as_mut_slice()
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 251) as u8);
            write_all_at(fd, &w, 4096, 0).await.unwrap();
            fsync(fd, true).await.unwrap();
            let mut r = IoBuf::with_capacity(8192);
            read_exact_at(fd, &mut r, 4096).await.unwrap();
            assert!(
                !r.is_lent() && !w.is_lent(),
                "completed ops end their lends"
            );
            assert_eq!(r.as_slice(), w.as_slice());
            // Past end of file reads as zeroes.
            let mut tail = IoBuf::with_capacity(4096);
            tail.as_mut_slice().fill(9);
            read_exact_at(fd, &mut tail, 12288 - 2048).await.unwrap();
            let expect: Vec<u8> = (6144..8192).map(|i| (i % 251) as u8).collect();
            assert_eq!(&tail.as_slice()[..2048], &expect[..]);
            assert!(tail.as_slice()[2048..].iter().all(|&b| b == 0));
        });
        assert_eq!(f.metadata().unwrap().len(), 12288);
    }

    fn panics(f: impl FnOnce()) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
    }

    /// Poll `f` once (it must stay pending), so its SQE is queued.
    async fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) {
        let mut f = Some(f);
        std::future::poll_fn(|cx| {
            let p = f.take().unwrap().poll(cx);
            assert!(p.is_pending(), "the op finished early");
            std::task::Poll::Ready(())
        })
        .await
    }

    /// A read future forgotten mid-op leaves its buffer lent for good: the kernel may write it
    /// at any time (here: once data arrives), so CPU access panics instead of racing.
    #[test]
    fn forgotten_read_leaves_the_buffer_lent() {
        use std::io::Write;
        let (r, mut w) = std::io::pipe().unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut buf = IoBuf::with_capacity(64);
            let mut f = Box::pin(read_at(r.as_raw_fd(), &mut buf, u64::MAX));
            poll_once(f.as_mut()).await;
            std::mem::forget(f);
            assert!(buf.is_lent_for_writing());
            assert!(panics(|| {
                buf.as_slice();
            }));
            w.write_all(b"data").unwrap();
            for _ in 0..10 {
                nop().await.unwrap();
            }
            // The read completed, but its data (and lend) live in the forgotten future.
            assert!(buf.is_lent());
            assert!(panics(|| buf.as_mut_slice().fill(0)));
        });
    }

    /// An op future that outlives its runtime, which leaked its in-flight ops, must not free
    /// (or stop lending) what the kernel may still write when it is finally dropped.
    #[test]
    #[allow(clippy::async_yields_async)] // the pending read must outlive the runtime
    fn op_dropped_after_its_runtime_leaked_stays_lent() {
        let (r, _w) = std::io::pipe().unwrap();
        let mut buf = IoBuf::with_capacity(64);
        let rt = Runtime::new().unwrap();
        let f = rt.block_on(async {
            let mut f = Box::pin(read_at(r.as_raw_fd(), &mut buf, u64::MAX));
            poll_once(f.as_mut()).await;
            f
        });
        rt.leak_in_flight_on_drop();
        drop(rt);
        drop(f);
        assert!(buf.is_lent_for_writing());
    }

    /// A read into a tail view, dropped mid-op, lends the whole buffer (they overlap) until its
    /// completion is reaped; then the buffer is the CPU's again.
    #[test]
    fn dropped_read_into_a_tail_lends_the_parent_until_it_completes() {
        let (r, _w) = std::io::pipe().unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut buf = IoBuf::with_capacity(64);
            let mut rest = buf.tail(16);
            let t = crate::time::timeout(
                std::time::Duration::from_millis(5),
                read_at(r.as_raw_fd(), &mut rest, u64::MAX),
            );
            assert!(t.await.is_err());
            assert!(panics(|| {
                buf.as_slice();
            }));
            assert!(panics(|| buf.as_mut_slice()[0] = 1));
            // The drop queued a cancel; the read's completion ends the lend.
            for _ in 0..100 {
                if !buf.is_lent() {
                    break;
                }
                nop().await.unwrap();
            }
            assert!(!buf.is_lent());
            buf.as_mut_slice()[0] = 1;
            assert_eq!(buf.as_slice()[0], 1);
        });
    }

    #[test]
    fn errors_come_back_as_errno() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut b = IoBuf::with_capacity(512);
            let e = read_at(-1, &mut b, 0).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        });
    }

    #[test]
    fn punch_hole_reads_back_zeroes() {
        let rt = Runtime::new().unwrap();
        let f = tempfile::tempfile().unwrap();
        let fd = f.as_raw_fd();
        rt.block_on(async {
            let mut w = IoBuf::with_capacity(65536);
            w.as_mut_slice().fill(0xab);
            write_all_at(fd, &w, 0, 0).await.unwrap();
            fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                4096,
                8192,
            )
            .await
            .unwrap();
            let mut r = IoBuf::with_capacity(65536);
            read_exact_at(fd, &mut r, 0).await.unwrap();
            assert!(r.as_slice()[..4096].iter().all(|&b| b == 0xab));
            assert!(r.as_slice()[4096..12288].iter().all(|&b| b == 0));
            assert!(r.as_slice()[12288..].iter().all(|&b| b == 0xab));
        });
    }

    #[test]
    fn many_ops_batch_into_few_enters() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let hs: Vec<_> = (0..64)
                .map(|_| crate::spawn(async { nop().await.unwrap() }))
                .collect();
            for h in hs {
                h.await;
            }
        });
        let s = rt.stats();
        assert!(s.completions >= 64, "{s:?}");
        assert!(s.enters <= 8, "64 nops should need few enters: {s:?}");
    }
}

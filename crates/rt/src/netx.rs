//! Socket ops on part of a buffer: send or receive exactly the bytes `[start, start+len)` of an
//! `IoBuf` (a protocol that frames data in chunks reads and writes pieces of one buffer).

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types};

use crate::buf::IoBuf;
use crate::op::Op;

fn check(buf: &IoBuf, start: usize, len: usize) -> io::Result<()> {
    match start.checked_add(len) {
        Some(end) if end <= buf.len() => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range outside the buffer",
        )),
    }
}

/// Send `buf[start..start+len]` completely; `flags` may add `MSG_MORE`.
pub async fn send_range(
    fd: RawFd,
    buf: &IoBuf,
    start: usize,
    len: usize,
    flags: i32,
) -> io::Result<()> {
    check(buf, start, len)?;
    let mut done = 0;
    while done < len {
        let e = opcode::Send::new(
            types::Fd(fd),
            buf.addr().wrapping_add(start + done),
            (len - done) as u32,
        )
        .flags(libc::MSG_NOSIGNAL | flags)
        .build();
        // SAFETY: the range lies inside `buf` (checked above); the op keeps its memory alive.
        let c = unsafe { Op::submit(e, buf.keepalive()) }.await;
        let n = c.io_result()? as usize;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// Receive exactly `len` bytes into `buf[start..start+len]`; `UnexpectedEof` if the peer closes.
pub async fn recv_range(fd: RawFd, buf: &mut IoBuf, start: usize, len: usize) -> io::Result<()> {
    check(buf, start, len)?;
    let mut done = 0;
    while done < len {
        let e = opcode::Recv::new(
            types::Fd(fd),
            buf.addr().wrapping_add(start + done),
            (len - done) as u32,
        )
        .flags(libc::MSG_WAITALL)
        .build();
        // SAFETY: as in `send_range`; `&mut buf` makes this the only user of those bytes.
        let c = unsafe { Op::submit(e, buf.keepalive()) }.await;
        let n = c.io_result()? as usize;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Runtime;
    use std::os::fd::AsRawFd;

    #[test]
    fn ranges_round_trip_over_a_socketpair() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut src = IoBuf::with_capacity(100);
            for (i, x) in src.as_mut_slice().iter_mut().enumerate() {
                *x = i as u8;
            }
            send_range(a.as_raw_fd(), &src, 10, 20, 0).await.unwrap();
            let mut dst = IoBuf::with_capacity(50);
            recv_range(b.as_raw_fd(), &mut dst, 5, 20).await.unwrap();
            assert_eq!(&dst.as_slice()[5..25], &src.as_slice()[10..30]);
            assert!(send_range(a.as_raw_fd(), &src, 90, 20, 0).await.is_err());
            drop(a);
            assert_eq!(
                recv_range(b.as_raw_fd(), &mut dst, 0, 1)
                    .await
                    .unwrap_err()
                    .kind(),
                io::ErrorKind::UnexpectedEof
            );
        });
    }
}

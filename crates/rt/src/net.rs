//! Socket ops: accept, connect, send, recv. Sockets are created with std (or libc) and driven
//! through the ring; buffers are owned `Vec<u8>`s, or borrowed `IoBuf`s that the op lends to the
//! kernel until its completion (`buf.rs`).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use io_uring::{opcode, types};

use crate::buf::IoBuf;
use crate::op::Op;

/// Accept one connection on a listening socket (the new fd is close-on-exec).
pub async fn accept(fd: RawFd) -> io::Result<OwnedFd> {
    let e = opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
        .flags(libc::SOCK_CLOEXEC)
        .build();
    // SAFETY: null address pointers: the kernel writes no peer address.
    let c = unsafe { Op::submit(e, ()) }.await;
    let n = c.io_result()?;
    // SAFETY: the kernel returned a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n as RawFd) })
}

/// A socket address in kernel form, boxed so its address is stable while an op uses it.
struct RawAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

fn raw_inet(addr: &SocketAddr) -> Box<RawAddr> {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut r = Box::new(RawAddr {
        storage: unsafe { zeroed() },
        len: 0,
    });
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut r.storage as *mut libc::sockaddr_storage).cast(), sin) };
            r.len = size_of::<libc::sockaddr_in>() as _;
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                std::ptr::write((&mut r.storage as *mut libc::sockaddr_storage).cast(), sin6)
            };
            r.len = size_of::<libc::sockaddr_in6>() as _;
        }
    }
    r
}

fn raw_unix(path: &Path) -> io::Result<Box<RawAddr>> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: plain data, zero is valid.
    let mut sun: libc::sockaddr_un = unsafe { zeroed() };
    if bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unix socket path too long",
        ));
    }
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain data.
    let mut r = Box::new(RawAddr {
        storage: unsafe { zeroed() },
        len: 0,
    });
    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_un.
    unsafe { std::ptr::write((&mut r.storage as *mut libc::sockaddr_storage).cast(), sun) };
    r.len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as _;
    Ok(r)
}

fn new_socket(domain: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new fd or -1.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

async fn connect_raw(sock: OwnedFd, addr: Box<RawAddr>) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let e = opcode::Connect::new(
        types::Fd(sock.as_raw_fd()),
        (&addr.storage as *const libc::sockaddr_storage).cast(),
        addr.len,
    )
    .build();
    // SAFETY: the SQE points at the boxed address, owned by the op's data.
    let c = unsafe { Op::submit(e, addr) }.await;
    c.io_result()?;
    Ok(sock)
}

/// Connect a TCP socket (TCP_NODELAY set: NBD is request/response).
pub async fn connect_tcp(addr: SocketAddr) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let s = connect_raw(new_socket(domain)?, raw_inet(&addr)).await?;
    let one: libc::c_int = 1;
    // SAFETY: valid fd and option pointer/length.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as _,
        )
    };
    Ok(s)
}

/// Connect a Unix stream socket.
pub async fn connect_unix(path: &Path) -> io::Result<OwnedFd> {
    connect_raw(new_socket(libc::AF_UNIX)?, raw_unix(path)?).await
}

/// Receive up to `buf.len()` bytes into `buf`. Returns the count (0: peer closed).
pub async fn recv(fd: RawFd, buf: &mut IoBuf) -> io::Result<usize> {
    let e = opcode::Recv::new(types::Fd(fd), buf.addr(), buf.len() as u32).build();
    // SAFETY: points into `buf`'s bytes; the write lend in the op's data keeps their memory
    // alive and the CPU off them until the completion (buf.rs).
    let c = unsafe { Op::submit(e, buf.lend_write()) }.await;
    c.io_result().map(|n| n as usize)
}

/// Receive whatever has arrived, up to `max` bytes, into `buf[start..start+max]`. `Ok(0)`: the
/// peer closed (or reading was shut down).
pub async fn recv_some(fd: RawFd, buf: &mut IoBuf, start: usize, max: usize) -> io::Result<usize> {
    check(buf, start, max)?;
    let e = opcode::Recv::new(types::Fd(fd), buf.addr().wrapping_add(start), max as u32).build();
    // SAFETY: the range lies inside `buf` (checked above); the write lend in the op's data keeps
    // its memory alive and the CPU off all of `buf` until the completion.
    let c = unsafe { Op::submit(e, buf.lend_write()) }.await;
    c.io_result().map(|n| n as usize)
}

/// Receive exactly `buf.len()` bytes; `UnexpectedEof` if the peer closes first.
pub async fn recv_exact(fd: RawFd, buf: &mut IoBuf) -> io::Result<()> {
    let len = buf.len();
    recv_range(fd, buf, 0, len).await
}

/// Send all of `buf` (`MSG_NOSIGNAL`: a closed peer is an error, not a signal).
pub async fn send_all(fd: RawFd, buf: &IoBuf) -> io::Result<()> {
    send_all_flags(fd, buf, 0).await
}

/// Send all of `buf`; `MSG_MORE` in `flags` tells the kernel more data follows (corking).
pub async fn send_all_flags(fd: RawFd, buf: &IoBuf, flags: i32) -> io::Result<()> {
    send_range(fd, buf, 0, buf.len(), flags).await
}

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
        // SAFETY: the range lies inside `buf` (checked above); the read lend in the op's data
        // keeps its memory alive and CPU writes off it until the completion.
        let c = unsafe { Op::submit(e, buf.lend_read()) }.await;
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
        // SAFETY: as in `recv_some`: a write lend, so no CPU access until the completion.
        let c = unsafe { Op::submit(e, buf.lend_write()) }.await;
        let n = c.io_result()? as usize;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += n;
    }
    Ok(())
}

/// Send all of an owned byte vector; returns it for reuse.
pub async fn send_vec(fd: RawFd, v: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    let mut done = 0;
    let mut v = v;
    while done < v.len() {
        let ptr = v[done..].as_ptr();
        let len = (v.len() - done) as u32;
        let e = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        // SAFETY: the vector's heap memory moves into the op's data and does not move with it.
        let c = unsafe { Op::submit(e, v) }.await;
        v = c.data;
        match c.result {
            n if n < 0 => return (Err(io::Error::from_raw_os_error(-n)), v),
            0 => return (Err(io::ErrorKind::WriteZero.into()), v),
            n => done += n as usize,
        }
    }
    (Ok(()), v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Runtime, spawn};
    use std::os::fd::AsRawFd;

    #[test]
    fn tcp_round_trip_on_loopback() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async move {
            let lfd = l.as_raw_fd();
            let server = spawn(async move {
                let c = accept(lfd).await.unwrap();
                let mut b = IoBuf::with_capacity(5);
                recv_exact(c.as_raw_fd(), &mut b).await.unwrap();
                send_all(c.as_raw_fd(), &b).await.unwrap();
                drop(l);
            });
            let s = connect_tcp(addr).await.unwrap();
            let (r, _) = send_vec(s.as_raw_fd(), b"hello".to_vec()).await;
            r.unwrap();
            let mut b = IoBuf::with_capacity(5);
            recv_exact(s.as_raw_fd(), &mut b).await.unwrap();
            assert_eq!(b.as_slice(), b"hello");
            server.await;
            let mut b = IoBuf::with_capacity(1);
            assert_eq!(recv(s.as_raw_fd(), &mut b).await.unwrap(), 0);
        });
    }

    #[test]
    fn connect_refused_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let rt = Runtime::new().unwrap();
        let e = rt.block_on(connect_tcp(addr)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}

#[cfg(test)]
mod lend_tests {
    use super::*;
    use crate::Runtime;
    use crate::time::timeout;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    fn panics(f: impl FnOnce()) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err()
    }

    /// Turn the loop until `buf`'s lend ends (the dropped op's completion was reaped).
    async fn until_returned(buf: &IoBuf) {
        for _ in 0..100 {
            if !buf.is_lent() {
                return;
            }
            crate::fs::nop().await.unwrap();
        }
        panic!("the dropped op never completed");
    }

    /// A recv dropped while pending (a timeout) keeps the buffer lent: touching it panics until
    /// the completion arrives; then it is usable again, and a completed recv leaves no lend.
    #[test]
    fn dropped_recv_lends_the_buffer_until_its_completion() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut buf = IoBuf::with_capacity(32);
            let t = timeout(
                Duration::from_millis(5),
                recv_range(b.as_raw_fd(), &mut buf, 0, 8),
            );
            assert!(t.await.is_err());
            assert!(buf.is_lent_for_writing());
            assert!(panics(|| {
                buf.as_slice();
            }));
            assert!(panics(|| buf.as_mut_slice()[0] = 1));
            until_returned(&buf).await;
            buf.as_mut_slice()[0] = 1;

            let (r, _) = send_vec(a.as_raw_fd(), b"hello".to_vec()).await;
            r.unwrap();
            assert_eq!(recv(b.as_raw_fd(), &mut buf).await.unwrap(), 5);
            assert!(!buf.is_lent());
            assert_eq!(&buf.as_slice()[..5], b"hello");
        });
    }

    /// A send dropped while pending (the peer's buffer is full) leaves the bytes readable, not
    /// writable, until its completion.
    #[test]
    fn dropped_send_allows_reads_not_writes() {
        use std::io::Write;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let chunk = [0u8; 4096];
        while a.write(&chunk).is_ok() {}
        a.set_nonblocking(false).unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut buf = IoBuf::with_capacity(4096);
            buf.as_mut_slice().fill(5);
            let t = timeout(Duration::from_millis(5), send_all(a.as_raw_fd(), &buf));
            assert!(t.await.is_err());
            assert!(buf.is_lent() && !buf.is_lent_for_writing());
            assert!(buf.as_slice().iter().all(|&x| x == 5));
            assert!(panics(|| buf.as_mut_slice()[0] = 1));
            until_returned(&buf).await;
            buf.as_mut_slice()[0] = 1;
        });
        drop(b);
    }
}

#[cfg(test)]
mod range_tests {
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
            // recv_some takes what has arrived (a partial read), refuses a range outside the
            // buffer, and reports a closed peer as 0.
            send_range(a.as_raw_fd(), &src, 0, 7, 0).await.unwrap();
            assert_eq!(recv_some(b.as_raw_fd(), &mut dst, 40, 10).await.unwrap(), 7);
            assert_eq!(&dst.as_slice()[40..47], &src.as_slice()[..7]);
            let e = recv_some(b.as_raw_fd(), &mut dst, 45, 10)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            drop(a);
            assert_eq!(recv_some(b.as_raw_fd(), &mut dst, 0, 10).await.unwrap(), 0);
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

//! A connected stream socket (TCP or Unix) driven through the ring, with the few framing helpers
//! NBD needs: read exactly n bytes, send a small header, send a header followed by data.

use std::io;
use std::net::Shutdown;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use rt::IoBuf;

/// Owns the socket; `shutdown` works through `&self` so another task can cut a connection.
pub enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    /// Wrap a TCP connection; TCP_NODELAY because NBD is request/response.
    pub fn tcp(fd: OwnedFd) -> Sock {
        let s = TcpStream::from(fd);
        let _ = s.set_nodelay(true);
        Sock::Tcp(s)
    }
    pub fn unix(fd: OwnedFd) -> Sock {
        Sock::Unix(UnixStream::from(fd))
    }
    pub fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }
    /// Who is at the other end, for log lines.
    pub fn peer(&self) -> String {
        match self {
            Sock::Tcp(s) => s
                .peer_addr()
                .map_or_else(|_| "TCP client".into(), |a| a.to_string()),
            Sock::Unix(_) => "Unix socket client".into(),
        }
    }
    /// Stop reading and/or writing; pending ops on the socket complete with EOF or an error.
    pub fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Sock::Tcp(s) => s.shutdown(how),
            Sock::Unix(s) => s.shutdown(how),
        };
    }

    /// Read exactly `n` bytes into `buf` (reused across calls; grown if too small).
    pub async fn read_into(&self, buf: &mut IoBuf, n: usize) -> io::Result<()> {
        if buf.capacity() < n {
            *buf = IoBuf::with_capacity(n);
        }
        buf.set_len(n);
        rt::net::recv_exact(self.fd(), buf).await
    }

    /// Read exactly `n` bytes into a fresh vector (handshake payloads; `n` bounded by callers).
    pub async fn read_vec(&self, n: usize) -> io::Result<Vec<u8>> {
        let mut b = IoBuf::with_capacity(n);
        if n > 0 {
            rt::net::recv_exact(self.fd(), &mut b).await?;
        }
        Ok(b.as_slice().to_vec())
    }

    /// Read and drop `n` bytes in bounded pieces (skipping a payload we refuse).
    pub async fn discard(&self, mut n: u64) -> io::Result<()> {
        let mut b = IoBuf::with_capacity(64 << 10);
        while n > 0 {
            let k = n.min(64 << 10) as usize;
            self.read_into(&mut b, k).await?;
            n -= k as u64;
        }
        Ok(())
    }

    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        rt::net::send_vec(self.fd(), bytes.to_vec()).await.0
    }

    /// Send `head` then `data[start..start+len]`, corked so they leave as one segment if small.
    pub async fn send_with_data(
        &self,
        head: &[u8],
        data: &IoBuf,
        start: usize,
        len: usize,
    ) -> io::Result<()> {
        let mut h = IoBuf::with_capacity(head.len());
        h.as_mut_slice().copy_from_slice(head);
        rt::net::send_all_flags(self.fd(), &h, libc::MSG_MORE).await?;
        rt::net::send_range(self.fd(), data, start, len, 0).await
    }
}

/// One piece of a gathered send: bytes owned by the piece (`Own`) or a range of an `IoBuf`
/// (`Buf`, made by [`Seg::range`]).
pub enum Seg {
    Own(Vec<u8>),
    Buf(BufRange),
}

/// A range of an `IoBuf`, lent to the kernel for reading from its creation until it is dropped
/// (the buffer's bytes stay readable meanwhile, not writable). Fields private: the pointer is
/// always inside the lent buffer.
pub struct BufRange {
    _lend: rt::buf::Lend,
    ptr: *const u8,
    len: usize,
}

impl Seg {
    /// `buf[start..start+len]`, kept alive (and lent for reading) without holding on to the
    /// `IoBuf` itself.
    pub fn range(buf: &IoBuf, start: usize, len: usize) -> Seg {
        assert!(start + len <= buf.len(), "range outside the buffer");
        Seg::Buf(BufRange {
            _lend: buf.lend_read(),
            ptr: buf.addr().wrapping_add(start),
            len,
        })
    }
    fn iov(&self) -> libc::iovec {
        match self {
            Seg::Own(v) => libc::iovec {
                iov_base: v.as_ptr() as *mut _,
                iov_len: v.len(),
            },
            Seg::Buf(r) => libc::iovec {
                iov_base: r.ptr as *mut _,
                iov_len: r.len,
            },
        }
    }
}

/// Everything one SENDMSG points to, on the heap so it does not move while the op owns it.
struct Gather<T> {
    hdr: Box<libc::msghdr>,
    iov: Vec<libc::iovec>,
    /// Owns the memory the iovecs point into.
    _owner: T,
}

/// Most iovecs in one sendmsg (Linux UIO_MAXIOV).
const MAX_IOV: usize = 1024;

impl Sock {
    /// Send every segment of `parts`, in order, with as few `sendmsg` calls as the kernel allows
    /// (one per [`MAX_IOV`] segments when the socket buffer has room), calling `sent` after each
    /// one that moved bytes. `parts` is handed back once the kernel is done with it.
    pub async fn send_gather<R: AsRef<[Seg]> + 'static + Unpin>(
        &self,
        parts: Vec<R>,
        mut sent: impl FnMut(),
    ) -> (io::Result<()>, Vec<R>) {
        let iov_all: Vec<libc::iovec> = parts
            .iter()
            .flat_map(|r| r.as_ref().iter().map(Seg::iov))
            .filter(|v| v.iov_len > 0)
            .collect();
        let mut g = Gather {
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            hdr: Box::new(unsafe { std::mem::zeroed() }),
            iov: iov_all,
            _owner: parts,
        };
        let mut first = 0; // first iovec not yet fully sent
        while first < g.iov.len() {
            let n_iov = (g.iov.len() - first).min(MAX_IOV);
            g.hdr.msg_iov = g.iov[first..].as_mut_ptr();
            g.hdr.msg_iovlen = n_iov as _;
            let hdr: *const libc::msghdr = &*g.hdr;
            let e = io_uring::opcode::SendMsg::new(io_uring::types::Fd(self.fd()), hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build();
            // SAFETY: the header, the iovec array and the memory they point to are heap memory
            // owned by `g` (directly, or through the read lends of `Seg::Buf`, which also keep
            // CPU writes off those bytes), which the op owns until completion.
            let c = unsafe { rt::op::Op::submit(e, g) }.await;
            g = c.data;
            if c.result < 0 {
                return (Err(io::Error::from_raw_os_error(-c.result)), g._owner);
            }
            if c.result == 0 {
                return (Err(io::ErrorKind::WriteZero.into()), g._owner);
            }
            sent();
            // Skip what went out; a partly sent iovec is trimmed in place.
            let mut n = c.result as usize;
            while n > 0 {
                let v = &mut g.iov[first];
                if n >= v.iov_len {
                    n -= v.iov_len;
                    first += 1;
                } else {
                    v.iov_base = (v.iov_base as *mut u8).wrapping_add(n) as *mut _;
                    v.iov_len -= n;
                    n = 0;
                }
            }
        }
        (Ok(()), g._owner)
    }
}

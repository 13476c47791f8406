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
        rt::netx::send_range(self.fd(), data, start, len, 0).await
    }
}

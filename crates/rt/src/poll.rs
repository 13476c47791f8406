//! Readiness: wait until an fd is readable without consuming anything (`IORING_OP_POLL_ADD`).
//! Level-triggered, so any number of waiters, on any number of threads, see the same event (a
//! shutdown eventfd that is written once and never read wakes them all).

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types};

use crate::op::Op;

/// Wait until `fd` is readable (or hung up / in error); returns the `poll(2)` event mask.
pub async fn readable(fd: RawFd) -> io::Result<u32> {
    let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build();
    // SAFETY: a poll request carries no pointers.
    let c = unsafe { Op::submit(e, ()) }.await;
    c.io_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Runtime, spawn};
    use std::os::fd::AsRawFd;

    #[test]
    fn eventfd_readiness_wakes_every_waiter() {
        let rt = Runtime::new().unwrap();
        // SAFETY: eventfd(2) returns a new fd or -1 (checked).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh fd owned by nobody else.
        let efd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = efd.as_raw_fd();
        rt.block_on(async move {
            let a = spawn(async move { readable(raw).await.unwrap() });
            let b = spawn(async move { readable(raw).await.unwrap() });
            crate::time::sleep(std::time::Duration::from_millis(5)).await;
            assert!(!a.is_finished() && !b.is_finished());
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
            assert_eq!(unsafe { libc::write(raw, one.as_ptr().cast(), 8) }, 8);
            assert!(a.await & libc::POLLIN as u32 != 0);
            assert!(b.await & libc::POLLIN as u32 != 0);
        });
        drop(efd);
    }
}

//! `select2`: run two futures, finish with the first. The loser is dropped; rt ops dropped
//! early are safe (their resources live until the kernel completes them, see `op.rs`), and an
//! `IoBuf` they borrowed stays lent to the kernel until then: touching it panics (`buf.rs`).

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

/// Which of two futures finished first.
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Poll `a` then `b` on every wake; return the first output and drop the other.
pub async fn select2<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(v) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    })
    .await
}

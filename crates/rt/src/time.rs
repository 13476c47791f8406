//! Timers on the ring: `sleep`, and `timeout` around any future.

use std::future::Future;
use std::time::Duration;

use io_uring::{opcode, types};

use crate::op::Op;
use crate::select::{Either, select2};

/// Sleep for `d` (an `IORING_OP_TIMEOUT`).
pub async fn sleep(d: Duration) {
    let ts = Box::new(
        types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos()),
    );
    let e = opcode::Timeout::new(&*ts as *const _).build();
    // SAFETY: the SQE points at the boxed timespec, owned by the op's data.
    let c = unsafe { Op::submit(e, ts) }.await;
    debug_assert!(c.result == -libc::ETIME || c.result == 0 || c.result == -libc::ECANCELED);
}

/// The future did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timed out")
    }
}
impl std::error::Error for Elapsed {}

/// Run `fut` for at most `d`. On timeout `fut` is dropped (its ops are orphaned safely; buffers
/// they borrowed stay lent to the kernel, and panic on CPU access, until they complete).
pub async fn timeout<F: Future>(d: Duration, fut: F) -> Result<F::Output, Elapsed> {
    match select2(fut, sleep(d)).await {
        Either::Left(v) => Ok(v),
        Either::Right(()) => Err(Elapsed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Runtime;
    use std::time::Instant;

    #[test]
    fn sleep_waits_about_right() {
        let rt = Runtime::new().unwrap();
        let t = Instant::now();
        rt.block_on(sleep(Duration::from_millis(30)));
        let e = t.elapsed();
        assert!(
            e >= Duration::from_millis(29) && e < Duration::from_secs(2),
            "{e:?}"
        );
    }

    #[test]
    fn dropped_timer_is_cancelled_in_the_kernel() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            assert_eq!(
                timeout(Duration::from_millis(5), sleep(Duration::from_secs(10))).await,
                Err(Elapsed)
            );
            // One more turn of the loop submits the cancel and reaps the cancelled timer.
            sleep(Duration::from_millis(20)).await;
            let left = crate::runtime::current().ops.borrow().len();
            assert_eq!(left, 0, "the dropped 10 s timer is still armed");
        });
    }

    #[test]
    fn timeout_fires_and_passes() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            assert_eq!(
                timeout(Duration::from_millis(10), sleep(Duration::from_secs(5))).await,
                Err(Elapsed)
            );
            assert_eq!(timeout(Duration::from_secs(5), async { 3 }).await, Ok(3));
        });
    }
}

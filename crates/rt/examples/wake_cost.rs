//! Microbenchmark of the executor's per-wake cost: 64 tasks each await a NOP op in a loop (a
//! completion wakes a task, as a ublk fetch or a backend read does), then the same tasks wake
//! each other through `local::Notify` (a task wakes a task, as the committer does). Prints
//! wall and CPU nanoseconds per wake. Compare two builds on the same quiet machine, interleaved:
//!
//!     cargo run --release -p rt --example wake_cost -- [ROUNDS]
use std::rc::Rc;
use std::time::Instant;

use rt::local::Notify;
use rt::{Builder, spawn};

fn cpu_ns() -> u128 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr());
        ru.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as u128 * 1_000_000_000 + tv.tv_usec as u128 * 1000;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn measure(name: &str, wakes: u64, f: impl FnOnce()) {
    let (w0, c0) = (Instant::now(), cpu_ns());
    f();
    let (wall, cpu) = (w0.elapsed().as_nanos(), cpu_ns() - c0);
    println!(
        "{name}: {:.1} ns wall, {:.1} ns cpu per wake",
        wall as f64 / wakes as f64,
        cpu as f64 / wakes as f64
    );
}

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    const TASKS: u64 = 64;
    let rt = Builder::default().entries(256).build().expect("io_uring");
    measure("completion wake (nop)", rounds * TASKS, || {
        rt.block_on(async {
            let hs: Vec<_> = (0..TASKS)
                .map(|_| {
                    spawn(async move {
                        for _ in 0..rounds {
                            rt::fs::nop().await.expect("nop");
                        }
                    })
                })
                .collect();
            for h in hs {
                h.await;
            }
        })
    });
    measure("task wake (notify ring)", rounds * TASKS, || {
        rt.block_on(async {
            // A ring of tasks: each waits on its own Notify and wakes the next one's.
            let n: Vec<Rc<Notify>> = (0..TASKS).map(|_| Rc::new(Notify::default())).collect();
            let hs: Vec<_> = (0..TASKS as usize)
                .map(|i| {
                    let (mine, next) = (n[i].clone(), n[(i + 1) % TASKS as usize].clone());
                    spawn(async move {
                        for r in 0..rounds {
                            if i == 0 && r == 0 {
                                // Let every task register its waiter before the first wake.
                                rt::fs::nop().await.expect("nop");
                            } else {
                                mine.notified().await;
                            }
                            next.notify_all();
                        }
                    })
                })
                .collect();
            for h in hs {
                h.await;
            }
        })
    });
}

//! What counting one request costs on this machine: `start` + `finish` in a loop, against the
//! two clock reads alone. `cargo run --release -p stats --example cost`
use std::hint::black_box;
use std::time::Instant;

use stats::{Op, QueueCounters};

fn main() {
    const N: u32 = 20_000_000;
    let c = QueueCounters::new();
    let t = Instant::now();
    for i in 0..N {
        let t0 = c.start();
        c.finish(black_box(Op::Read), 4096, black_box(i == 0), t0);
    }
    let counted = t.elapsed().as_nanos() as f64 / N as f64;
    let t = Instant::now();
    for _ in 0..N {
        let t0 = black_box(Instant::now());
        black_box(t0.elapsed());
    }
    let clocks = t.elapsed().as_nanos() as f64 / N as f64;
    println!(
        "per request: {counted:.1} ns counted (start + finish), of which {clocks:.1} ns the two clock reads; {} requests",
        c.requests()
    );
}

//! One queue's counters. The queue's thread is their only writer: each update is a relaxed
//! load and a relaxed store of a value only it changes (plain moves on x86 and arm64, no locked
//! instruction, no lock), so the data path pays a few stores to cache lines it owns. Readers on
//! other threads load the same atomics relaxed: each value is exact as of some moment, values
//! of different fields may be a request apart, which is all a rate or a percentile needs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::hist::{self, BUCKETS};
use crate::snapshot::{OpSnapshot, QueueSnapshot};

/// The request kinds counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read = 0,
    Write = 1,
    Flush = 2,
    Discard = 3,
    WriteZeroes = 4,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::WriteZeroes];

    /// The label value (Prometheus `op`, JSON `op`).
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write_zeroes",
        }
    }
}

struct OpCounters {
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Sum of latencies, ns (Prometheus `_sum`).
    latency_ns: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for OpCounters {
    fn default() -> Self {
        OpCounters {
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Counters of one queue. Aligned so two queues' counters never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct QueueCounters {
    /// Requests the queue began serving; minus the finished ones, the requests in flight.
    started: AtomicU64,
    ops: [OpCounters; 5],
}

/// `a += n` by its only writer.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

impl std::fmt::Debug for QueueCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueCounters")
            .field("requests", &self.requests())
            .finish()
    }
}

impl QueueCounters {
    pub fn new() -> QueueCounters {
        QueueCounters::default()
    }

    /// A request began (only the owning queue's thread calls this). Returns its start time.
    #[inline]
    pub fn start(&self) -> Instant {
        bump(&self.started, 1);
        Instant::now()
    }

    /// A request that began at `t0` finished (only the owning queue's thread calls this).
    #[inline]
    pub fn finish(&self, op: Op, bytes: u64, failed: bool, t0: Instant) {
        let ns = t0.elapsed().as_nanos() as u64;
        let c = &self.ops[op as usize];
        bump(&c.buckets[hist::bucket(ns)], 1);
        bump(&c.latency_ns, ns);
        if failed {
            bump(&c.errors, 1);
        } else {
            bump(&c.bytes, bytes);
        }
        bump(&c.requests, 1);
    }

    /// Requests finished, every op.
    pub fn requests(&self) -> u64 {
        self.ops.iter().map(|c| c.requests.load(Relaxed)).sum()
    }

    /// Failed requests, every op.
    pub fn errors(&self) -> u64 {
        self.ops.iter().map(|c| c.errors.load(Relaxed)).sum()
    }

    /// What the queue has done so far, from any thread.
    pub fn snapshot(&self, queue: u32, depth: u32) -> QueueSnapshot {
        // Finished counts before `started`: both only grow, so started >= finished here.
        let ops: Vec<OpSnapshot> = Op::ALL
            .iter()
            .map(|&op| {
                let c = &self.ops[op as usize];
                let hist = c
                    .buckets
                    .iter()
                    .enumerate()
                    .filter_map(|(i, b)| match b.load(Relaxed) {
                        0 => None,
                        n => Some((i as u32, n)),
                    })
                    .collect();
                OpSnapshot {
                    op: op.name().to_string(),
                    requests: c.requests.load(Relaxed),
                    bytes: c.bytes.load(Relaxed),
                    errors: c.errors.load(Relaxed),
                    latency_ns: c.latency_ns.load(Relaxed),
                    hist,
                }
            })
            .collect();
        let finished: u64 = ops.iter().map(|o| o.requests).sum();
        QueueSnapshot {
            queue,
            depth,
            inflight: self.started.load(Relaxed).saturating_sub(finished),
            ops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn counts_bytes_errors_latency_and_inflight() {
        let c = QueueCounters::new();
        let t = c.start();
        let t2 = c.start();
        assert_eq!(c.snapshot(0, 4).inflight, 2);
        std::thread::sleep(Duration::from_millis(2));
        c.finish(Op::Read, 4096, false, t);
        c.finish(Op::Write, 512, true, t2);
        let s = c.snapshot(3, 4);
        assert_eq!((s.queue, s.depth, s.inflight), (3, 4, 0));
        let r = s.op(Op::Read).unwrap();
        assert_eq!((r.requests, r.bytes, r.errors), (1, 4096, 0));
        assert!(r.latency_ns >= 2_000_000, "{}", r.latency_ns);
        assert_eq!(r.hist.len(), 1);
        assert_eq!(r.hist[0].1, 1);
        assert!(crate::hist::upper(r.hist[0].0 as usize) > 2_000_000);
        let w = s.op(Op::Write).unwrap();
        assert_eq!((w.requests, w.bytes, w.errors), (1, 0, 1));
        assert_eq!(s.op(Op::Flush).unwrap().requests, 0);
        assert_eq!((c.requests(), c.errors()), (2, 1));
    }

    #[test]
    fn a_reader_on_another_thread_sees_every_update_once_the_writer_is_done() {
        let c = Arc::new(QueueCounters::new());
        let w = c.clone();
        let reader = {
            let c = c.clone();
            std::thread::spawn(move || {
                // Snapshots while writing: counts never go backwards.
                let mut last = 0;
                for _ in 0..1000 {
                    let n = c.snapshot(0, 1).op(Op::Read).unwrap().requests;
                    assert!(n >= last);
                    last = n;
                }
            })
        };
        for _ in 0..100_000 {
            let t = w.start();
            w.finish(Op::Read, 1, false, t);
        }
        reader.join().unwrap();
        let s = c.snapshot(0, 1);
        let r = s.op(Op::Read).unwrap();
        assert_eq!((r.requests, r.bytes), (100_000, 100_000));
        assert_eq!(r.hist.iter().map(|h| h.1).sum::<u64>(), 100_000);
    }
}

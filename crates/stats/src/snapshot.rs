//! What a reader gets: a device's queues, each with per-op counts and latency buckets (sparse:
//! only the buckets that counted something), and what two snapshots say together.

use serde::{Deserialize, Serialize};

use crate::counters::Op;
use crate::hist::{self, BUCKETS};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpSnapshot {
    pub op: String,
    pub requests: u64,
    /// Bytes of the requests that succeeded (reads, writes; the range of discards and write
    /// zeroes; 0 for flushes).
    pub bytes: u64,
    pub errors: u64,
    /// Sum of latencies, ns.
    pub latency_ns: u64,
    /// (bucket index, count) for the buckets with a count; see `hist`.
    pub hist: Vec<(u32, u64)>,
}

impl OpSnapshot {
    /// One count per bucket.
    pub fn dense(&self) -> Vec<u64> {
        let mut v = vec![0; BUCKETS];
        for &(i, n) in &self.hist {
            if let Some(b) = v.get_mut(i as usize) {
                *b = n;
            }
        }
        v
    }

    /// What happened between `before` (an earlier snapshot of the same op) and this one.
    pub fn since(&self, before: &OpSnapshot) -> OpSnapshot {
        let b = before.dense();
        let hist = self
            .dense()
            .iter()
            .zip(&b)
            .enumerate()
            .filter_map(|(i, (n, o))| match n.saturating_sub(*o) {
                0 => None,
                d => Some((i as u32, d)),
            })
            .collect();
        OpSnapshot {
            op: self.op.clone(),
            requests: self.requests.saturating_sub(before.requests),
            bytes: self.bytes.saturating_sub(before.bytes),
            errors: self.errors.saturating_sub(before.errors),
            latency_ns: self.latency_ns.saturating_sub(before.latency_ns),
            hist,
        }
    }

    /// Latency (ns) at quantile `q`, from the buckets.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        hist::quantile(&self.dense(), q)
    }

    /// Add another queue's counts of the same op (a device total).
    pub fn add(&mut self, o: &OpSnapshot) {
        let mut d = self.dense();
        for &(i, n) in &o.hist {
            if let Some(b) = d.get_mut(i as usize) {
                *b += n;
            }
        }
        self.hist = d
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u32, *n))
            .collect();
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.latency_ns += o.latency_ns;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub queue: u32,
    pub depth: u32,
    /// Requests being served when the snapshot was taken.
    pub inflight: u64,
    pub ops: Vec<OpSnapshot>,
}

impl QueueSnapshot {
    pub fn op(&self, op: Op) -> Option<&OpSnapshot> {
        self.ops.iter().find(|o| o.op == op.name())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    /// The `device` label: the ublk device id, or an export's name.
    pub device: String,
    /// "ublk", "nbd-export" or "vhost".
    pub kind: String,
    /// Where the device is (/dev/ublkbN, an address, a socket).
    pub path: String,
    /// The target it serves, described.
    pub target: String,
    /// Daemons that took the device over after the first (user recovery).
    pub recoveries: u64,
    /// Time since the serving process started, ns (rates divide by differences of it).
    pub uptime_ns: u64,
    pub queues: Vec<QueueSnapshot>,
}

impl DeviceSnapshot {
    /// Every queue's counts of `op` added up.
    pub fn total(&self, op: Op) -> OpSnapshot {
        let mut t = OpSnapshot {
            op: op.name().to_string(),
            requests: 0,
            bytes: 0,
            errors: 0,
            latency_ns: 0,
            hist: Vec::new(),
        };
        for q in &self.queues {
            if let Some(o) = q.op(op) {
                t.add(o);
            }
        }
        t
    }

    pub fn inflight(&self) -> u64 {
        self.queues.iter().map(|q| q.inflight).sum()
    }

    pub fn depth(&self) -> u64 {
        self.queues.iter().map(|q| q.depth as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(requests: u64, hist: Vec<(u32, u64)>) -> OpSnapshot {
        OpSnapshot {
            op: "read".into(),
            requests,
            bytes: requests * 4096,
            errors: 0,
            latency_ns: requests * 1000,
            hist,
        }
    }

    #[test]
    fn since_and_add() {
        let a = op(3, vec![(1, 2), (5, 1)]);
        let b = op(10, vec![(1, 4), (5, 1), (9, 5)]);
        let d = b.since(&a);
        assert_eq!(d.requests, 7);
        assert_eq!(d.bytes, 7 * 4096);
        assert_eq!(d.hist, vec![(1, 2), (9, 5)]);
        let mut t = a.clone();
        t.add(&b);
        assert_eq!(t.requests, 13);
        assert_eq!(t.hist, vec![(1, 6), (5, 2), (9, 5)]);
        assert_eq!(t.quantile_ns(0.4), Some(hist::upper(1)));
        assert_eq!(t.quantile_ns(0.5), Some(hist::upper(5)));
        assert_eq!(t.quantile_ns(0.99), Some(hist::upper(9)));
    }

    #[test]
    fn a_bucket_index_out_of_range_is_ignored_not_a_panic() {
        let o = op(1, vec![(u32::MAX, 1), (2, 1)]);
        assert_eq!(o.dense()[2], 1);
        assert_eq!(o.quantile_ns(0.5), Some(hist::upper(2)));
    }
}

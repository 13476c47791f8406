//! `rate`: IOPS and bandwidth limits for a whole device (every queue, every NBD connection),
//! with bursts: the noisy-neighbour control of a multi-tenant host, like QEMU's throttle groups.
//!
//! Each limit is a token bucket kept as one atomic "virtual finish time" (the generic cell rate
//! algorithm): a request reserves its cost (one request, or its bytes) at the limit's pace, may
//! use up to `burst-ms` of capacity left idle, and waits on its own queue's timer until its turn.
//! No lock: queues race with a compare-and-swap. Requests are never refused, only delayed.
//! IOPS counts reads, writes, discards and write-zeroes; bandwidth counts the bytes read and
//! written (discarding is not moving data); flushes pass unthrottled.
//!
//! ```text
//! --filter rate:iops=1000                  at most 1000 requests/s
//! --filter rate:bw=50M,burst-ms=500        50 MiB/s, with half a second of burst
//! ```

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Filter, FilterQueue};
use crate::kind::{FilterKind, Info, Opt, Value};
use crate::{IoBuf, OpenError, TargetQueue};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RateConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bw: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_ms: Option<u64>,
}

/// Default burst: a tenth of a second of the limit, as QEMU's throttling allows by default.
const DEFAULT_BURST_MS: u64 = 100;

/// One limit: nanoseconds of budget per unit, and the virtual time at which everything reserved
/// so far has been paid for (nanoseconds since `Rate::epoch`).
struct Bucket {
    ns_per_unit: f64,
    burst_ns: u64,
    finish: AtomicU64,
}

impl Bucket {
    fn new(per_second: u64, burst: Duration) -> Bucket {
        Bucket {
            ns_per_unit: 1e9 / per_second as f64,
            burst_ns: burst.as_nanos() as u64,
            finish: AtomicU64::new(0),
        }
    }

    /// Reserve `units` at `now`; how long the caller must wait before going on.
    fn reserve(&self, units: u64, now: u64) -> u64 {
        let cost = (units as f64 * self.ns_per_unit) as u64;
        let mut seen = self.finish.load(Ordering::Relaxed);
        loop {
            // Capacity left idle counts for at most `burst_ns`.
            let start = seen.max(now.saturating_sub(self.burst_ns));
            match self.finish.compare_exchange_weak(
                seen,
                start.saturating_add(cost),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return start.saturating_sub(now),
                Err(v) => seen = v,
            }
        }
    }
}

struct Limits {
    epoch: Instant,
    iops: Option<Bucket>,
    bw: Option<Bucket>,
}

/// The device-wide limits; every queue shares them.
#[derive(Clone)]
pub struct Rate {
    limits: Arc<Limits>,
}

impl FilterKind for Rate {
    const INFO: Info = Info {
        name: "rate",
        about: "limit the whole device's IOPS and bandwidth (token buckets with bursts; requests wait, never fail)",
        opts: &[
            Opt::new("iops", Value::Count, "N", "requests per second"),
            Opt::new(
                "bw",
                Value::Size,
                "SIZE",
                "bytes per second (K/M/G suffixes)",
            ),
            Opt::new(
                "burst-ms",
                Value::Count,
                "MS",
                "idle capacity a burst may use, in milliseconds of the limit (default 100)",
            ),
        ],
    };
    type Config = RateConfig;

    fn new(c: &RateConfig) -> Result<Rate, OpenError> {
        let bad = |m: &str| OpenError::Invalid(format!("rate filter: {m}"));
        if c.iops.is_none() && c.bw.is_none() {
            return Err(bad("give a limit: rate:iops=N and/or rate:bw=SIZE"));
        }
        if c.iops == Some(0) || c.bw == Some(0) {
            return Err(bad("a limit of zero would stop the device"));
        }
        let burst = Duration::from_millis(c.burst_ms.unwrap_or(DEFAULT_BURST_MS));
        if burst > Duration::from_secs(60) {
            return Err(bad("burst-ms is more than a minute"));
        }
        Ok(Rate {
            limits: Arc::new(Limits {
                epoch: Instant::now(),
                iops: c.iops.map(|n| Bucket::new(n, burst)),
                bw: c.bw.map(|n| Bucket::new(n, burst)),
            }),
        })
    }
}

impl Rate {
    /// Wait for the turn of a request moving `bytes` (0: no data).
    async fn admit(&self, bytes: u64) {
        let l = &*self.limits;
        let now = l.epoch.elapsed().as_nanos() as u64;
        let a = l.iops.as_ref().map_or(0, |b| b.reserve(1, now));
        let b = match (&l.bw, bytes) {
            (Some(b), n) if n > 0 => b.reserve(n, now),
            _ => 0,
        };
        let wait = a.max(b);
        if wait > 0 {
            rt::time::sleep(Duration::from_nanos(wait)).await;
        }
    }
}

impl Filter for Rate {
    type Queue = Rate;
    fn notes(&self, mut next: Vec<String>) -> Vec<String> {
        let l = &*self.limits;
        let per = |b: &Option<Bucket>| b.as_ref().map(|b| (1e9 / b.ns_per_unit).round() as u64);
        next.push(format!(
            "rate limit: {} IOPS, {} bytes/s",
            per(&l.iops).map_or("unlimited".into(), |n| n.to_string()),
            per(&l.bw).map_or("unlimited".into(), |n| n.to_string())
        ));
        next
    }
    fn open_queue(&self, _qid: u16) -> io::Result<Rate> {
        Ok(self.clone())
    }
}

impl FilterQueue for Rate {
    async fn read<N: TargetQueue>(&self, next: &N, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        self.admit(buf.len() as u64).await;
        next.read(off, buf).await
    }
    async fn write<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        buf: &IoBuf,
        fua: bool,
    ) -> io::Result<()> {
        self.admit(buf.len() as u64).await;
        next.write(off, buf, fua).await
    }
    async fn discard<N: TargetQueue>(&self, next: &N, off: u64, len: u64) -> io::Result<()> {
        self.admit(0).await;
        next.discard(off, len).await
    }
    async fn write_zeroes<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        len: u64,
        unmap: bool,
    ) -> io::Result<()> {
        self.admit(0).await;
        next.write_zeroes(off, len, unmap).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::null::NullTarget;
    use crate::{Filtered, Target};
    use std::rc::Rc;

    /// `clients` tasks issue back-to-back `bytes`-sized reads for `secs` seconds; requests done.
    fn run(t: &Filtered<Rate, NullTarget>, clients: usize, bytes: usize, secs: f64) -> u64 {
        let q = Rc::new(t.open_queue(0).unwrap());
        let done = Rc::new(std::cell::Cell::new(0u64));
        let rt = rt::Runtime::new().unwrap();
        let until = Instant::now() + Duration::from_secs_f64(secs);
        rt.block_on(async {
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let (q, done) = (q.clone(), done.clone());
                    rt::spawn(async move {
                        let mut b = IoBuf::with_capacity(bytes);
                        while Instant::now() < until {
                            q.read(0, &mut b).await.unwrap();
                            done.set(done.get() + 1);
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
        });
        done.get()
    }

    fn limited(c: RateConfig) -> Filtered<Rate, NullTarget> {
        Filtered {
            filter: Rate::new(&c).unwrap(),
            next: NullTarget::new(1 << 30, 512).unwrap(),
        }
    }

    #[test]
    fn iops_limit_holds_at_depth() {
        let t = limited(RateConfig {
            iops: Some(1000),
            burst_ms: Some(10),
            ..Default::default()
        });
        let n = run(&t, 64, 4096, 1.0);
        // 1000 in the second, plus the 10 ms burst and the requests already waiting at the end.
        assert!(
            (900..=1100).contains(&n),
            "{n} requests in 1 s at iops=1000"
        );
    }

    #[test]
    fn bandwidth_limit_holds_and_burst_is_bounded() {
        let t = limited(RateConfig {
            bw: Some(8 << 20),
            burst_ms: Some(100),
            ..Default::default()
        });
        // 64 KiB requests: 128 per second at 8 MiB/s; the first 100 ms burst adds ~13.
        let n = run(&t, 8, 64 << 10, 1.0);
        assert!(
            (115..=155).contains(&n),
            "{n} requests of 64 KiB in 1 s at 8 MiB/s"
        );
    }

    #[test]
    fn limits_are_shared_by_every_queue() {
        let t = Arc::new(limited(RateConfig {
            iops: Some(500),
            burst_ms: Some(10),
            ..Default::default()
        }));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || run(&t, 16, 4096, 1.0))
            })
            .collect();
        let n: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(
            (450..=560).contains(&n),
            "{n} requests from 2 queues at iops=500"
        );
    }

    #[test]
    fn bad_parameters_are_one_line() {
        for c in [
            RateConfig::default(),
            RateConfig {
                iops: Some(0),
                ..Default::default()
            },
            RateConfig {
                bw: Some(1),
                burst_ms: Some(100_000),
                ..Default::default()
            },
        ] {
            let e = Rate::new(&c).err().unwrap().to_string();
            assert!(e.starts_with("rate filter: ") && !e.contains('\n'), "{e}");
        }
    }
}

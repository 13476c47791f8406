//! `delay`: a fixed latency added to every request before it reaches the inner target, with
//! unlimited concurrency (each request sleeps on its own ring timer, so N requests in flight finish
//! after one latency, not N). A wide, slow backend for queue-depth experiments: the ideal IOPS is
//! `in_flight / latency`.

use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Filter, FilterQueue};
use crate::kind::{FilterKind, Info, Opt, Value};
use crate::{IoBuf, OpenError, TargetQueue};

/// `delay:ms=N` or `delay:us=N`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DelayConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub us: Option<u64>,
}

/// Adds a fixed latency to every request; any number of requests wait at once.
#[derive(Debug, Clone, Copy)]
pub struct Delay {
    latency: Duration,
}

impl Delay {
    pub fn new(latency: Duration) -> Delay {
        Delay { latency }
    }
    pub fn latency(&self) -> Duration {
        self.latency
    }
    async fn wait(&self) {
        if !self.latency.is_zero() {
            rt::time::sleep(self.latency).await;
        }
    }
}

impl FilterKind for Delay {
    const INFO: Info = Info {
        name: "delay",
        about: "a fixed latency per request, any number of requests waiting at once (a wide, slow backend)",
        opts: &[
            Opt::new("ms", Value::Count, "N", "milliseconds"),
            Opt::new("us", Value::Count, "N", "microseconds"),
        ],
    };
    type Config = DelayConfig;
    fn new(c: &DelayConfig) -> Result<Delay, OpenError> {
        let d = match (c.ms, c.us) {
            (Some(ms), None) => Duration::from_millis(ms),
            (None, Some(us)) => Duration::from_micros(us),
            _ => {
                return Err(OpenError::Invalid(
                    "the delay filter needs one latency: delay:ms=N or delay:us=N".into(),
                ));
            }
        };
        if d > Duration::from_secs(60) {
            return Err(OpenError::Invalid(format!(
                "delay filter: {d:?} is more than 60 s"
            )));
        }
        Ok(Delay::new(d))
    }
}

impl Filter for Delay {
    type Queue = Delay;
    fn open_queue(&self, _qid: u16) -> io::Result<Delay> {
        Ok(*self)
    }
}

impl FilterQueue for Delay {
    async fn read<N: TargetQueue>(&self, next: &N, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        self.wait().await;
        next.read(off, buf).await
    }
    async fn write<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        buf: &IoBuf,
        fua: bool,
    ) -> io::Result<()> {
        self.wait().await;
        next.write(off, buf, fua).await
    }
    async fn flush<N: TargetQueue>(&self, next: &N) -> io::Result<()> {
        self.wait().await;
        next.flush().await
    }
    async fn discard<N: TargetQueue>(&self, next: &N, off: u64, len: u64) -> io::Result<()> {
        self.wait().await;
        next.discard(off, len).await
    }
    async fn write_zeroes<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        len: u64,
        unmap: bool,
    ) -> io::Result<()> {
        self.wait().await;
        next.write_zeroes(off, len, unmap).await
    }
    // block_status is metadata, not I/O: passed through without delay (the default).
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemTarget;
    use crate::{Filtered, Target};
    use rt::Runtime;
    use std::time::Instant;

    fn config(ms: Option<u64>, us: Option<u64>) -> Result<Delay, OpenError> {
        <Delay as FilterKind>::new(&DelayConfig { ms, us })
    }

    #[test]
    fn one_latency_of_at_most_a_minute() {
        assert_eq!(
            config(Some(5), None).unwrap().latency(),
            Duration::from_millis(5)
        );
        assert_eq!(
            config(None, Some(250)).unwrap().latency(),
            Duration::from_micros(250)
        );
        for (ms, us) in [(None, None), (Some(1), Some(1)), (Some(100_000), None)] {
            let e = config(ms, us).unwrap_err().to_string();
            assert!(
                !e.contains('\n') && e.contains("delay"),
                "{ms:?} {us:?}: {e}"
            );
        }
        assert_eq!(
            Delay::describe(&DelayConfig {
                ms: Some(5),
                us: None
            }),
            "delay:ms=5"
        );
    }

    #[test]
    fn adds_latency_concurrently_and_passes_data_through() {
        let t = Filtered {
            filter: Delay::new(Duration::from_millis(20)),
            next: MemTarget::new(1 << 20, 512).unwrap(),
        };
        assert_eq!(t.geometry().size, 1 << 20);
        let q = t.open_queue(0).unwrap();
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let mut w = IoBuf::with_capacity(8192);
            w.as_mut_slice()
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 251) as u8);
            let t0 = Instant::now();
            q.write(4096, &w, false).await.unwrap();
            let one = t0.elapsed();
            assert!(one >= Duration::from_millis(19), "{one:?}");
            let mut r = IoBuf::with_capacity(8192);
            q.read(4096, &mut r).await.unwrap();
            assert_eq!(r.as_slice(), w.as_slice());
        });
        // 32 requests at once take about one latency, not 32: unlimited concurrency.
        let q = std::rc::Rc::new(q);
        let t0 = Instant::now();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..32u64 {
                let q = q.clone();
                tasks.push(rt::spawn(async move {
                    let mut b = IoBuf::with_capacity(4096);
                    q.read(i * 4096, &mut b).await.unwrap();
                }));
            }
            for t in tasks {
                t.await;
            }
        });
        let all = t0.elapsed();
        assert!(
            all >= Duration::from_millis(19) && all < Duration::from_millis(300),
            "{all:?}"
        );
    }
}

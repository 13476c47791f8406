//! `delay`: a fixed latency added to every request before it reaches the inner target, with
//! unlimited concurrency (each request sleeps on its own ring timer, so N requests in flight finish
//! after one latency, not N). A wide, slow backend for queue-depth experiments: the ideal IOPS is
//! `in_flight / latency`.

use std::io;
use std::time::Duration;

use crate::{Extent, Geometry, IoBuf, OpenError, Target, TargetQueue};

/// Parse the parameters of `delay:ms=N` or `delay:us=N` (the part after `delay:`).
pub fn parse_params(params: &str) -> Result<Duration, OpenError> {
    let bad = || {
        OpenError::Invalid(format!(
            "bad delay filter 'delay:{params}': expected delay:ms=N or delay:us=N"
        ))
    };
    let (key, val) = params.split_once('=').ok_or_else(bad)?;
    let n: u64 = val.trim().parse().map_err(|_| bad())?;
    let d = match key.trim() {
        "ms" => Duration::from_millis(n),
        "us" => Duration::from_micros(n),
        _ => return Err(bad()),
    };
    if d > Duration::from_secs(60) {
        return Err(OpenError::Invalid(format!(
            "delay filter: {d:?} is more than 60 s"
        )));
    }
    Ok(d)
}

/// Wraps `T`, delaying every request by a fixed time.
pub struct Delay<T> {
    inner: T,
    latency: Duration,
}

impl<T> Delay<T> {
    pub fn new(inner: T, latency: Duration) -> Delay<T> {
        Delay { inner, latency }
    }
    pub fn inner(&self) -> &T {
        &self.inner
    }
    pub fn latency(&self) -> Duration {
        self.latency
    }
}

impl<T: Target> Target for Delay<T> {
    type Queue = DelayQueue<T::Queue>;
    fn geometry(&self) -> Geometry {
        self.inner.geometry()
    }
    fn open_queue(&self, qid: u16) -> io::Result<Self::Queue> {
        Ok(DelayQueue {
            inner: self.inner.open_queue(qid)?,
            latency: self.latency,
        })
    }
}

/// One queue of a [`Delay`].
pub struct DelayQueue<Q> {
    inner: Q,
    latency: Duration,
}

impl<Q> DelayQueue<Q> {
    async fn wait(&self) {
        if !self.latency.is_zero() {
            rt::time::sleep(self.latency).await;
        }
    }
}

impl<Q: TargetQueue> TargetQueue for DelayQueue<Q> {
    async fn read(&self, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        self.wait().await;
        self.inner.read(off, buf).await
    }
    async fn write(&self, off: u64, buf: &IoBuf, fua: bool) -> io::Result<()> {
        self.wait().await;
        self.inner.write(off, buf, fua).await
    }
    async fn flush(&self) -> io::Result<()> {
        self.wait().await;
        self.inner.flush().await
    }
    async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        self.wait().await;
        self.inner.discard(off, len).await
    }
    async fn write_zeroes(&self, off: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.wait().await;
        self.inner.write_zeroes(off, len, unmap).await
    }
    async fn block_status(&self, off: u64, len: u64) -> io::Result<Vec<Extent>> {
        // Metadata, not I/O: no delay.
        self.inner.block_status(off, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemTarget;
    use rt::Runtime;
    use std::time::Instant;

    #[test]
    fn params_parse_and_bad_ones_are_one_line() {
        assert_eq!(parse_params("ms=5").unwrap(), Duration::from_millis(5));
        assert_eq!(parse_params("us=250").unwrap(), Duration::from_micros(250));
        for bad in ["", "ms", "ms=", "ms=x", "s=1", "ms=-1", "ms=100000"] {
            let e = parse_params(bad).unwrap_err().to_string();
            assert!(!e.contains('\n') && !e.is_empty(), "{bad}: {e}");
        }
    }

    #[test]
    fn adds_latency_concurrently_and_passes_data_through() {
        let t = Delay::new(
            MemTarget::new(1 << 20, 512).unwrap(),
            Duration::from_millis(20),
        );
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

//! `error`: fail chosen requests with a chosen errno, to prove that errors reach applications
//! (and that a stack above us handles them). Which requests: those of the listed kinds (`ops`)
//! that touch a byte range (`offset`, `length`; a flush has no range and always matches), each
//! with probability `rate`. A failed request never reaches the target.
//!
//! ```text
//! --filter error:ops=read,offset=1M,length=4K            every read of that 4 KiB fails with EIO
//! --filter error:ops=write+flush,rate=0.01,errno=ENOSPC  1% of writes and flushes
//! ```

use std::cell::Cell;
use std::io;

use serde::{Deserialize, Serialize};

use super::{Filter, FilterQueue, errno};
use crate::kind::{FilterKind, Info, Opt, Value};
use crate::{Extent, IoBuf, OpenError, TargetQueue};

/// The errnos `errno=` accepts, by name (as listed in its help).
const ERRNOS: &[(&str, i32)] = &[
    ("EIO", libc::EIO),
    ("ENOSPC", libc::ENOSPC),
    ("EROFS", libc::EROFS),
    ("EPERM", libc::EPERM),
    ("ENOMEM", libc::ENOMEM),
    ("EINVAL", libc::EINVAL),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ENOTSUP", libc::EOPNOTSUPP),
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ErrorConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// Request kinds, as bits.
const READ: u8 = 1;
const WRITE: u8 = 2;
const FLUSH: u8 = 4;
const DISCARD: u8 = 8;
const ZEROES: u8 = 16;
const OPS: &[(&str, u8)] = &[
    ("read", READ),
    ("write", WRITE),
    ("flush", FLUSH),
    ("discard", DISCARD),
    ("zeroes", ZEROES),
];

#[derive(Debug, Clone, Copy)]
pub struct ErrorFilter {
    ops: u8,
    /// Probability, scaled to `u32::MAX` (so `rate=1` always fails).
    threshold: u64,
    errno: i32,
    start: u64,
    end: u64,
    seed: u64,
}

impl FilterKind for ErrorFilter {
    const INFO: Info = Info {
        name: "error",
        about: "fail requests of the given kinds in a byte range, at a rate, with an errno (fault injection)",
        opts: &[
            Opt::new(
                "ops",
                Value::Text,
                "OPS",
                "which requests, joined by +: read, write, flush, discard, zeroes (default read+write)",
            ),
            Opt::new(
                "rate",
                Value::Decimal,
                "P",
                "probability 0..1 that a matching request fails (default 1)",
            ),
            Opt::new(
                "errno",
                Value::Text,
                "NAME",
                "the error: EIO (default), ENOSPC, EROFS, EPERM, ENOMEM, EINVAL, ETIMEDOUT, ENOTSUP",
            ),
            Opt::new(
                "offset",
                Value::Size,
                "SIZE",
                "start of the failing range (default 0)",
            ),
            Opt::new(
                "length",
                Value::Size,
                "SIZE",
                "length of the failing range (default: to the end)",
            ),
            Opt::new(
                "seed",
                Value::Count,
                "N",
                "seed of the random choices (default 1)",
            ),
        ],
    };
    type Config = ErrorConfig;

    fn new(c: &ErrorConfig) -> Result<ErrorFilter, OpenError> {
        let bad = |m: String| OpenError::Invalid(format!("error filter: {m}"));
        let mut ops = 0;
        for w in c.ops.as_deref().unwrap_or("read+write").split('+') {
            let bit = OPS.iter().find(|(n, _)| *n == w).map(|(_, b)| *b);
            ops |= bit.ok_or_else(|| {
                bad(format!(
                    "unknown request kind '{w}' in ops (read, write, flush, discard, zeroes)"
                ))
            })?;
        }
        let rate = c.rate.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&rate) {
            return Err(bad(format!("rate {rate} is outside 0..1")));
        }
        let name = c.errno.as_deref().unwrap_or("EIO");
        let errno = ERRNOS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
            .ok_or_else(|| {
                let known: Vec<&str> = ERRNOS.iter().map(|(n, _)| *n).collect();
                bad(format!(
                    "unknown errno '{name}' (known: {})",
                    known.join(", ")
                ))
            })?;
        let start = c.offset.unwrap_or(0);
        let end = match c.length {
            Some(0) => return Err(bad("length must be greater than zero".into())),
            Some(l) => start.saturating_add(l),
            None => u64::MAX,
        };
        Ok(ErrorFilter {
            ops,
            threshold: (rate * u32::MAX as f64) as u64,
            errno,
            start,
            end,
            seed: c.seed.unwrap_or(1),
        })
    }
}

impl Filter for ErrorFilter {
    type Queue = ErrorQueue;
    fn open_queue(&self, qid: u16) -> io::Result<ErrorQueue> {
        Ok(ErrorQueue {
            f: *self,
            // Queues draw from different sequences; never the all-zero xorshift state.
            rng: Cell::new((self.seed ^ (qid as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1),
        })
    }
}

pub struct ErrorQueue {
    f: ErrorFilter,
    rng: Cell<u64>,
}

impl ErrorQueue {
    /// Does a request of kind `op` on `[off, off+len)` fail? (`len` 0: no range, a flush.)
    fn fails(&self, op: u8, off: u64, len: u64) -> io::Result<()> {
        let f = &self.f;
        let hit = f.ops & op != 0 && (len == 0 || (off < f.end && off + len > f.start));
        if !hit || !self.draw() {
            return Ok(());
        }
        tracing::debug!(
            op,
            off,
            len,
            errno = f.errno,
            "error filter: failing a request"
        );
        Err(errno(f.errno))
    }

    /// True with probability `rate` (xorshift64: no allocation, no lock).
    fn draw(&self) -> bool {
        if self.f.threshold >= u32::MAX as u64 {
            return true;
        }
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 32) < self.f.threshold
    }
}

impl FilterQueue for ErrorQueue {
    async fn read<N: TargetQueue>(&self, next: &N, off: u64, buf: &mut IoBuf) -> io::Result<()> {
        self.fails(READ, off, buf.len() as u64)?;
        next.read(off, buf).await
    }
    async fn write<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        buf: &IoBuf,
        fua: bool,
    ) -> io::Result<()> {
        self.fails(WRITE, off, buf.len() as u64)?;
        next.write(off, buf, fua).await
    }
    async fn flush<N: TargetQueue>(&self, next: &N) -> io::Result<()> {
        self.fails(FLUSH, 0, 0)?;
        next.flush().await
    }
    async fn discard<N: TargetQueue>(&self, next: &N, off: u64, len: u64) -> io::Result<()> {
        self.fails(DISCARD, off, len)?;
        next.discard(off, len).await
    }
    async fn write_zeroes<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        len: u64,
        unmap: bool,
    ) -> io::Result<()> {
        self.fails(ZEROES, off, len)?;
        next.write_zeroes(off, len, unmap).await
    }
    async fn block_status<N: TargetQueue>(
        &self,
        next: &N,
        off: u64,
        len: u64,
    ) -> io::Result<Vec<Extent>> {
        next.block_status(off, len).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemTarget;
    use crate::{Filtered, Target};

    fn filter(c: ErrorConfig) -> Filtered<ErrorFilter, MemTarget> {
        Filtered {
            filter: ErrorFilter::new(&c).unwrap(),
            next: MemTarget::new(1 << 20, 512).unwrap(),
        }
    }

    #[test]
    fn fails_only_the_chosen_kinds_in_the_range() {
        let t = filter(ErrorConfig {
            ops: Some("read+flush".into()),
            errno: Some("ENOSPC".into()),
            offset: Some(8192),
            length: Some(4096),
            ..Default::default()
        });
        let q = t.open_queue(0).unwrap();
        rt::Runtime::new().unwrap().block_on(async {
            let mut b = IoBuf::with_capacity(4096);
            let e = q.read(8192, &mut b).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
            // Overlapping by one sector from below, and from above.
            let mut b2 = IoBuf::with_capacity(8192);
            assert!(q.read(512, &mut b2).await.is_err());
            assert!(q.read(12288 - 512, &mut b).await.is_err());
            // Next to the range, and other kinds: through.
            q.read(4096, &mut b).await.unwrap();
            q.read(12288, &mut b).await.unwrap();
            q.write(8192, &b, false).await.unwrap();
            q.discard(8192, 4096).await.unwrap();
            let e = q.flush().await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        });
    }

    #[test]
    fn rate_is_a_probability() {
        let t = filter(ErrorConfig {
            rate: Some(0.25),
            seed: Some(7),
            ..Default::default()
        });
        let q = t.open_queue(0).unwrap();
        let failed = rt::Runtime::new().unwrap().block_on(async {
            let mut b = IoBuf::with_capacity(512);
            let mut n = 0;
            for i in 0..4000u64 {
                if q.read(i % 2048 * 512, &mut b).await.is_err() {
                    n += 1;
                }
            }
            n
        });
        assert!(
            (800..1200).contains(&failed),
            "{failed} of 4000 at rate 0.25"
        );
        let none = filter(ErrorConfig {
            rate: Some(0.0),
            ..Default::default()
        });
        let q = none.open_queue(0).unwrap();
        rt::Runtime::new().unwrap().block_on(async {
            let mut b = IoBuf::with_capacity(512);
            for _ in 0..1000 {
                q.read(0, &mut b).await.unwrap();
            }
        });
    }

    #[test]
    fn bad_parameters_are_one_line() {
        for c in [
            ErrorConfig {
                ops: Some("read+jump".into()),
                ..Default::default()
            },
            ErrorConfig {
                rate: Some(1.5),
                ..Default::default()
            },
            ErrorConfig {
                errno: Some("EWHAT".into()),
                ..Default::default()
            },
            ErrorConfig {
                length: Some(0),
                ..Default::default()
            },
        ] {
            let e = ErrorFilter::new(&c).unwrap_err().to_string();
            assert!(e.starts_with("error filter: ") && !e.contains('\n'), "{e}");
        }
    }
}

//! `null`: writes go nowhere and reads return zeroes, without storage. The baseline for
//! measuring the data path itself.
//!
//! Reads must still fill the caller's buffer: a reader of the device must never see memory it
//! did not write (a page-cache page, another request's data). A CPU buffer is zeroed in place; a
//! zero-copy kernel buffer is filled from `/dev/zero` by a fixed-buffer read. Frontends may skip
//! moving a write's data to this target ([`Caps::ignores_data`]), never a read's.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::kind::{Info, Opt, TargetKind, Value};
use crate::{Caps, Geometry, IoBuf, OpenError, Target, TargetQueue, check_size};

pub struct NullTarget {
    geo: Geometry,
    /// The size now (online resize may grow it).
    size: AtomicU64,
    /// For zero-copy buffers, which only io_uring can fill.
    zero: Arc<File>,
}

/// `-t null --size N [--logical-block B]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NullConfig {
    pub size: u64,
    #[serde(default = "crate::default_block")]
    pub logical_block: u32,
}

impl NullTarget {
    pub fn new(size: u64, logical_block: u32) -> io::Result<NullTarget> {
        let caps = Caps {
            flush: false,
            fua: false,
            discard: true,
            write_zeroes: true,
            consistent_across_queues: true,
            ignores_data: true,
            ..Caps::default()
        };
        Ok(NullTarget {
            geo: Geometry {
                size,
                logical_block,
                physical_block: logical_block.max(4096),
                caps,
            },
            size: AtomicU64::new(size),
            zero: Arc::new(File::open("/dev/zero")?),
        })
    }
}

impl TargetKind for NullTarget {
    const INFO: Info = Info {
        name: "null",
        about: "no storage: writes go nowhere, reads return zeroes (measures the data path itself)",
        opts: &[
            Opt::new(
                "size",
                Value::Size,
                "SIZE",
                "device size (K/M/G/T suffixes)",
            )
            .short('s')
            .required(),
            crate::LOGICAL_BLOCK,
        ],
    };
    type Config = NullConfig;
    fn check(c: &NullConfig) -> Result<(), OpenError> {
        check_size(c.size, c.logical_block)
    }
    fn open(c: &NullConfig) -> Result<NullTarget, OpenError> {
        check_size(c.size, c.logical_block)?;
        NullTarget::new(c.size, c.logical_block)
            .map_err(|e| OpenError::Io(format!("cannot open /dev/zero: {e}")))
    }
    fn describe(c: &NullConfig) -> String {
        format!("null {}", crate::size::format_size(c.size))
    }
}

impl Target for NullTarget {
    type Queue = NullQueue;
    fn geometry(&self) -> Geometry {
        Geometry {
            size: self.size.load(Ordering::Acquire),
            ..self.geo
        }
    }
    /// Nothing behind it to follow: a resize needs the size.
    fn backing_size(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
    fn resize(&self, size: u64) -> io::Result<()> {
        check_size(size, self.geo.logical_block).map_err(|e| io::Error::other(e.to_string()))?;
        self.size.store(size, Ordering::Release);
        Ok(())
    }
    fn open_queue(&self, _qid: u16) -> io::Result<NullQueue> {
        Ok(NullQueue {
            zero: self.zero.clone(),
        })
    }
}

pub struct NullQueue {
    zero: Arc<File>,
}

impl TargetQueue for NullQueue {
    async fn read(&self, _off: u64, buf: &mut IoBuf) -> io::Result<()> {
        if buf.is_cpu_accessible() {
            buf.as_mut_slice().fill(0);
            return Ok(());
        }
        rt::fs::read_exact_at(self.zero.as_raw_fd(), buf, 0).await
    }
    async fn write(&self, _off: u64, _buf: &IoBuf, _fua: bool) -> io::Result<()> {
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    async fn discard(&self, _off: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    async fn write_zeroes(&self, _off: u64, _len: u64, _unmap: bool) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_zeroes_whatever_the_buffer_held() {
        let t = NullTarget::open(&NullConfig {
            size: 1 << 20,
            logical_block: 512,
        })
        .unwrap();
        let q = t.open_queue(0).unwrap();
        rt::Runtime::new().unwrap().block_on(async {
            let mut b = IoBuf::with_capacity(8192);
            b.as_mut_slice().fill(0xa5);
            q.write(0, &b, false).await.unwrap();
            q.read(0, &mut b).await.unwrap();
            assert!(b.as_slice().iter().all(|&x| x == 0));
        });
        assert_eq!(
            NullTarget::describe(&NullConfig {
                size: 1 << 30,
                logical_block: 512
            }),
            "null 1G"
        );
    }
}

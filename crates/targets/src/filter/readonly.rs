//! `readonly`: the layer above sees a read-only device; writes, discards and write-zeroes fail
//! with EROFS before they reach the target. `--read-only` puts it in front of targets that
//! cannot open their storage read-only themselves.

use std::io;

use serde::{Deserialize, Serialize};

use super::{Filter, FilterQueue, errno};
use crate::kind::{FilterKind, Info};
use crate::{Caps, Geometry, IoBuf, OpenError, TargetQueue};

#[derive(Debug, Clone, Copy)]
pub struct ReadOnly;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadOnlyConfig {}

impl FilterKind for ReadOnly {
    const INFO: Info = Info {
        name: "readonly",
        about: "refuse writes, discards and write-zeroes (EROFS); the device is read-only",
        opts: &[],
    };
    type Config = ReadOnlyConfig;
    fn new(_: &ReadOnlyConfig) -> Result<ReadOnly, OpenError> {
        Ok(ReadOnly)
    }
}

impl Filter for ReadOnly {
    type Queue = ReadOnly;
    fn geometry(&self, next: Geometry) -> Geometry {
        let caps = Caps {
            read_only: true,
            discard: false,
            write_zeroes: false,
            ..next.caps
        };
        Geometry { caps, ..next }
    }
    fn open_queue(&self, _qid: u16) -> io::Result<ReadOnly> {
        Ok(ReadOnly)
    }
}

impl FilterQueue for ReadOnly {
    async fn write<N: TargetQueue>(&self, _: &N, _: u64, _: &IoBuf, _: bool) -> io::Result<()> {
        Err(errno(libc::EROFS))
    }
    async fn discard<N: TargetQueue>(&self, _: &N, _: u64, _: u64) -> io::Result<()> {
        Err(errno(libc::EROFS))
    }
    async fn write_zeroes<N: TargetQueue>(&self, _: &N, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(errno(libc::EROFS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemTarget;
    use crate::{Filtered, Target};

    #[test]
    fn writes_are_refused_and_reads_pass() {
        let t = Filtered {
            filter: ReadOnly,
            next: MemTarget::new(1 << 20, 512).unwrap(),
        };
        let caps = t.geometry().caps;
        assert!(caps.read_only && !caps.discard && !caps.write_zeroes);
        let q = t.open_queue(0).unwrap();
        rt::Runtime::new().unwrap().block_on(async {
            let mut b = IoBuf::with_capacity(4096);
            q.read(0, &mut b).await.unwrap();
            let e = q.write(0, &b, false).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS));
            let e = q.discard(0, 4096).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS));
            let e = q.write_zeroes(0, 4096, true).await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS));
            q.flush().await.unwrap();
        });
    }
}

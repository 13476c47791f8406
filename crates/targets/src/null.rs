//! `null`: every request succeeds without touching data (reads return whatever the buffer held).
//! The baseline for measuring the data path itself.

use std::io;

use crate::{Caps, Geometry, IoBuf, Target, TargetQueue};

pub struct NullTarget {
    geo: Geometry,
}

impl NullTarget {
    pub fn new(size: u64, logical_block: u32) -> NullTarget {
        let caps = Caps {
            flush: false,
            fua: false,
            discard: true,
            write_zeroes: true,
            consistent_across_queues: true,
            ignores_data: true,
            ..Caps::default()
        };
        NullTarget {
            geo: Geometry {
                size,
                logical_block,
                physical_block: logical_block.max(4096),
                caps,
            },
        }
    }
}

impl Target for NullTarget {
    type Queue = NullQueue;
    fn geometry(&self) -> Geometry {
        self.geo
    }
    fn open_queue(&self, _qid: u16) -> io::Result<NullQueue> {
        Ok(NullQueue)
    }
}

pub struct NullQueue;

impl TargetQueue for NullQueue {
    async fn read(&self, _off: u64, _buf: &mut IoBuf) -> io::Result<()> {
        Ok(())
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

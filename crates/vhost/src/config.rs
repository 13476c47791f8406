//! What the device offers: virtio-blk feature bits, the vhost-user protocol features, and the
//! virtio-blk configuration space the guest reads (`struct virtio_blk_config`, little-endian,
//! fields at the offsets the virtio spec gives them).

use std::sync::atomic::{AtomicBool, Ordering};

use targets::Geometry;

/// virtio-blk feature bits (virtio 1.2, 5.2.3).
pub mod blk {
    pub const SIZE_MAX: u32 = 1;
    pub const SEG_MAX: u32 = 2;
    pub const RO: u32 = 5;
    pub const BLK_SIZE: u32 = 6;
    pub const FLUSH: u32 = 9;
    pub const TOPOLOGY: u32 = 10;
    pub const CONFIG_WCE: u32 = 11;
    pub const MQ: u32 = 12;
    pub const DISCARD: u32 = 13;
    pub const WRITE_ZEROES: u32 = 14;
}

/// Transport-level feature bits.
pub const RING_INDIRECT_DESC: u32 = 28;
pub const RING_EVENT_IDX: u32 = 29;
pub const VERSION_1: u32 = 32;
/// vhost-user: GET/SET_PROTOCOL_FEATURES are understood.
pub const PROTOCOL_FEATURES: u32 = 30;

/// Bytes of the `virtio_blk_config` fields we fill (up to and including
/// `write_zeroes_may_unmap` and its padding); reads past it return zeroes.
pub const CONFIG_LEN: usize = 60;
/// Offset of the `writeback` byte, the only field a guest may write (CONFIG_WCE).
pub const WRITEBACK_OFFSET: usize = 32;

/// The longest serial (`GET_ID`) a guest can read.
pub const ID_BYTES: usize = 20;

/// What the user chose for the device (beyond the target).
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub num_queues: u16,
    /// Largest ring size the frontend may set (a power of two, 256..32768... any the guest
    /// negotiates up to it).
    pub queue_size: u16,
    pub read_only: bool,
    /// GET_ID answer; at most 20 bytes.
    pub serial: String,
    /// Where each virtqueue counts its requests (index = queue; a queue past the end counts
    /// nothing). Its thread is the only writer; `ublkd vhost --metrics-listen` reads snapshots.
    pub counters: QueueCountersList,
}

/// Per-queue request counters, one per virtqueue.
#[derive(Clone, Default)]
pub struct QueueCountersList(pub Vec<std::sync::Arc<stats::QueueCounters>>);

impl QueueCountersList {
    /// `n` fresh counters.
    pub fn new(n: usize) -> QueueCountersList {
        QueueCountersList(
            (0..n)
                .map(|_| std::sync::Arc::new(stats::QueueCounters::new()))
                .collect(),
        )
    }
}

impl std::fmt::Debug for QueueCountersList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} queue counters", self.0.len())
    }
}

/// Requests larger than this are refused (IOERR): it bounds the bounce buffer one request may
/// allocate. Advertised as `seg_max * size_max`, so a guest that honours the config never
/// sends one.
pub const MAX_IO_BYTES: u64 = 4 << 20;
/// Largest data segment a guest may use (`size_max`).
pub const SIZE_MAX: u32 = 64 << 10;
/// Most data segments in one request (`seg_max`).
pub const SEG_MAX: u32 = (MAX_IO_BYTES / SIZE_MAX as u64) as u32;
/// Most ranges in one DISCARD / WRITE_ZEROES request.
pub const MAX_DWZ_SEG: u32 = 16;
/// Most sectors one discard or write-zeroes range may cover (2 GiB; the guest splits larger
/// ones).
pub const MAX_DWZ_SECTORS: u32 = 1 << 22;

/// The device as the guest sees it: features and config space. Shared by the control thread
/// and every queue thread; only `writeback` changes (the guest's cache mode).
#[derive(Debug)]
pub struct Device {
    pub geo: Geometry,
    pub opts: DeviceOptions,
    /// Write-back cache mode (CONFIG_WCE `writeback` = 1, the default). In write-through mode
    /// every write is made durable before it completes (FUA).
    writeback: AtomicBool,
}

impl Device {
    pub fn new(geo: Geometry, mut opts: DeviceOptions) -> Device {
        opts.read_only |= geo.caps.read_only;
        let mut cut = opts.serial.len().min(ID_BYTES);
        while !opts.serial.is_char_boundary(cut) {
            cut -= 1;
        }
        opts.serial.truncate(cut);
        Device {
            geo,
            opts,
            writeback: AtomicBool::new(true),
        }
    }

    pub fn read_only(&self) -> bool {
        self.opts.read_only
    }
    pub fn discard(&self) -> bool {
        self.geo.caps.discard && !self.read_only()
    }
    pub fn write_zeroes(&self) -> bool {
        !self.read_only()
    }
    pub fn writeback(&self) -> bool {
        self.writeback.load(Ordering::Relaxed)
    }
    /// The device's capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.geo.size >> 9
    }

    /// The virtio feature bits we offer.
    pub fn features(&self) -> u64 {
        let mut bits = vec![
            blk::SIZE_MAX,
            blk::SEG_MAX,
            blk::BLK_SIZE,
            blk::FLUSH,
            blk::TOPOLOGY,
            blk::CONFIG_WCE,
            blk::MQ,
            RING_INDIRECT_DESC,
            RING_EVENT_IDX,
            VERSION_1,
            PROTOCOL_FEATURES,
        ];
        if self.read_only() {
            bits.push(blk::RO);
        }
        if self.discard() {
            bits.push(blk::DISCARD);
        }
        if self.write_zeroes() {
            bits.push(blk::WRITE_ZEROES);
        }
        bits.into_iter().fold(0, |f, b| f | 1u64 << b)
    }

    /// The config space bytes `[offset, offset + len)`; `None` if the range is not inside the
    /// structure (the frontend then gets an error reply).
    pub fn config(&self, offset: u32, len: u32) -> Option<Vec<u8>> {
        let mut c = [0u8; 256];
        let put32 =
            |c: &mut [u8; 256], at: usize, v: u32| c[at..at + 4].copy_from_slice(&v.to_le_bytes());
        c[0..8].copy_from_slice(&self.sectors().to_le_bytes());
        put32(&mut c, 8, SIZE_MAX);
        put32(&mut c, 12, SEG_MAX);
        // geometry (16..20) stays zero: meaningless for a virtual disk.
        let lbs = self.geo.logical_block.max(512);
        put32(&mut c, 20, lbs);
        let pbs = self.geo.physical_block.max(lbs);
        c[24] = (pbs / lbs).max(1).trailing_zeros() as u8; // physical_block_exp
        c[25] = 0; // alignment_offset
        c[26..28].copy_from_slice(&((pbs / lbs).min(u16::MAX as u32) as u16).to_le_bytes()); // min_io_size
        put32(&mut c, 28, 0); // opt_io_size: unknown
        c[WRITEBACK_OFFSET] = self.writeback() as u8;
        c[34..36].copy_from_slice(&self.opts.num_queues.to_le_bytes());
        let align = lbs >> 9;
        if self.discard() {
            put32(&mut c, 36, MAX_DWZ_SECTORS);
            put32(&mut c, 40, MAX_DWZ_SEG);
            put32(&mut c, 44, align);
        }
        if self.write_zeroes() {
            put32(&mut c, 48, MAX_DWZ_SECTORS);
            put32(&mut c, 52, MAX_DWZ_SEG);
            c[56] = self.geo.caps.discard as u8; // write_zeroes_may_unmap
        }
        let (start, len) = (offset as usize, len as usize);
        let end = start.checked_add(len)?;
        (end <= c.len()).then(|| c[start..end].to_vec())
    }

    /// A guest write to config space: only `writeback` may change. Returns false for any
    /// other field (the write is refused).
    pub fn set_config(&self, offset: u32, data: &[u8]) -> bool {
        if offset as usize != WRITEBACK_OFFSET || data.len() != 1 || data[0] > 1 {
            return false;
        }
        self.writeback.store(data[0] == 1, Ordering::Relaxed);
        tracing::info!(
            "guest set the cache mode to {}",
            if data[0] == 1 {
                "write-back"
            } else {
                "write-through (every write is made durable)"
            }
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use targets::Caps;

    fn dev(ro: bool) -> Device {
        let geo = Geometry {
            size: 1 << 30,
            logical_block: 4096,
            physical_block: 4096,
            caps: Caps {
                discard: true,
                flush: true,
                ..Default::default()
            },
        };
        Device::new(
            geo,
            DeviceOptions {
                num_queues: 2,
                queue_size: 256,
                read_only: ro,
                serial: "a-serial-longer-than-twenty-bytes".into(),
                counters: Default::default(),
            },
        )
    }

    #[test]
    fn config_space_has_the_spec_offsets() {
        let d = dev(false);
        let c = d.config(0, CONFIG_LEN as u32).unwrap();
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            (1 << 30) / 512
        );
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
        assert_eq!(c[32], 1);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 2);
        assert_eq!(
            u32::from_le_bytes(c[40..44].try_into().unwrap()),
            MAX_DWZ_SEG
        );
        assert_eq!(u32::from_le_bytes(c[44..48].try_into().unwrap()), 8);
        assert_eq!(c[56], 1);
        assert_eq!(d.config(32, 1).unwrap(), vec![1]);
        assert!(d.config(250, 10).is_none());
        assert!(d.config(u32::MAX, 2).is_none());
        assert_eq!(d.opts.serial.len(), ID_BYTES);
        assert!(d.features() & 1 << blk::DISCARD != 0);
        assert!(d.features() & 1 << blk::RO == 0);
    }

    #[test]
    fn read_only_devices_offer_no_writes_and_only_writeback_is_writable() {
        let d = dev(true);
        let f = d.features();
        assert!(f & 1 << blk::RO != 0);
        assert!(f & (1 << blk::DISCARD | 1 << blk::WRITE_ZEROES) == 0);
        assert!(!d.set_config(0, &[0; 8]));
        assert!(!d.set_config(32, &[2]));
        assert!(d.set_config(32, &[0]));
        assert!(!d.writeback());
        assert_eq!(d.config(32, 1).unwrap(), vec![0]);
    }
}

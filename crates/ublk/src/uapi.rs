//! Hand-written mirror of `include/uapi/linux/ublk_cmd.h` (Linux 7.3). Sizes and offsets are
//! checked against the real header by `tests/uapi_layout.rs`.

#![allow(non_camel_case_types)]

use std::mem::size_of;

// Control commands (ioctl-encoded; UBLK_F_CMD_IOCTL_ENCODE, Linux 6.5+).
pub const UBLK_CMD_GET_QUEUE_AFFINITY: u32 = 0x01;
pub const UBLK_CMD_GET_DEV_INFO: u32 = 0x02;
pub const UBLK_CMD_ADD_DEV: u32 = 0x04;
pub const UBLK_CMD_DEL_DEV: u32 = 0x05;
pub const UBLK_CMD_START_DEV: u32 = 0x06;
pub const UBLK_CMD_STOP_DEV: u32 = 0x07;
pub const UBLK_CMD_SET_PARAMS: u32 = 0x08;
pub const UBLK_CMD_GET_PARAMS: u32 = 0x09;
pub const UBLK_CMD_START_USER_RECOVERY: u32 = 0x10;
pub const UBLK_CMD_END_USER_RECOVERY: u32 = 0x11;
pub const UBLK_CMD_GET_DEV_INFO2: u32 = 0x12;
pub const UBLK_CMD_GET_FEATURES: u32 = 0x13;
pub const UBLK_CMD_DEL_DEV_ASYNC: u32 = 0x14;
pub const UBLK_CMD_UPDATE_SIZE: u32 = 0x15;
pub const UBLK_CMD_QUIESCE_DEV: u32 = 0x16;
/// Stop the device only if nothing has its disk open (UBLK_F_SAFE_STOP_DEV, Linux 7.0+).
pub const UBLK_CMD_TRY_STOP_DEV: u32 = 0x17;
/// Register / unregister a shared-memory buffer (UBLK_F_SHMEM_ZC, Linux 7.1+).
pub const UBLK_CMD_REG_BUF: u32 = 0x18;
pub const UBLK_CMD_UNREG_BUF: u32 = 0x19;

// I/O commands.
pub const UBLK_IO_FETCH_REQ: u32 = 0x20;
pub const UBLK_IO_COMMIT_AND_FETCH_REQ: u32 = 0x21;
pub const UBLK_IO_NEED_GET_DATA: u32 = 0x22;
pub const UBLK_IO_REGISTER_IO_BUF: u32 = 0x23;
pub const UBLK_IO_UNREGISTER_IO_BUF: u32 = 0x24;

const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, 'u', nr, size)` as the kernel encodes it on x86/arm (8-bit nr, 8-bit type, 14-bit
/// size, 2-bit direction).
pub const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'u' as u32) << 8) | nr
}
pub const fn ior_ctrl(nr: u32) -> u32 {
    ioc(IOC_READ, nr, size_of::<ublksrv_ctrl_cmd>())
}
pub const fn iowr_ctrl(nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, size_of::<ublksrv_ctrl_cmd>())
}
pub const fn iowr_io(nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, size_of::<ublksrv_io_cmd>())
}

pub const UBLK_U_CMD_GET_QUEUE_AFFINITY: u32 = ior_ctrl(UBLK_CMD_GET_QUEUE_AFFINITY);
pub const UBLK_U_CMD_GET_DEV_INFO: u32 = ior_ctrl(UBLK_CMD_GET_DEV_INFO);
pub const UBLK_U_CMD_ADD_DEV: u32 = iowr_ctrl(UBLK_CMD_ADD_DEV);
pub const UBLK_U_CMD_DEL_DEV: u32 = iowr_ctrl(UBLK_CMD_DEL_DEV);
pub const UBLK_U_CMD_START_DEV: u32 = iowr_ctrl(UBLK_CMD_START_DEV);
pub const UBLK_U_CMD_STOP_DEV: u32 = iowr_ctrl(UBLK_CMD_STOP_DEV);
pub const UBLK_U_CMD_SET_PARAMS: u32 = iowr_ctrl(UBLK_CMD_SET_PARAMS);
pub const UBLK_U_CMD_GET_PARAMS: u32 = ior_ctrl(UBLK_CMD_GET_PARAMS);
pub const UBLK_U_CMD_START_USER_RECOVERY: u32 = iowr_ctrl(UBLK_CMD_START_USER_RECOVERY);
pub const UBLK_U_CMD_END_USER_RECOVERY: u32 = iowr_ctrl(UBLK_CMD_END_USER_RECOVERY);
pub const UBLK_U_CMD_GET_DEV_INFO2: u32 = ior_ctrl(UBLK_CMD_GET_DEV_INFO2);
pub const UBLK_U_CMD_GET_FEATURES: u32 = ior_ctrl(UBLK_CMD_GET_FEATURES);
pub const UBLK_U_CMD_DEL_DEV_ASYNC: u32 = ior_ctrl(UBLK_CMD_DEL_DEV_ASYNC);
pub const UBLK_U_CMD_UPDATE_SIZE: u32 = iowr_ctrl(UBLK_CMD_UPDATE_SIZE);
pub const UBLK_U_CMD_QUIESCE_DEV: u32 = iowr_ctrl(UBLK_CMD_QUIESCE_DEV);
pub const UBLK_U_CMD_TRY_STOP_DEV: u32 = iowr_ctrl(UBLK_CMD_TRY_STOP_DEV);
pub const UBLK_U_CMD_REG_BUF: u32 = iowr_ctrl(UBLK_CMD_REG_BUF);
pub const UBLK_U_CMD_UNREG_BUF: u32 = iowr_ctrl(UBLK_CMD_UNREG_BUF);

pub const UBLK_U_IO_FETCH_REQ: u32 = iowr_io(UBLK_IO_FETCH_REQ);
pub const UBLK_U_IO_COMMIT_AND_FETCH_REQ: u32 = iowr_io(UBLK_IO_COMMIT_AND_FETCH_REQ);
pub const UBLK_U_IO_NEED_GET_DATA: u32 = iowr_io(UBLK_IO_NEED_GET_DATA);
pub const UBLK_U_IO_REGISTER_IO_BUF: u32 = iowr_io(UBLK_IO_REGISTER_IO_BUF);
pub const UBLK_U_IO_UNREGISTER_IO_BUF: u32 = iowr_io(UBLK_IO_UNREGISTER_IO_BUF);

// Batch I/O commands (UBLK_F_BATCH_IO, Linux 7.0): the 16-byte payload is `ublk_batch_io`.
pub const fn iowr_batch(nr: u32) -> u32 {
    ioc(IOC_READ | IOC_WRITE, nr, size_of::<ublk_batch_io>())
}
/// Hand the driver every tag of a queue at once (instead of one FETCH_REQ per tag).
pub const UBLK_U_IO_PREP_IO_CMDS: u32 = iowr_batch(0x25);
/// Commit many tags' results in one command; returns the bytes of the element array handled.
pub const UBLK_U_IO_COMMIT_IO_CMDS: u32 = iowr_batch(0x26);
/// Multishot: each completion fills a provided buffer with the `u16` tags of new requests.
pub const UBLK_U_IO_FETCH_IO_CMDS: u32 = iowr_batch(0x27);

/// Element flags of `ublk_batch_io`: which optional u64 follow each `ublk_elem_header`.
pub const UBLK_BATCH_F_HAS_ZONE_LBA: u16 = 1 << 0;
pub const UBLK_BATCH_F_HAS_BUF_ADDR: u16 = 1 << 1;
pub const UBLK_BATCH_F_AUTO_BUF_REG_FALLBACK: u16 = 1 << 2;

/// Result of a fetch when the device is going away: do not fetch again.
pub const UBLK_IO_RES_ABORT: i32 = -libc::ENODEV;
pub const UBLK_IO_RES_OK: i32 = 0;
pub const UBLK_IO_RES_NEED_GET_DATA: i32 = 1;

pub const UBLKSRV_CMD_BUF_OFFSET: u64 = 0;
pub const UBLKSRV_IO_BUF_OFFSET: u64 = 0x8000_0000;
pub const UBLK_MAX_QUEUE_DEPTH: u32 = 4096;
pub const UBLK_IO_BUF_BITS: u32 = 25;
pub const UBLK_TAG_OFF: u32 = UBLK_IO_BUF_BITS;
pub const UBLK_TAG_BITS: u32 = 16;
pub const UBLK_QID_OFF: u32 = UBLK_TAG_OFF + UBLK_TAG_BITS;
pub const UBLK_QID_BITS: u32 = 12;
pub const UBLK_MAX_NR_QUEUES: u32 = 1 << UBLK_QID_BITS;

// Feature flags (`ublksrv_ctrl_dev_info.flags`, and GET_FEATURES).
pub const UBLK_F_SUPPORT_ZERO_COPY: u64 = 1 << 0;
pub const UBLK_F_URING_CMD_COMP_IN_TASK: u64 = 1 << 1;
pub const UBLK_F_NEED_GET_DATA: u64 = 1 << 2;
pub const UBLK_F_USER_RECOVERY: u64 = 1 << 3;
pub const UBLK_F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
pub const UBLK_F_UNPRIVILEGED_DEV: u64 = 1 << 5;
pub const UBLK_F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
pub const UBLK_F_USER_COPY: u64 = 1 << 7;
pub const UBLK_F_ZONED: u64 = 1 << 8;
pub const UBLK_F_USER_RECOVERY_FAIL_IO: u64 = 1 << 9;
pub const UBLK_F_UPDATE_SIZE: u64 = 1 << 10;
pub const UBLK_F_AUTO_BUF_REG: u64 = 1 << 11;
pub const UBLK_F_QUIESCE: u64 = 1 << 12;
pub const UBLK_F_PER_IO_DAEMON: u64 = 1 << 13;
pub const UBLK_F_BUF_REG_OFF_DAEMON: u64 = 1 << 14;
pub const UBLK_F_BATCH_IO: u64 = 1 << 15;
pub const UBLK_F_INTEGRITY: u64 = 1 << 16;
pub const UBLK_F_SAFE_STOP_DEV: u64 = 1 << 17;
pub const UBLK_F_NO_AUTO_PART_SCAN: u64 = 1 << 18;
pub const UBLK_F_SHMEM_ZC: u64 = 1 << 19;
pub const UBLK_F_IO_DESC_SIZE: u64 = 1 << 20;

// Device states.
pub const UBLK_S_DEV_DEAD: u16 = 0;
pub const UBLK_S_DEV_LIVE: u16 = 1;
pub const UBLK_S_DEV_QUIESCED: u16 = 2;
pub const UBLK_S_DEV_FAIL_IO: u16 = 3;

// I/O ops and flags in `ublksrv_io_desc.op_flags`.
pub const UBLK_IO_OP_READ: u8 = 0;
pub const UBLK_IO_OP_WRITE: u8 = 1;
pub const UBLK_IO_OP_FLUSH: u8 = 2;
pub const UBLK_IO_OP_DISCARD: u8 = 3;
pub const UBLK_IO_OP_WRITE_SAME: u8 = 4;
pub const UBLK_IO_OP_WRITE_ZEROES: u8 = 5;
pub const UBLK_IO_F_FAILFAST_DEV: u32 = 1 << 8;
pub const UBLK_IO_F_FUA: u32 = 1 << 13;
pub const UBLK_IO_F_NOUNMAP: u32 = 1 << 15;
pub const UBLK_IO_F_NEED_REG_BUF: u32 = 1 << 17;
/// The request's pages lie in a registered shared-memory buffer: `addr` is
/// `(buffer index << 32) | byte offset` (UBLK_F_SHMEM_ZC) and the driver copies nothing.
pub const UBLK_IO_F_SHMEM_ZC: u32 = 1 << 19;
pub const UBLK_SHMEM_ZC_OFF_MASK: u64 = 0xffff_ffff;
pub const UBLK_SHMEM_ZC_IDX_OFF: u32 = 32;
pub const UBLK_SHMEM_ZC_IDX_MASK: u64 = 0xffff;

/// The (buffer index, byte offset) a SHMEM_ZC request's `addr` encodes.
pub fn shmem_zc_decode(addr: u64) -> (u16, u32) {
    (
        ((addr >> UBLK_SHMEM_ZC_IDX_OFF) & UBLK_SHMEM_ZC_IDX_MASK) as u16,
        (addr & UBLK_SHMEM_ZC_OFF_MASK) as u32,
    )
}

// Parameter attributes and types.
pub const UBLK_ATTR_READ_ONLY: u32 = 1 << 0;
pub const UBLK_ATTR_ROTATIONAL: u32 = 1 << 1;
pub const UBLK_ATTR_VOLATILE_CACHE: u32 = 1 << 2;
pub const UBLK_ATTR_FUA: u32 = 1 << 3;
pub const UBLK_PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const UBLK_PARAM_TYPE_DISCARD: u32 = 1 << 1;
pub const UBLK_PARAM_TYPE_DEVT: u32 = 1 << 2;
pub const UBLK_PARAM_TYPE_ZONED: u32 = 1 << 3;
pub const UBLK_PARAM_TYPE_DMA_ALIGN: u32 = 1 << 4;
pub const UBLK_PARAM_TYPE_SEGMENT: u32 = 1 << 5;

/// `sqe->cmd` of a control command (needs 128-byte SQEs).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublksrv_ctrl_cmd {
    pub dev_id: u32,
    pub queue_id: u16,
    pub len: u16,
    pub addr: u64,
    pub data: [u64; 1],
    pub dev_path_len: u16,
    pub pad: u16,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ublksrv_ctrl_dev_info {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub state: u16,
    pub pad0: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    pub ublksrv_pid: i32,
    pub pad1: u32,
    pub flags: u64,
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub reserved1: u64,
    pub reserved2: u64,
}

/// One request, in the read-only array the driver shares with us (indexed by tag).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublksrv_io_desc {
    pub op_flags: u32,
    pub nr_sectors: u32,
    pub start_sector: u64,
    pub addr: u64,
}

impl ublksrv_io_desc {
    pub fn op(&self) -> u8 {
        (self.op_flags & 0xff) as u8
    }
    pub fn flags(&self) -> u32 {
        self.op_flags & !0xff
    }
}

/// `sqe->cmd` of an I/O command (fits a normal 64-byte SQE).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublksrv_io_cmd {
    pub q_id: u16,
    pub tag: u16,
    pub result: i32,
    pub addr: u64,
}

impl ublksrv_io_cmd {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.q_id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.tag.to_ne_bytes());
        b[4..8].copy_from_slice(&self.result.to_ne_bytes());
        b[8..16].copy_from_slice(&self.addr.to_ne_bytes());
        b
    }
}

/// `sqe->cmd` of a batch command; `sqe->addr`/`sqe->len` name the element array (prep and
/// commit) and `sqe->buf_index` the provided-buffer group (fetch).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_batch_io {
    pub q_id: u16,
    pub flags: u16,
    pub nr_elem: u16,
    pub elem_bytes: u8,
    pub reserved: u8,
    pub reserved2: u64,
}

impl ublk_batch_io {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..2].copy_from_slice(&self.q_id.to_ne_bytes());
        b[2..4].copy_from_slice(&self.flags.to_ne_bytes());
        b[4..6].copy_from_slice(&self.nr_elem.to_ne_bytes());
        b[6] = self.elem_bytes;
        b
    }
}

/// One element of a prep or commit array; `buf_addr` is present only with
/// UBLK_BATCH_F_HAS_BUF_ADDR (copy mode), so the array's stride is 8 or 16 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_elem_header {
    pub tag: u16,
    /// Fixed-buffer slot for the next request's pages (UBLK_F_AUTO_BUF_REG only).
    pub buf_index: u16,
    /// The request's result (commit only).
    pub result: i32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_param_basic {
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    pub max_sectors: u32,
    pub chunk_sectors: u32,
    pub dev_sectors: u64,
    pub virt_boundary_mask: u64,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_param_discard {
    pub discard_alignment: u32,
    pub discard_granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_discard_segments: u16,
    pub reserved0: u16,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_param_devt {
    pub char_major: u32,
    pub char_minor: u32,
    pub disk_major: u32,
    pub disk_minor: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_param_zoned {
    pub max_open_zones: u32,
    pub max_active_zones: u32,
    pub max_zone_append_sectors: u32,
    pub reserved: [u8; 20],
}

/// UBLK_U_CMD_REG_BUF's data: a page-aligned shared mapping of ours for the driver to pin.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_shmem_buf_reg {
    pub addr: u64,
    pub len: u64,
    pub flags: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_param_dma_align {
    pub alignment: u32,
    pub pad: [u8; 4],
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_param_segment {
    pub seg_boundary_mask: u64,
    pub max_segment_size: u32,
    pub max_segments: u16,
    pub pad: [u8; 2],
}

/// The parameters we set and read. Later kernels append members (integrity); `len` tells the
/// kernel how much we pass, and it accepts a shorter struct.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ublk_params {
    pub len: u32,
    pub types: u32,
    pub basic: ublk_param_basic,
    pub discard: ublk_param_discard,
    pub devt: ublk_param_devt,
    pub zoned: ublk_param_zoned,
    pub dma: ublk_param_dma_align,
    pub seg: ublk_param_segment,
}

/// Byte offset of the descriptor array of queue `q_id` in the char device's mmap space: the
/// driver reserves room for the maximum depth per queue.
pub fn desc_mmap_offset(q_id: u16, page_size: usize) -> u64 {
    let per_queue =
        (UBLK_MAX_QUEUE_DEPTH as usize * size_of::<ublksrv_io_desc>()).next_multiple_of(page_size);
    UBLKSRV_CMD_BUF_OFFSET + q_id as u64 * per_queue as u64
}

/// pread/pwrite offset of a request's data in user-copy mode.
pub fn user_copy_offset(q_id: u16, tag: u16, byte_off: u64) -> u64 {
    UBLKSRV_IO_BUF_OFFSET
        + ((q_id as u64) << UBLK_QID_OFF)
        + ((tag as u64) << UBLK_TAG_OFF)
        + byte_off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_the_abi() {
        assert_eq!(size_of::<ublksrv_ctrl_cmd>(), 32);
        assert_eq!(size_of::<ublksrv_ctrl_dev_info>(), 64);
        assert_eq!(size_of::<ublksrv_io_desc>(), 24);
        assert_eq!(size_of::<ublksrv_io_cmd>(), 16);
        assert_eq!(size_of::<ublk_batch_io>(), 16);
        assert_eq!(size_of::<ublk_elem_header>(), 8);
        assert_eq!(size_of::<ublk_param_basic>(), 32);
        assert_eq!(size_of::<ublk_param_discard>(), 20);
    }

    #[test]
    fn ioctl_encoding_matches_known_values() {
        // _IOWR('u', 0x04, 32-byte struct) and _IOWR('u', 0x20, 16-byte struct).
        assert_eq!(UBLK_U_CMD_ADD_DEV, 0xc020_7504);
        assert_eq!(UBLK_U_IO_FETCH_REQ, 0xc010_7520);
        assert_eq!(UBLK_U_CMD_GET_FEATURES, 0x8020_7513);
        assert_eq!(UBLK_U_IO_FETCH_IO_CMDS, 0xc010_7527);
    }

    #[test]
    fn batch_cmd_bytes_are_native_layout() {
        let c = ublk_batch_io {
            q_id: 3,
            flags: UBLK_BATCH_F_HAS_BUF_ADDR,
            nr_elem: 64,
            elem_bytes: 16,
            ..Default::default()
        };
        // SAFETY: ublk_batch_io is repr(C) plain data of 16 bytes with no padding.
        let raw: [u8; 16] = unsafe { std::mem::transmute(c) };
        assert_eq!(c.to_bytes(), raw);
    }

    #[test]
    fn io_cmd_bytes_are_native_layout() {
        let c = ublksrv_io_cmd {
            q_id: 1,
            tag: 2,
            result: -5,
            addr: 0x1122,
        };
        let b = c.to_bytes();
        // SAFETY: ublksrv_io_cmd is repr(C) plain data of 16 bytes.
        let raw: [u8; 16] = unsafe { std::mem::transmute(c) };
        assert_eq!(b, raw);
    }
}

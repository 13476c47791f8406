//! A virtio-blk request, from a descriptor chain in guest memory to a checked [`Request`].
//!
//! Everything here reads guest memory the guest may change at any moment, through vm-memory's
//! volatile accessors, and trusts nothing it reads: every descriptor's index, address and
//! length is checked against the table and the mapped memory, chains are bounded (a loop ends
//! when the chain grows longer than its table), and the request itself (header and status
//! sizes, type, range, alignment, size) is checked before a target sees it. A bad request
//! becomes an IOERR or UNSUPP status for that request alone, or, when the chain has no byte
//! to put a status in, an empty used element.
//!
//! Layout (virtio 1.2, 5.2.6): device-readable bytes first (a 16-byte header
//! `{type: u32, ioprio: u32, sector: u64}`, then the data of writes and the ranges of discard
//! and write-zeroes), then device-writable bytes (the data of reads and GET_ID) ending in the
//! one status byte. Descriptor boundaries do not matter (any layout).

use vm_memory::{Bytes, GuestAddress};

use crate::config::{self, Device};
use crate::memory::Memory;

/// Descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// Request types.
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const T_DISCARD: u32 = 11;
pub const T_WRITE_ZEROES: u32 = 13;

/// Status values.
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Most descriptors one chain may have (QEMU's limit for a virtqueue, and so for a chain).
pub const MAX_DESCRIPTORS: usize = 1024;

/// A stretch of guest memory, checked to lie inside one mapped region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub gpa: u64,
    pub len: u32,
}

/// One discard or write-zeroes range, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub len: u64,
    pub unmap: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

/// A checked request: its ranges lie inside the device and its buffers inside guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head: u16,
    pub op: Op,
    /// Byte offset of a read or write.
    pub offset: u64,
    /// Data buffers: guest memory to fill (read, GET_ID) or to store (write).
    pub data: Vec<Seg>,
    /// Data bytes (the sum of `data`).
    pub len: u64,
    pub ranges: Vec<Range>,
    /// Where the status byte goes.
    pub status: u64,
}

/// A request that fails before it reaches the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub head: u16,
    /// The status byte's address, if the chain has one.
    pub status: Option<u64>,
    /// IOERR or UNSUPP.
    pub code: u8,
    pub why: &'static str,
}

/// Walk the chain starting at `head` of the split ring whose descriptor table is at `table`
/// with `size` entries. Returns its buffers: (segment, device-writable).
pub fn walk(
    mem: &Memory,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Result<Vec<(Seg, bool)>, &'static str> {
    let (mut table, mut size) = (table.0, size as u32);
    let (mut idx, mut ttl) = (head as u32, size);
    let mut indirect = false;
    let mut first = true;
    let mut segs = Vec::new();
    loop {
        if idx >= size {
            return Err("descriptor index past the end of its table");
        }
        if ttl == 0 {
            return Err("descriptor chain longer than its table (a loop?)");
        }
        ttl -= 1;
        let mut d = [0u8; 16];
        let at = table
            .checked_add(idx as u64 * 16)
            .ok_or("descriptor table address overflows")?;
        mem.mmap
            .read_slice(&mut d, GuestAddress(at))
            .map_err(|_| "descriptor table outside guest memory")?;
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
        let next = u16::from_le_bytes(d[14..16].try_into().unwrap());
        if flags & F_INDIRECT != 0 {
            if indirect {
                return Err("indirect descriptor inside an indirect table");
            }
            if !first || flags & F_NEXT != 0 {
                return Err("indirect descriptor that is not the whole chain");
            }
            if len == 0 || len % 16 != 0 || len / 16 > MAX_DESCRIPTORS as u32 {
                return Err("indirect table of a bad size");
            }
            if mem.host_addr(addr, len as usize).is_none() {
                return Err("indirect table outside guest memory");
            }
            (table, size, idx, ttl, indirect) = (addr, len / 16, 0, len / 16, true);
            continue;
        }
        first = false;
        if len > 0 {
            if mem.host_addr(addr, len as usize).is_none() {
                return Err("buffer outside guest memory");
            }
            if segs.len() == MAX_DESCRIPTORS {
                return Err("too many descriptors in one chain");
            }
            segs.push((Seg { gpa: addr, len }, flags & F_WRITE != 0));
        }
        if flags & F_NEXT == 0 {
            return Ok(segs);
        }
        idx = next as u32;
    }
}

/// Parse the chain at `head` into a request for `dev`.
pub fn parse(
    mem: &Memory,
    dev: &Device,
    table: GuestAddress,
    size: u16,
    head: u16,
) -> Result<Request, Refused> {
    let refuse = |status, code, why| Refused {
        head,
        status,
        code,
        why,
    };
    let segs = walk(mem, table, size, head).map_err(|why| refuse(None, S_IOERR, why))?;
    // Device-readable buffers, then device-writable ones.
    let split = segs.iter().position(|s| s.1).unwrap_or(segs.len());
    let (mut rd, mut wr): (Vec<Seg>, Vec<Seg>) = (
        segs[..split].iter().map(|s| s.0).collect(),
        segs[split..].iter().map(|s| s.0).collect(),
    );
    // The status byte: the last writable byte.
    let Some(last) = wr.last_mut() else {
        return Err(refuse(
            None,
            S_IOERR,
            "no device-writable byte for the status",
        ));
    };
    let status = last.gpa + last.len as u64 - 1;
    last.len -= 1;
    if last.len == 0 {
        wr.pop();
    }
    let fail = |code, why| refuse(Some(status), code, why);
    if segs[split..].iter().any(|s| !s.1) {
        return Err(fail(
            S_IOERR,
            "device-readable buffer after a device-writable one",
        ));
    }
    let mut hdr = [0u8; 16];
    if !take_bytes(mem, &mut rd, &mut hdr) {
        return Err(fail(S_IOERR, "request header shorter than 16 bytes"));
    }
    let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
    let sum = |v: &[Seg]| v.iter().map(|s| s.len as u64).sum::<u64>();
    let lbs = dev.geo.logical_block.max(512) as u64;
    let mut req = Request {
        head,
        op: Op::Flush,
        offset: 0,
        data: Vec::new(),
        len: 0,
        ranges: Vec::new(),
        status,
    };
    match kind {
        T_IN | T_OUT => {
            let (data, other) = if kind == T_IN { (wr, rd) } else { (rd, wr) };
            if !other.is_empty() {
                return Err(fail(S_IOERR, "data buffers in the wrong direction"));
            }
            if kind == T_OUT && dev.read_only() {
                return Err(fail(S_IOERR, "write to a read-only device"));
            }
            let len = sum(&data);
            let offset = sector
                .checked_mul(512)
                .ok_or_else(|| fail(S_IOERR, "sector out of range"))?;
            check_range(dev, offset, len).map_err(|why| fail(S_IOERR, why))?;
            if len > config::MAX_IO_BYTES {
                return Err(fail(S_IOERR, "request larger than seg_max * size_max"));
            }
            if !offset.is_multiple_of(lbs) || !len.is_multiple_of(lbs) {
                return Err(fail(
                    S_IOERR,
                    "request not aligned to the logical block size",
                ));
            }
            req.op = if kind == T_IN { Op::Read } else { Op::Write };
            (req.offset, req.len, req.data) = (offset, len, data);
        }
        T_FLUSH => {}
        T_GET_ID => {
            if !rd.is_empty() {
                return Err(fail(S_IOERR, "GET_ID with device-readable data"));
            }
            req.op = Op::GetId;
            req.len = sum(&wr).min(config::ID_BYTES as u64);
            req.data = wr;
        }
        T_DISCARD | T_WRITE_ZEROES => {
            let zeroes = kind == T_WRITE_ZEROES;
            if !(if zeroes {
                dev.write_zeroes()
            } else {
                dev.discard()
            }) {
                return Err(fail(S_UNSUPP, "discard or write-zeroes not offered"));
            }
            let n = sum(&rd);
            if n == 0 || n % 16 != 0 || n / 16 > config::MAX_DWZ_SEG as u64 {
                return Err(fail(S_IOERR, "bad discard/write-zeroes range list"));
            }
            for _ in 0..n / 16 {
                let mut r = [0u8; 16];
                take_bytes(mem, &mut rd, &mut r);
                let sector = u64::from_le_bytes(r[0..8].try_into().unwrap());
                let num = u32::from_le_bytes(r[8..12].try_into().unwrap());
                let flags = u32::from_le_bytes(r[12..16].try_into().unwrap());
                let allowed = if zeroes { 1 } else { 0 };
                if flags & !allowed != 0 {
                    return Err(fail(S_UNSUPP, "unknown discard/write-zeroes flags"));
                }
                if num > config::MAX_DWZ_SECTORS {
                    return Err(fail(S_IOERR, "discard/write-zeroes range too long"));
                }
                let offset = sector
                    .checked_mul(512)
                    .ok_or_else(|| fail(S_IOERR, "sector out of range"))?;
                let len = num as u64 * 512;
                check_range(dev, offset, len).map_err(|why| fail(S_IOERR, why))?;
                if offset % lbs != 0 || !len.is_multiple_of(lbs) {
                    return Err(fail(S_IOERR, "range not aligned to the logical block size"));
                }
                req.ranges.push(Range {
                    offset,
                    len,
                    unmap: flags & 1 != 0,
                });
            }
            req.op = if zeroes { Op::WriteZeroes } else { Op::Discard };
        }
        _ => return Err(fail(S_UNSUPP, "unknown request type")),
    }
    Ok(req)
}

fn check_range(dev: &Device, offset: u64, len: u64) -> Result<(), &'static str> {
    match offset.checked_add(len) {
        Some(end) if end <= dev.geo.size => Ok(()),
        _ => Err("request past the end of the disk"),
    }
}

/// Fill `out` from the front of `segs` (volatile reads), consuming what it read. False if the
/// segments hold fewer bytes.
fn take_bytes(mem: &Memory, segs: &mut Vec<Seg>, out: &mut [u8]) -> bool {
    let mut done = 0;
    while done < out.len() {
        let Some(s) = segs.first_mut() else {
            return false;
        };
        let n = (s.len as usize).min(out.len() - done);
        if mem
            .mmap
            .read_slice(&mut out[done..done + n], GuestAddress(s.gpa))
            .is_err()
        {
            return false;
        }
        done += n;
        s.gpa += n as u64;
        s.len -= n as u32;
        if s.len == 0 {
            segs.remove(0);
        }
    }
    true
}

/// Test helpers: write descriptor tables and requests into guest memory.
#[doc(hidden)]
pub mod build {
    use super::*;

    /// Write descriptor `idx` of the table at `table`.
    pub fn desc(mem: &Memory, table: u64, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.mmap
            .write_slice(&d, GuestAddress(table + idx as u64 * 16))
            .unwrap();
    }

    /// A request header at `at`.
    pub fn header(mem: &Memory, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.mmap.write_slice(&h, GuestAddress(at)).unwrap();
    }

    /// A three-descriptor request (header, data, status) at descriptors `first..first+3`.
    #[allow(clippy::too_many_arguments)]
    pub fn simple(
        mem: &Memory,
        table: u64,
        first: u16,
        hdr_at: u64,
        kind: u32,
        sector: u64,
        data: Seg,
        status_at: u64,
    ) {
        header(mem, hdr_at, kind, sector);
        let dflags = if kind == T_OUT || kind == T_DISCARD || kind == T_WRITE_ZEROES {
            F_NEXT
        } else {
            F_NEXT | F_WRITE
        };
        desc(mem, table, first, hdr_at, 16, F_NEXT, first + 1);
        desc(mem, table, first + 1, data.gpa, data.len, dflags, first + 2);
        desc(mem, table, first + 2, status_at, 1, F_WRITE, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use crate::config::DeviceOptions;
    use crate::memory::tests::memfd_memory;
    use targets::{Caps, Geometry};

    const TABLE: u64 = 0x1000;
    const HDR: u64 = 0x8000;
    const DATA: u64 = 0x10000;
    const ST: u64 = 0x9000;

    fn dev(ro: bool, lbs: u32) -> Device {
        Device::new(
            Geometry {
                size: 1 << 20,
                logical_block: lbs,
                physical_block: 4096,
                caps: Caps {
                    discard: true,
                    ..Default::default()
                },
            },
            DeviceOptions {
                num_queues: 1,
                queue_size: 16,
                read_only: ro,
                serial: "sn".into(),
                counters: Default::default(),
            },
        )
    }

    fn mem() -> Memory {
        memfd_memory(&[(0, 1 << 20)])
    }

    #[test]
    fn reads_and_writes_parse() {
        let m = mem();
        let d = dev(false, 512);
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_IN,
            8,
            Seg {
                gpa: DATA,
                len: 8192,
            },
            ST,
        );
        let r = parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap();
        assert_eq!(
            (r.op, r.offset, r.len, r.status),
            (Op::Read, 4096, 8192, ST)
        );
        assert_eq!(
            r.data,
            vec![Seg {
                gpa: DATA,
                len: 8192
            }]
        );
        simple(
            &m,
            TABLE,
            3,
            HDR,
            T_OUT,
            0,
            Seg {
                gpa: DATA,
                len: 512,
            },
            ST,
        );
        let r = parse(&m, &d, GuestAddress(TABLE), 16, 3).unwrap();
        assert_eq!((r.op, r.len), (Op::Write, 512));
    }

    #[test]
    fn any_layout_header_data_and_status_in_one_buffer_each_way() {
        let m = mem();
        let d = dev(false, 512);
        // Header and write data in one readable buffer; status alone.
        header(&m, DATA - 16, T_OUT, 1);
        desc(&m, TABLE, 0, DATA - 16, 16 + 1024, F_NEXT, 1);
        desc(&m, TABLE, 1, ST, 1, F_WRITE, 0);
        let r = parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap();
        assert_eq!(
            r.data,
            vec![Seg {
                gpa: DATA,
                len: 1024
            }]
        );
        // Read data and status in one writable buffer.
        header(&m, HDR, T_IN, 1);
        desc(&m, TABLE, 0, HDR, 16, F_NEXT, 1);
        desc(&m, TABLE, 1, DATA, 513, F_WRITE, 0);
        let r = parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap();
        assert_eq!((r.len, r.status), (512, DATA + 512));
    }

    #[test]
    fn indirect_tables_work_and_nest_never() {
        let m = mem();
        let d = dev(false, 512);
        let ind = 0x4000;
        simple(
            &m,
            ind,
            0,
            HDR,
            T_IN,
            0,
            Seg {
                gpa: DATA,
                len: 4096,
            },
            ST,
        );
        desc(&m, TABLE, 5, ind, 48, F_INDIRECT, 0);
        let r = parse(&m, &d, GuestAddress(TABLE), 16, 5).unwrap();
        assert_eq!(r.len, 4096);
        desc(&m, ind, 1, ind, 48, F_INDIRECT | F_NEXT, 2);
        let e = parse(&m, &d, GuestAddress(TABLE), 16, 5).unwrap_err();
        assert_eq!((e.status, e.code), (None, S_IOERR), "{e:?}");
        desc(&m, TABLE, 5, ind, 40, F_INDIRECT, 0);
        assert!(
            parse(&m, &d, GuestAddress(TABLE), 16, 5).is_err(),
            "size not a multiple of 16"
        );
    }

    #[test]
    fn hostile_chains_are_refused_not_followed() {
        let m = mem();
        let d = dev(false, 512);
        // A loop: 0 -> 1 -> 0.
        desc(&m, TABLE, 0, HDR, 16, F_NEXT, 1);
        desc(&m, TABLE, 1, DATA, 512, F_NEXT | F_WRITE, 0);
        let e = parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap_err();
        assert!(e.why.contains("loop"), "{e:?}");
        // Outside guest memory, and overflowing.
        desc(&m, TABLE, 0, 2 << 20, 16, 0, 0);
        assert!(
            parse(&m, &d, GuestAddress(TABLE), 16, 0)
                .unwrap_err()
                .why
                .contains("outside")
        );
        desc(&m, TABLE, 0, u64::MAX - 4, 16, 0, 0);
        assert!(parse(&m, &d, GuestAddress(TABLE), 16, 0).is_err());
        // Next index past the table; head past the table; table outside memory.
        desc(&m, TABLE, 0, HDR, 16, F_NEXT, 99);
        assert!(
            parse(&m, &d, GuestAddress(TABLE), 16, 0)
                .unwrap_err()
                .why
                .contains("past the end")
        );
        assert!(parse(&m, &d, GuestAddress(TABLE), 16, 16).is_err());
        assert!(parse(&m, &d, GuestAddress(u64::MAX - 8), 16, 0).is_err());
        // Readable after writable.
        desc(&m, TABLE, 0, HDR, 16, F_NEXT, 1);
        desc(&m, TABLE, 1, ST, 1, F_NEXT | F_WRITE, 2);
        desc(&m, TABLE, 2, DATA, 16, 0, 0);
        assert!(parse(&m, &d, GuestAddress(TABLE), 16, 0).is_err());
    }

    #[test]
    fn bad_requests_get_a_status() {
        let m = mem();
        let d = dev(false, 4096);
        let st = |e: Refused| (e.status, e.code);
        // Short header.
        desc(&m, TABLE, 0, HDR, 8, F_NEXT, 1);
        desc(&m, TABLE, 1, ST, 1, F_WRITE, 0);
        assert_eq!(
            st(parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap_err()),
            (Some(ST), S_IOERR)
        );
        // Past the end, misaligned, unknown type, wrong direction.
        for (kind, sector, len, code) in [
            (T_IN, 255, 8192, S_IOERR),
            (T_IN, u64::MAX / 256, 4096, S_IOERR),
            (T_IN, 1, 4096, S_IOERR),
            (T_IN, 0, 512, S_IOERR),
            (99, 0, 4096, S_UNSUPP),
        ] {
            simple(&m, TABLE, 0, HDR, kind, sector, Seg { gpa: DATA, len }, ST);
            assert_eq!(
                st(parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap_err()),
                (Some(ST), code),
                "{kind} {sector} {len}"
            );
        }
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_OUT,
            0,
            Seg {
                gpa: DATA,
                len: 4096,
            },
            ST,
        );
        desc(&m, TABLE, 1, DATA, 4096, F_NEXT | F_WRITE, 2);
        assert!(parse(&m, &d, GuestAddress(TABLE), 16, 0).is_err());
        // A write to a read-only device.
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_OUT,
            0,
            Seg {
                gpa: DATA,
                len: 4096,
            },
            ST,
        );
        assert!(parse(&m, &dev(true, 512), GuestAddress(TABLE), 16, 0).is_err());
        // No status byte at all.
        desc(&m, TABLE, 0, HDR, 16, 0, 0);
        assert_eq!(
            st(parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap_err()),
            (None, S_IOERR)
        );
        // Too large.
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_IN,
            0,
            Seg {
                gpa: 0,
                len: 1 << 20,
            },
            ST,
        );
        let big = Device::new(
            Geometry {
                size: 1 << 30,
                ..d.geo
            },
            d.opts.clone(),
        );
        parse(&m, &big, GuestAddress(TABLE), 16, 0).unwrap();
        m.mmap.write_slice(&[0u8; 0], GuestAddress(0)).unwrap();
    }

    #[test]
    fn discard_and_write_zeroes_ranges() {
        let m = mem();
        let d = dev(false, 512);
        let mut r = [0u8; 32];
        r[0..8].copy_from_slice(&8u64.to_le_bytes());
        r[8..12].copy_from_slice(&16u32.to_le_bytes());
        r[16..24].copy_from_slice(&100u64.to_le_bytes());
        r[24..28].copy_from_slice(&1u32.to_le_bytes());
        r[28..32].copy_from_slice(&1u32.to_le_bytes());
        m.mmap.write_slice(&r, GuestAddress(DATA)).unwrap();
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_WRITE_ZEROES,
            0,
            Seg { gpa: DATA, len: 32 },
            ST,
        );
        let q = parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap();
        assert_eq!(q.op, Op::WriteZeroes);
        assert_eq!(
            q.ranges,
            vec![
                Range {
                    offset: 4096,
                    len: 8192,
                    unmap: false
                },
                Range {
                    offset: 51200,
                    len: 512,
                    unmap: true
                }
            ]
        );
        // Discard takes no flags.
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_DISCARD,
            0,
            Seg { gpa: DATA, len: 32 },
            ST,
        );
        assert_eq!(
            parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap_err().code,
            S_UNSUPP
        );
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_DISCARD,
            0,
            Seg { gpa: DATA, len: 16 },
            ST,
        );
        assert_eq!(
            parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap().op,
            Op::Discard
        );
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_DISCARD,
            0,
            Seg { gpa: DATA, len: 20 },
            ST,
        );
        assert!(parse(&m, &d, GuestAddress(TABLE), 16, 0).is_err());
        // Not offered on a read-only device.
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_DISCARD,
            0,
            Seg { gpa: DATA, len: 16 },
            ST,
        );
        assert_eq!(
            parse(&m, &dev(true, 512), GuestAddress(TABLE), 16, 0)
                .unwrap_err()
                .code,
            S_UNSUPP
        );
    }

    #[test]
    fn get_id_and_flush() {
        let m = mem();
        let d = dev(false, 512);
        simple(
            &m,
            TABLE,
            0,
            HDR,
            T_GET_ID,
            0,
            Seg { gpa: DATA, len: 20 },
            ST,
        );
        let r = parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap();
        assert_eq!((r.op, r.len), (Op::GetId, 20));
        header(&m, HDR, T_FLUSH, 0);
        desc(&m, TABLE, 0, HDR, 16, F_NEXT, 1);
        desc(&m, TABLE, 1, ST, 1, F_WRITE, 0);
        assert_eq!(
            parse(&m, &d, GuestAddress(TABLE), 16, 0).unwrap().op,
            Op::Flush
        );
    }
}

//! Entry point for fuzzing (`fuzz/`, cargo-fuzz) and a seeded test: arbitrary bytes as a
//! guest's descriptor table and buffers, parsed as the queue thread parses them. It must
//! never panic, and never accept a request whose buffers are not inside guest memory or whose
//! range is not inside the disk.

use std::sync::OnceLock;

use vm_memory::{Bytes, GuestAddress};

use crate::config::{Device, DeviceOptions};
use crate::memory::{Memory, RegionInfo};
use crate::request::{self, Op};

/// Guest memory of the fuzzer: 64 KiB at 0 and 64 KiB at 1 MiB (a hole between).
const REGIONS: [(u64, u64); 2] = [(0, 64 << 10), (1 << 20, 64 << 10)];

fn memory() -> &'static Memory {
    static M: OnceLock<Memory> = OnceLock::new();
    M.get_or_init(|| {
        let v = REGIONS
            .iter()
            .map(|&(gpa, size)| {
                // SAFETY: memfd_create with a valid C string; checked.
                let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
                assert!(fd >= 0, "memfd_create");
                // SAFETY: a fresh fd we own.
                let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                f.set_len(size).expect("memfd size");
                let info = RegionInfo {
                    guest_phys_addr: gpa,
                    size,
                    user_addr: gpa,
                    mmap_offset: 0,
                };
                (info, f)
            })
            .collect();
        Memory::new(v).expect("fuzz memory")
    })
}

fn device() -> &'static Device {
    static D: OnceLock<Device> = OnceLock::new();
    D.get_or_init(|| {
        let geo = targets::Geometry {
            size: 1 << 30,
            logical_block: 512,
            physical_block: 4096,
            caps: targets::Caps {
                discard: true,
                ..Default::default()
            },
        };
        Device::new(
            geo,
            DeviceOptions {
                num_queues: 1,
                queue_size: 256,
                read_only: false,
                serial: "fuzz".into(),
                counters: Default::default(),
            },
        )
    })
}

/// `data`: byte 0 the queue size exponent, bytes 1..3 the head; the rest is written over the
/// first region (descriptor table at 0) and, from 64 KiB on, over the second.
pub fn descriptor_chain(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let mem = memory();
    let size = 1u16 << (data[0] % 16);
    let head = u16::from_le_bytes([data[1], data[2]]);
    let rest = &data[3..];
    let (a, b) = rest.split_at(rest.len().min(64 << 10));
    let _ = mem.mmap.write_slice(&vec![0; 64 << 10], GuestAddress(0));
    let _ = mem.mmap.write_slice(a, GuestAddress(0));
    let _ = mem
        .mmap
        .write_slice(&b[..b.len().min(64 << 10)], GuestAddress(1 << 20));
    let dev = device();
    match request::parse(mem, dev, GuestAddress(0), size, head) {
        Ok(r) => {
            for s in &r.data {
                assert!(mem.host_addr(s.gpa, s.len as usize).is_some());
            }
            assert!(mem.host_addr(r.status, 1).is_some());
            if matches!(r.op, Op::Read | Op::Write) {
                assert!(r.offset + r.len <= dev.geo.size);
                assert!(r.len <= crate::config::MAX_IO_BYTES);
            }
            for g in &r.ranges {
                assert!(g.offset + g.len <= dev.geo.size);
            }
        }
        Err(e) => {
            if let Some(s) = e.status {
                assert!(mem.host_addr(s, 1).is_some());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Random and mutated chains (a fixed seed keeps failures reproducible).
    #[test]
    fn parser_survives_random_and_mutated_chains() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // A valid 3-descriptor read as the seed.
        let mut seed = vec![4u8, 0, 0];
        let mut table = vec![0u8; 0x200];
        let put = |t: &mut Vec<u8>, i: usize, addr: u64, len: u32, flags: u16, nxt: u16| {
            t[i * 16..i * 16 + 8].copy_from_slice(&addr.to_le_bytes());
            t[i * 16 + 8..i * 16 + 12].copy_from_slice(&len.to_le_bytes());
            t[i * 16 + 12..i * 16 + 14].copy_from_slice(&flags.to_le_bytes());
            t[i * 16 + 14..i * 16 + 16].copy_from_slice(&nxt.to_le_bytes());
        };
        put(&mut table, 0, 0x100, 16, 1, 1);
        put(&mut table, 1, 0x1000, 4096, 3, 2);
        put(&mut table, 2, 0x180, 1, 2, 0);
        seed.extend_from_slice(&table);
        super::descriptor_chain(&seed);
        for i in 0..20_000 {
            let mut d = seed.clone();
            if i % 4 == 0 {
                d = (0..(next() % 600) as usize).map(|_| next() as u8).collect();
            } else {
                for _ in 0..1 + next() % 6 {
                    let at = (next() as usize) % d.len();
                    d[at] = next() as u8;
                }
            }
            super::descriptor_chain(&d);
        }
    }
}

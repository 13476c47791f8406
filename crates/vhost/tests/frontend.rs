//! The backend driven by a frontend of our own (rust-vmm's `vhost` Frontend over a Unix
//! socket), with guest memory in a memfd: the control plane, the queue threads, zero copy on
//! the file target, a hostile guest on one queue while the other keeps working, a memory table
//! replaced while requests are in flight, GET_VRING_BASE, and a clean shutdown.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_blk::memory::{Memory, RegionInfo};
use vhost_blk::request::{S_IOERR, S_OK, S_UNSUPP, T_IN, T_OUT};
use vhost_blk::{DeviceOptions, Shutdown};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM: u64 = 8 << 20;
/// The "frontend's" virtual address of guest address 0 (only a name for ring addresses).
const UVA: u64 = 0x7f00_0000_0000;
const QSIZE: u16 = 16;

fn memfd(size: u64) -> File {
    // SAFETY: memfd_create with a valid C string; checked.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size).unwrap();
    f
}

/// One ring in guest memory: table, available and used rings at fixed places per queue.
struct Ring {
    q: usize,
    next: u16,
    seen_used: u16,
    kick: EventFd,
    call: EventFd,
}

impl Ring {
    fn base(q: usize) -> u64 {
        0x10000 * (q as u64 + 1)
    }
    fn desc(&self) -> u64 {
        Ring::base(self.q)
    }
    fn avail(&self) -> u64 {
        Ring::base(self.q) + 0x1000
    }
    fn used(&self) -> u64 {
        Ring::base(self.q) + 0x2000
    }
    fn put_desc(&self, m: &Memory, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        m.mmap
            .write_slice(&d, GuestAddress(self.desc() + i as u64 * 16))
            .unwrap();
    }
    /// Make head `h` available and kick.
    fn submit(&mut self, m: &Memory, h: u16) {
        let slot = self.avail() + 4 + 2 * (self.next % QSIZE) as u64;
        m.mmap.write_obj(h, GuestAddress(slot)).unwrap();
        self.next = self.next.wrapping_add(1);
        m.mmap
            .write_obj(self.next, GuestAddress(self.avail() + 2))
            .unwrap();
        self.kick.write(1).unwrap();
    }
    /// Wait until `n` more used elements arrived; returns (head, len) of each.
    fn wait_used(&mut self, m: &Memory, n: u16) -> Vec<(u16, u32)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let idx: u16 = m.mmap.read_obj(GuestAddress(self.used() + 2)).unwrap();
            if idx.wrapping_sub(self.seen_used) >= n {
                break;
            }
            assert!(Instant::now() < deadline, "queue {}: no completion", self.q);
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut v = Vec::new();
        for _ in 0..n {
            let at = self.used() + 4 + 8 * (self.seen_used % QSIZE) as u64;
            let id: u32 = m.mmap.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = m.mmap.read_obj(GuestAddress(at + 4)).unwrap();
            v.push((id as u16, len));
            self.seen_used = self.seen_used.wrapping_add(1);
        }
        v
    }
}

/// A request at descriptors `h..h+3` of ring `r`, its header and status in a per-head slot.
fn request(m: &Memory, r: &Ring, h: u16, kind: u32, sector: u64, data: u64, len: u32) -> u64 {
    let slot = Ring::base(r.q) + 0x4000 + h as u64 * 32;
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&kind.to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    m.mmap.write_slice(&hdr, GuestAddress(slot)).unwrap();
    m.mmap.write_obj(0xffu8, GuestAddress(slot + 16)).unwrap();
    let dflag = if kind == T_OUT { 1 } else { 3 };
    r.put_desc(m, h, slot, 16, 1, h + 1);
    r.put_desc(m, h + 1, data, len, dflag, h + 2);
    r.put_desc(m, h + 2, slot + 16, 1, 2, 0);
    slot + 16
}

fn status(m: &Memory, at: u64) -> u8 {
    m.mmap.read_obj(GuestAddress(at)).unwrap()
}

#[test]
fn a_frontend_drives_two_queues_through_good_and_hostile_requests() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let target = targets::file::FileTarget::open(&img, None, true, false).unwrap();
    let sock = dir.path().join("vhost.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let stop = Shutdown::new().unwrap();
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        let opts = DeviceOptions {
            num_queues: 2,
            queue_size: 256,
            read_only: false,
            serial: "t".into(),
        };
        vhost_blk::serve(listener, Arc::new(target), opts, stop2)
    });

    // Guest memory: one memfd region, seen by the test through the same mapping code.
    let file = memfd(MEM);
    let info = RegionInfo {
        guest_phys_addr: 0,
        size: MEM,
        user_addr: UVA,
        mmap_offset: 0,
    };
    let m = Memory::new(vec![(info, file.try_clone().unwrap())]).unwrap();

    let mut fe = Frontend::connect(&sock, 2).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    assert!(features & 1 << 29 != 0, "EVENT_IDX offered");
    // Without EVENT_IDX: every completion pass interrupts, which is easy to wait for.
    fe.set_features(features & !(1 << 29)).unwrap();
    let pf = fe.get_protocol_features().unwrap();
    assert!(pf.contains(
        VhostUserProtocolFeatures::INFLIGHT_SHMFD | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    ));
    fe.set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG)
        .unwrap();
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    let (_, cfg) = fe
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .unwrap();
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        (16 << 20) / 512
    );
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM,
        userspace_addr: UVA,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    fe.set_mem_table(&[region]).unwrap();

    let mut rings: Vec<Ring> = (0..2)
        .map(|q| Ring {
            q,
            next: 0,
            seen_used: 0,
            kick: EventFd::new(0).unwrap(),
            call: EventFd::new(0).unwrap(),
        })
        .collect();
    for r in &rings {
        fe.set_vring_num(r.q, QSIZE).unwrap();
        let c = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: UVA + r.desc(),
            used_ring_addr: UVA + r.used(),
            avail_ring_addr: UVA + r.avail(),
            log_addr: None,
        };
        fe.set_vring_addr(r.q, &c).unwrap();
        fe.set_vring_base(r.q, 0).unwrap();
        fe.set_vring_call(r.q, &r.call).unwrap();
        fe.set_vring_kick(r.q, &r.kick).unwrap();
    }

    // Queue 0: write 8 KiB (one guest buffer: zero copy), read it back.
    let data = 0x100000;
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    m.mmap.write_slice(&pattern, GuestAddress(data)).unwrap();
    let st = request(&m, &rings[0], 0, T_OUT, 8, data, 8192);
    rings[0].submit(&m, 0);
    assert_eq!(rings[0].wait_used(&m, 1), vec![(0, 1)]);
    assert_eq!(status(&m, st), S_OK);
    let st = request(&m, &rings[0], 3, T_IN, 8, data + 0x10000, 8192);
    rings[0].submit(&m, 3);
    assert_eq!(rings[0].wait_used(&m, 1), vec![(3, 8193)]);
    assert_eq!(status(&m, st), S_OK);
    let mut back = vec![0u8; 8192];
    m.mmap
        .read_slice(&mut back, GuestAddress(data + 0x10000))
        .unwrap();
    assert_eq!(back, pattern);
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(&on_disk[4096..4096 + 8192], &pattern[..]);

    // Queue 1: a hostile guest. A loop, a buffer outside memory, past the end of the disk, an
    // unknown type: each fails alone.
    let r1 = &mut rings[1];
    r1.put_desc(&m, 0, 0x5000, 16, 1, 1);
    r1.put_desc(&m, 1, 0x6000, 512, 3, 0);
    r1.submit(&m, 0);
    assert_eq!(
        r1.wait_used(&m, 1),
        vec![(0, 0)],
        "a loop: no status, empty used element"
    );
    let st = request(&m, r1, 3, T_IN, 0, MEM - 4096, 8192);
    r1.submit(&m, 3);
    assert_eq!(r1.wait_used(&m, 1), vec![(3, 0)], "outside guest memory");
    let st2 = request(&m, r1, 6, T_IN, (16 << 20) / 512, data, 512);
    r1.submit(&m, 6);
    assert_eq!(r1.wait_used(&m, 1), vec![(6, 1)]);
    assert_eq!(status(&m, st2), S_IOERR, "past the end of the disk");
    let st3 = request(&m, r1, 9, 77, 0, data, 512);
    r1.submit(&m, 9);
    assert_eq!(r1.wait_used(&m, 1), vec![(9, 1)]);
    assert_eq!(status(&m, st3), S_UNSUPP);
    assert_eq!(status(&m, st), 0xff, "no status written outside the chain");

    // Queue 0 still works; many requests in flight while the memory table is replaced.
    for i in 0..5u16 {
        request(
            &m,
            &rings[0],
            i * 3,
            T_IN,
            i as u64 * 16,
            data + 0x20000 * (i as u64 + 1),
            4096,
        );
    }
    for i in 0..5u16 {
        rings[0].submit(&m, i * 3);
    }
    fe.set_mem_table(&[region]).unwrap();
    let mut got: Vec<u16> = rings[0].wait_used(&m, 5).iter().map(|u| u.0).collect();
    got.sort();
    assert_eq!(got, vec![0, 3, 6, 9, 12]);
    let st = request(&m, &rings[0], 0, T_IN, 8, data + 0x10000, 8192);
    rings[0].submit(&m, 0);
    rings[0].wait_used(&m, 1);
    assert_eq!(status(&m, st), S_OK, "served with the new table");

    // GET_VRING_BASE stops the ring where it stopped taking chains.
    assert_eq!(fe.get_vring_base(0).unwrap(), rings[0].next as u32);
    assert_eq!(fe.get_vring_base(1).unwrap(), rings[1].next as u32);
    drop(fe);
    stop.trigger();
    let stats = server.join().unwrap().unwrap();
    assert!(stats.summary().contains("refused 4"), "{}", stats.summary());
}

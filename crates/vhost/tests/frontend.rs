//! The backend driven by a frontend of our own (rust-vmm's `vhost` Frontend over a Unix
//! socket), with guest memory in a memfd: the control plane, the queue threads, zero copy on
//! the file target, a hostile guest on one queue while the other keeps working, a memory table
//! replaced while requests are in flight, GET_VRING_BASE, and a clean shutdown.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
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

/// A backend serving `target` on a socket, a frontend connected to it with one memfd region,
/// and `queues` rings started.
struct Harness {
    fe: Frontend,
    m: Memory,
    rings: Vec<Ring>,
    region: VhostUserMemoryRegionInfo,
    _file: File,
    stop: Arc<Shutdown>,
    server: std::thread::JoinHandle<std::io::Result<Arc<vhost_blk::Stats>>>,
    /// The per-queue request counters the backend was given.
    counters: vhost_blk::QueueCountersList,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new<T: targets::Target>(target: T, queues: u16) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vhost.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let stop = Shutdown::new().unwrap();
        let stop2 = stop.clone();
        let counters = vhost_blk::QueueCountersList::new(queues as usize);
        let counters2 = counters.clone();
        let server = std::thread::spawn(move || {
            let opts = DeviceOptions {
                num_queues: queues,
                queue_size: 256,
                read_only: false,
                serial: "t".into(),
                counters: counters2,
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
        let mut fe = Frontend::connect(&sock, queues as u64).unwrap();
        fe.set_owner().unwrap();
        let features = fe.get_features().unwrap();
        assert!(features & 1 << 29 != 0, "EVENT_IDX offered");
        // Without EVENT_IDX: every completion pass interrupts, which is easy to wait for.
        fe.set_features(features & !(1 << 29)).unwrap();
        let pf = fe.get_protocol_features().unwrap();
        assert!(pf.contains(
            VhostUserProtocolFeatures::INFLIGHT_SHMFD
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        ));
        // REPLY_ACK: every message waits for the backend's answer (as QEMU's do), so a
        // request submitted after a memory table change sees the new table.
        fe.set_protocol_features(
            VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        )
        .unwrap();
        fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        assert_eq!(fe.get_queue_num().unwrap(), queues as u64);
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM,
            userspace_addr: UVA,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        };
        fe.set_mem_table(&[region]).unwrap();
        let rings: Vec<Ring> = (0..queues as usize)
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
        Harness {
            fe,
            m,
            rings,
            region,
            _file: file,
            stop,
            counters,
            server,
            _dir: dir,
        }
    }

    /// Submit one request on ring `q` and wait for it: (used length, status).
    fn one(&mut self, q: usize, kind: u32, sector: u64, data: u64, len: u32) -> (u32, u8) {
        let st = request(&self.m, &self.rings[q], 0, kind, sector, data, len);
        self.rings[q].submit(&self.m, 0);
        let u = self.rings[q].wait_used(&self.m, 1);
        (u[0].1, status(&self.m, st))
    }

    /// Stop the rings and the backend; its statistics.
    fn finish(self) -> String {
        for r in &self.rings {
            assert_eq!(self.fe.get_vring_base(r.q).unwrap(), r.next as u32);
        }
        drop(self.fe);
        self.stop.trigger();
        self.server.join().unwrap().unwrap().summary()
    }
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
    let mut h = Harness::new(target, 2);
    let (_, cfg) =
        h.fe.get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
            .unwrap();
    assert_eq!(
        u64::from_le_bytes(cfg[0..8].try_into().unwrap()),
        (16 << 20) / 512
    );
    let (m, rings) = (&h.m, &mut h.rings);
    // Queue 0: write 8 KiB (one guest buffer: zero copy), read it back.
    let data = 0x100000;
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
    m.mmap.write_slice(&pattern, GuestAddress(data)).unwrap();
    let st = request(m, &rings[0], 0, T_OUT, 8, data, 8192);
    rings[0].submit(m, 0);
    assert_eq!(rings[0].wait_used(m, 1), vec![(0, 1)]);
    assert_eq!(status(m, st), S_OK);
    let st = request(m, &rings[0], 3, T_IN, 8, data + 0x10000, 8192);
    rings[0].submit(m, 3);
    assert_eq!(rings[0].wait_used(m, 1), vec![(3, 8193)]);
    assert_eq!(status(m, st), S_OK);
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
    r1.put_desc(m, 0, 0x5000, 16, 1, 1);
    r1.put_desc(m, 1, 0x6000, 512, 3, 0);
    r1.submit(m, 0);
    assert_eq!(
        r1.wait_used(m, 1),
        vec![(0, 0)],
        "a loop: no status, empty used element"
    );
    let st = request(m, r1, 3, T_IN, 0, MEM - 4096, 8192);
    r1.submit(m, 3);
    assert_eq!(r1.wait_used(m, 1), vec![(3, 0)], "outside guest memory");
    let st2 = request(m, r1, 6, T_IN, (16 << 20) / 512, data, 512);
    r1.submit(m, 6);
    assert_eq!(r1.wait_used(m, 1), vec![(6, 1)]);
    assert_eq!(status(m, st2), S_IOERR, "past the end of the disk");
    let st3 = request(m, r1, 9, 77, 0, data, 512);
    r1.submit(m, 9);
    assert_eq!(r1.wait_used(m, 1), vec![(9, 1)]);
    assert_eq!(status(m, st3), S_UNSUPP);
    assert_eq!(status(m, st), 0xff, "no status written outside the chain");

    // Queue 0 still works; many requests in flight while the memory table is replaced.
    for i in 0..5u16 {
        request(
            m,
            &rings[0],
            i * 3,
            T_IN,
            i as u64 * 16,
            data + 0x20000 * (i as u64 + 1),
            4096,
        );
    }
    for i in 0..5u16 {
        rings[0].submit(m, i * 3);
    }
    h.fe.set_mem_table(&[h.region]).unwrap();
    let mut got: Vec<u16> = rings[0].wait_used(m, 5).iter().map(|u| u.0).collect();
    got.sort();
    assert_eq!(got, vec![0, 3, 6, 9, 12]);
    let st = request(m, &rings[0], 0, T_IN, 8, data + 0x10000, 8192);
    rings[0].submit(m, 0);
    rings[0].wait_used(m, 1);
    assert_eq!(status(m, st), S_OK, "served with the new table");

    // Queue 0's counters (what `ublkd vhost --metrics-listen` exports): 1 write of 8 KiB,
    // 7 reads (8 KiB, 5 x 4 KiB, 8 KiB), none failed, none in flight.
    let q0 = h.counters.0[0].snapshot(0, 256);
    let (w, r) = (
        q0.op(stats::Op::Write).unwrap(),
        q0.op(stats::Op::Read).unwrap(),
    );
    assert_eq!((w.requests, w.bytes, w.errors), (1, 8192, 0));
    assert_eq!((r.requests, r.bytes, r.errors), (7, 8192 * 2 + 4096 * 5, 0));
    assert_eq!(q0.inflight, 0);

    // GET_VRING_BASE stops each ring where it stopped taking chains.
    let stats = h.finish();
    assert!(stats.contains("refused 4"), "{stats}");
}

/// The nbd target (a CPU target: bounce buffers) talking to our own NBD server exporting a
/// mem target, behind the error filter: filters and remote targets work through vhost too.
#[test]
fn nbd_target_behind_an_error_filter() {
    use targets::filter::Filtered;
    use targets::kind::{FilterKind, TargetKind};
    let dir = tempfile::tempdir().unwrap();
    let nsock = dir.path().join("nbd.sock");
    let mem = targets::mem::MemTarget::open(&targets::mem::MemConfig {
        size: 16 << 20,
        logical_block: 512,
    })
    .unwrap();
    let listener = nbd::server::Listener::bind_unix(&nsock).unwrap();
    let nstop = nbd::server::Shutdown::new().unwrap();
    let nstop2 = nstop.clone();
    let nserver = std::thread::spawn(move || {
        nbd::server::serve(listener, Arc::new(mem), Default::default(), nstop2)
    });
    let uri = format!("nbd+unix:///?socket={}", nsock.display());
    let nbd = nbd::client::NbdTarget::open(nbd::client::NbdConfig::new(&uri).unwrap()).unwrap();
    let cfg: targets::filter::error::ErrorConfig = serde_json::from_value(serde_json::json!({
        "ops": "read", "offset": 1 << 20, "length": 4096
    }))
    .unwrap();
    let filter = targets::filter::error::ErrorFilter::new(&cfg).unwrap();
    let mut h = Harness::new(Filtered { filter, next: nbd }, 1);
    let data = 0x100000;
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    h.m.mmap.write_slice(&pattern, GuestAddress(data)).unwrap();
    assert_eq!(h.one(0, T_OUT, 0, data, 4096), (1, S_OK));
    assert_eq!(h.one(0, T_IN, 0, data + 0x10000, 4096), (4097, S_OK));
    let mut back = vec![0u8; 4096];
    h.m.mmap
        .read_slice(&mut back, GuestAddress(data + 0x10000))
        .unwrap();
    assert_eq!(back, pattern);
    assert_eq!(
        h.one(0, T_OUT, 2048, data, 4096),
        (1, S_OK),
        "writes are not filtered"
    );
    assert_eq!(
        h.one(0, T_IN, 2048, data, 4096).1,
        S_IOERR,
        "the error filter's range"
    );
    let stats = h.finish();
    assert!(
        stats.contains("CPU target 4") && stats.contains("target errors 1"),
        "{stats}"
    );
    nstop.trigger();
    nserver.join().unwrap().unwrap();
}

/// Memory hotplug: a region added while the ring runs is usable at once (the reply comes after
/// the queue threads switched tables); once removed, a request pointing into it is refused.
#[test]
fn memory_regions_added_and_removed_while_running() {
    use targets::kind::TargetKind;
    let mem = targets::mem::MemTarget::open(&targets::mem::MemConfig {
        size: 16 << 20,
        logical_block: 512,
    })
    .unwrap();
    let mut h = Harness::new(mem, 1);
    assert!(h.fe.get_max_mem_slots().unwrap() >= 8);
    // A second region at 64 MiB, user address likewise offset.
    let gpa = 64 << 20;
    let file = memfd(MEM);
    let info = RegionInfo {
        guest_phys_addr: gpa,
        size: MEM,
        user_addr: UVA + gpa,
        mmap_offset: 0,
    };
    let extra = Memory::new(vec![(info, file.try_clone().unwrap())]).unwrap();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: gpa,
        memory_size: MEM,
        userspace_addr: UVA + gpa,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    };
    h.fe.add_mem_region(&region).unwrap();
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i % 249) as u8).collect();
    extra.mmap.write_slice(&pattern, GuestAddress(gpa)).unwrap();
    assert_eq!(h.one(0, T_OUT, 16, gpa, 8192), (1, S_OK));
    assert_eq!(h.one(0, T_IN, 16, gpa + 0x10000, 8192), (8193, S_OK));
    let mut back = vec![0u8; 8192];
    extra
        .mmap
        .read_slice(&mut back, GuestAddress(gpa + 0x10000))
        .unwrap();
    assert_eq!(back, pattern);
    h.fe.remove_mem_region(&region).unwrap();
    assert_eq!(h.one(0, T_IN, 16, gpa, 4096).0, 0, "the region is gone");
    assert_eq!(
        h.one(0, T_IN, 16, 0x100000, 4096),
        (4097, S_OK),
        "the first one is not"
    );
    let stats = h.finish();
    assert!(stats.contains("refused 1"), "{stats}");
}

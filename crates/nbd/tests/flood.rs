//! A zeroing flood: 64 clients pipeline large WRITE_ZEROES and TRIM requests without reading
//! replies, against a target that cannot zero natively (so the server zeroes by writing) and
//! takes time per write (so requests pile up, as on a real disk). The server's memory must stay
//! bounded by its budgets, not grow with the bytes the requests name.
//!
//! Its own test binary: the server runs in this process, and RSS is only meaningful with no
//! other test running beside it.

mod common;

use std::io::{self, Write};
use std::time::Duration;

use common::raw::*;
use common::*;
use nbd::proto::cmd;
use nbd::server::ExportConfig;
use targets::{Caps, Geometry, IoBuf, Target, TargetQueue};

const CLIENTS: usize = 64;
/// Requests each client sends before reading any reply (half WRITE_ZEROES, half TRIM).
const PER_CLIENT: u64 = 64;
/// Each request names 64 MiB: 8 GiB of zeroes in all.
const LEN: u32 = 64 << 20;
/// Time the target takes per write or discard.
const LATENCY: Duration = Duration::from_millis(10);
/// What the flood may add to the server's resident memory. Fixed costs: 64 connections' 64 KiB
/// read buffers (4 MiB), one zero buffer per worker thread (2 MiB), the client threads of this
/// test; variable: 4096 request tasks charged 4 KiB each (16 MiB). 64 MiB leaves room for the
/// allocator; before the fix each WRITE_ZEROES allocated its own 1 MiB zero buffer (2 GiB here).
const RSS_BOUND: u64 = 64 << 20;

/// Stores nothing, takes `LATENCY` per write or discard, and has no native write-zeroes.
struct SlowNoZeroes;
struct SlowQueue;

impl Target for SlowNoZeroes {
    type Queue = SlowQueue;
    fn geometry(&self) -> Geometry {
        Geometry {
            size: 1 << 40,
            logical_block: 512,
            physical_block: 4096,
            caps: Caps {
                discard: true,
                consistent_across_queues: true,
                ..Caps::default()
            },
        }
    }
    fn open_queue(&self, _qid: u16) -> io::Result<SlowQueue> {
        Ok(SlowQueue)
    }
}

impl TargetQueue for SlowQueue {
    async fn read(&self, _off: u64, buf: &mut IoBuf) -> io::Result<()> {
        rt::time::sleep(LATENCY).await;
        buf.as_mut_slice().fill(0);
        Ok(())
    }
    async fn write(&self, _off: u64, _buf: &IoBuf, _fua: bool) -> io::Result<()> {
        rt::time::sleep(LATENCY).await;
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    async fn discard(&self, _off: u64, _len: u64) -> io::Result<()> {
        rt::time::sleep(LATENCY).await;
        Ok(())
    }
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with(field)).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn zeroing_flood_from_64_clients_keeps_rss_bounded() {
    let s = Server::tcp(
        SlowNoZeroes,
        ExportConfig {
            name: "d".into(),
            threads: 2,
            max_connections: CLIENTS,
            ..Default::default()
        },
    );
    // Peak RSS from here on: "5" resets VmHWM to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_bytes("VmRSS:");
    let clients: Vec<_> = (0..CLIENTS as u64)
        .map(|i| {
            let mut c = handshake(&s, false);
            std::thread::spawn(move || {
                let mut batch = Vec::new();
                for j in 0..PER_CLIENT {
                    let typ = if j % 2 == 0 {
                        cmd::WRITE_ZEROES
                    } else {
                        cmd::TRIM
                    };
                    let off = (i * PER_CLIENT + j) * LEN as u64;
                    batch.extend_from_slice(&encode(typ, 0, j, off, LEN));
                }
                c.write_all(&batch).unwrap(); // pipelined, no reply read yet
                c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                for _ in 0..PER_CLIENT {
                    assert_eq!(simple_reply(&mut c).0, 0, "a flood request failed");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let peak = status_bytes("VmHWM:");
    let grew = peak.saturating_sub(before);
    eprintln!(
        "zeroing flood: RSS {} MiB before, peak {} MiB (+{} MiB; bound +{} MiB)",
        before >> 20,
        peak >> 20,
        grew >> 20,
        RSS_BOUND >> 20
    );
    assert!(
        grew < RSS_BOUND,
        "RSS grew by {} MiB under the flood (bound {} MiB)",
        grew >> 20,
        RSS_BOUND >> 20
    );
}

//! The data path against a real cluster: run by tests/rbd/host.sh, which starts one with
//! scripts/ceph.sh and sets UBLKD_TEST_CEPH_CONF (`cargo test -p rbd -- --ignored`).

use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rbd::{Handles, RbdConfig, RbdTarget};
use rt::{IoBuf, Runtime};
use targets::{Target, TargetQueue};

fn conf() -> String {
    std::env::var("UBLKD_TEST_CEPH_CONF")
        .expect("UBLKD_TEST_CEPH_CONF: run through tests/rbd/host.sh (it starts a cluster)")
}

/// A fresh image of `mb` MiB; its name.
fn image(name: &str, mb: u64) -> String {
    let conf = conf();
    let spec = format!("rbd/{name}");
    let _ = Command::new("rbd")
        .args(["-c", &conf, "rm", "--no-progress", &spec])
        .output();
    let st = Command::new("rbd")
        .args(["-c", &conf, "create", "--size", &format!("{mb}M"), &spec])
        .status()
        .unwrap();
    assert!(st.success(), "rbd create {spec}");
    spec
}

fn open(spec: &str) -> RbdTarget {
    RbdTarget::open(&RbdConfig {
        image: spec.into(),
        id: None,
        conf: Some(conf()),
        keyring: None,
        mon_host: None,
        connect_timeout: Some(20),
        handles: Handles::Shared,
        read_only: false,
    })
    .unwrap_or_else(|e| panic!("open {spec}: {e}"))
}

fn pattern(len: usize, seed: u8) -> IoBuf {
    let mut b = IoBuf::with_capacity(len);
    for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
        *x = (i % 251) as u8 ^ seed;
    }
    b
}

#[test]
#[ignore = "needs a Ceph cluster (tests/rbd/host.sh)"]
fn round_trip_flush_discard_zeroes() {
    let spec = image("crate-rt", 64);
    let t = open(&spec);
    assert_eq!(t.geometry().size, 64 << 20);
    let q = t.open_queue(0).unwrap();
    Runtime::new().unwrap().block_on(async {
        let w = pattern(1 << 20, 7);
        q.write(4096, &w, false).await.unwrap();
        q.write(8 << 20, &w, true).await.unwrap();
        q.flush().await.unwrap();
        let mut r = IoBuf::with_capacity(1 << 20);
        q.read(4096, &mut r).await.unwrap();
        assert_eq!(r.as_slice(), w.as_slice());
        q.discard(4096, 65536).await.unwrap();
        q.write_zeroes(8 << 20, 4096, false).await.unwrap();
        q.read(4096, &mut r).await.unwrap();
        assert!(r.as_slice()[..65536].iter().all(|&b| b == 0));
        assert_eq!(&r.as_slice()[65536..], &w.as_slice()[65536..]);
        q.read(8 << 20, &mut r).await.unwrap();
        assert!(r.as_slice()[..4096].iter().all(|&b| b == 0));
        assert_eq!(&r.as_slice()[4096..], &w.as_slice()[4096..]);
        assert_eq!(q.in_flight(), 0);
    });
}

/// A read future dropped while librbd works on it leaves the buffer lent (CPU access panics)
/// until its completion is polled out; then the buffer is the caller's again.
#[test]
#[ignore = "needs a Ceph cluster (tests/rbd/host.sh)"]
fn dropped_read_keeps_the_buffer_lent_until_librbd_is_done() {
    let spec = image("crate-drop", 64);
    let t = open(&spec);
    let q = t.open_queue(0).unwrap();
    Runtime::new().unwrap().block_on(async {
        let mut buf = IoBuf::with_capacity(4 << 20);
        {
            let f = std::pin::pin!(q.read(0, &mut buf));
            // Poll once so the operation starts, then drop the future.
            let _ = rt::time::timeout(Duration::from_micros(1), f).await;
        }
        if buf.is_lent() {
            assert!(
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    buf.as_slice();
                }))
                .is_err()
            );
        }
        for _ in 0..2000 {
            if q.in_flight() == 0 {
                break;
            }
            rt::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(q.in_flight(), 0, "the abandoned read never completed");
        assert!(!buf.is_lent());
        buf.as_mut_slice()[0] = 1;
    });
}

/// Two queues on two threads share one image handle (one eventfd): whichever reaps a
/// completion routes it to its owner; every write lands where it was meant to.
#[test]
#[ignore = "needs a Ceph cluster (tests/rbd/host.sh)"]
fn queues_on_two_threads_share_one_handle() {
    let spec = image("crate-share", 64);
    let t = Arc::new(open(&spec));
    let threads: Vec<_> = (0..2u8)
        .map(|qid| {
            let t = t.clone();
            std::thread::spawn(move || {
                let q = Rc::new(t.open_queue(qid as u16).unwrap());
                Runtime::new().unwrap().block_on(async move {
                    let tasks: Vec<_> = (0..32u64)
                        .map(|i| {
                            let q = q.clone();
                            rt::spawn(async move {
                                let off = (qid as u64 * 32 + i) * 65536;
                                let w = pattern(65536, qid * 64 + i as u8);
                                q.write(off, &w, false).await.unwrap();
                                let mut r = IoBuf::with_capacity(65536);
                                q.read(off, &mut r).await.unwrap();
                                assert_eq!(r.as_slice(), w.as_slice());
                            })
                        })
                        .collect();
                    for h in tasks {
                        h.await;
                    }
                    assert_eq!(q.in_flight(), 0);
                });
            })
        })
        .collect();
    for h in threads {
        h.join().unwrap();
    }
}

/// A queue dropped with abandoned operations waits for them before its buffers (and the image)
/// go: no use after free, and the image closes cleanly afterwards.
#[test]
#[ignore = "needs a Ceph cluster (tests/rbd/host.sh)"]
fn queue_dropped_mid_flight_drains_first() {
    let spec = image("crate-dropq", 64);
    let t = open(&spec);
    let q = Rc::new(t.open_queue(0).unwrap());
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        for i in 0..16u64 {
            let q = q.clone();
            // Started, never awaited to completion: the tasks die with the runtime.
            rt::spawn(async move {
                let w = pattern(1 << 20, i as u8);
                q.write(i << 20, &w, false).await.unwrap();
            });
        }
        rt::time::sleep(Duration::from_millis(1)).await;
    });
    drop(rt);
    drop(q);
    drop(t);
}

//! Our client target (`NbdTarget`, through the `Target`/`TargetQueue` interface the ublk queue
//! uses) against qemu-nbd, nbdkit (memory, file; error and delay filters) and our own server.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use nbd::client::{NbdConfig, NbdTarget};
use nbd::server::ExportConfig;
use rt::{IoBuf, Runtime};
use targets::mem::MemTarget;
use targets::{Target, TargetQueue};

const MB: u64 = 1 << 20;

fn buf_from(v: &[u8]) -> IoBuf {
    let mut b = IoBuf::with_capacity(v.len());
    b.as_mut_slice().copy_from_slice(v);
    b
}

fn open(uri: &str, timeout: Duration) -> NbdTarget {
    let mut c = NbdConfig::new(uri).unwrap();
    c.timeout = timeout;
    NbdTarget::open(c).unwrap()
}

fn nbdkit(args: &[&str], sock: &Path) -> Peer {
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-U"])
        .arg(sock)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(None, Some(sock));
    Peer(child)
}

fn unix_uri(sock: &Path) -> String {
    format!("nbd+unix:///?socket={}", sock.display())
}

/// Write a pattern with many requests in flight at once, read it back, check every byte.
async fn pipelined_round_trip<Q: TargetQueue + 'static>(q: Rc<Q>, size: u64, seed: u64) {
    let data = Rc::new(pattern(size as usize, seed));
    let piece = 64 << 10;
    let mut hs = vec![];
    for i in 0..(size / piece) {
        let (q, d) = (q.clone(), data.clone());
        hs.push(rt::spawn(async move {
            let s = (i * piece) as usize;
            let b = buf_from(&d[s..s + piece as usize]);
            q.write(i * piece, &b, i % 7 == 0).await.unwrap();
        }));
    }
    for h in hs {
        h.await;
    }
    q.flush().await.unwrap();
    let mut hs = vec![];
    for i in 0..(size / piece) {
        let (q, d) = (q.clone(), data.clone());
        hs.push(rt::spawn(async move {
            let s = (i * piece) as usize;
            let mut b = IoBuf::with_capacity(piece as usize);
            q.read(i * piece, &mut b).await.unwrap();
            assert!(
                b.as_slice() == &d[s..s + piece as usize],
                "piece {i} differs"
            );
        }));
    }
    for h in hs {
        h.await;
    }
}

#[test]
fn against_our_server_all_commands() {
    let srv = Server::tcp(
        MemTarget::new(16 * MB, 512).unwrap(),
        ExportConfig {
            name: "d".into(),
            threads: 2,
            ..Default::default()
        },
    );
    let t = open(&srv.uri("d"), Duration::from_secs(5));
    let g = t.geometry();
    assert_eq!(g.size, 16 * MB);
    assert!(g.caps.discard && g.caps.write_zeroes && g.caps.consistent_across_queues);
    assert_eq!(t.max_queues(), usize::MAX);
    let q = Rc::new(t.open_queue(0).unwrap());
    Runtime::new().unwrap().block_on(async {
        pipelined_round_trip(q.clone(), 8 * MB, 3).await;
        // Zeroing and trimming read back as zeroes; block status sees the hole.
        q.write_zeroes(MB, 64 << 10, false).await.unwrap();
        q.discard(2 * MB, MB).await.unwrap();
        // (Before reading it: the mem target counts pages read since as resident.)
        let ext = q.block_status(2 * MB, MB).await.unwrap();
        assert_eq!(ext.len(), 1, "{ext:?}");
        assert!(ext[0].hole && ext[0].zero, "{ext:?}");
        let ext = q.block_status(0, MB).await.unwrap();
        assert!(!ext[0].hole, "{ext:?}");
        let mut b = IoBuf::with_capacity(MB as usize);
        q.read(2 * MB, &mut b).await.unwrap();
        assert!(b.as_slice().iter().all(|&x| x == 0));
        q.read(MB, &mut b).await.unwrap();
        assert!(b.as_slice()[..64 << 10].iter().all(|&x| x == 0));
        assert!(
            b.as_slice()[64 << 10..]
                == pattern(8 * MB as usize, 3)[(MB + (64 << 10)) as usize..2 * MB as usize]
        );
        let ext = q.block_status(12 * MB, 4 * MB).await.unwrap();
        assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 4 * MB, "{ext:?}");
        // Past the end: the server's EINVAL comes back as EINVAL, at once.
        let mut b = IoBuf::with_capacity(4096);
        let e = q.read(16 * MB, &mut b).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        // A read bigger than the server's maximum is split.
        let mut big = IoBuf::with_capacity(40 << 20);
        let e = q.read(0, &mut big).await.unwrap_err(); // 40M > 16M disk
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
        q.disconnect().await;
    });
}

#[test]
fn against_qemu_nbd_file() {
    if !have("qemu-nbd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 8 * MB as usize]).unwrap();
    let sock = dir.path().join("q.sock");
    let child = Command::new("qemu-nbd")
        .args(["-f", "raw", "-x", "disk", "--shared=4", "-t", "-k"])
        .arg(&sock)
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _peer = Peer(child);
    wait_listening(None, Some(&sock));
    let t = open(
        &format!("nbd+unix:///disk?socket={}", sock.display()),
        Duration::from_secs(10),
    );
    assert_eq!(t.geometry().size, 8 * MB);
    let q = Rc::new(t.open_queue(0).unwrap());
    Runtime::new().unwrap().block_on(async {
        pipelined_round_trip(q.clone(), 8 * MB, 4).await;
        q.disconnect().await;
    });
    assert!(
        std::fs::read(&img).unwrap() == pattern(8 * MB as usize, 4),
        "file content differs"
    );
}

#[test]
fn against_nbdkit_memory_multi_conn_two_threads() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("k.sock");
    let _p = nbdkit(&["memory", "size=32M"], &sock);
    let t = std::sync::Arc::new(open(&unix_uri(&sock), Duration::from_secs(10)));
    assert!(
        t.geometry().caps.consistent_across_queues,
        "nbdkit memory allows multi-conn"
    );
    // Two queues on two threads, each its own connection, writing disjoint halves.
    let hs: Vec<_> = (0..2u64)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || {
                let q = Rc::new(t.open_queue(i as u16).unwrap());
                Runtime::new().unwrap().block_on(async move {
                    let d = pattern(16 * MB as usize, 10 + i);
                    q.write(i * 16 * MB, &buf_from(&d), false).await.unwrap();
                    q.flush().await.unwrap();
                });
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    // A third connection sees both halves.
    let q = t.open_queue(2).unwrap();
    Runtime::new().unwrap().block_on(async {
        let mut b = IoBuf::with_capacity(32 * MB as usize);
        q.read(0, &mut b).await.unwrap();
        assert!(b.as_slice()[..16 * MB as usize] == pattern(16 * MB as usize, 10)[..]);
        assert!(b.as_slice()[16 * MB as usize..] == pattern(16 * MB as usize, 11)[..]);
    });
}

#[test]
fn against_nbdkit_file_and_single_conn_policy() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("f.img");
    std::fs::write(&img, vec![0u8; 4 * MB as usize]).unwrap();
    let sock = dir.path().join("k.sock");
    // The noparallel filter with serialize=connections removes multi-conn.
    let _p = nbdkit(
        &[
            "--filter=noparallel",
            "file",
            &format!("file={}", img.display()),
            "serialize=connections",
        ],
        &sock,
    );
    let t = open(&unix_uri(&sock), Duration::from_secs(10));
    assert_eq!(t.max_queues(), 1);
    let q = Rc::new(t.open_queue(0).unwrap());
    let e = t
        .open_queue(1)
        .err()
        .expect("second queue must be refused without multi-conn");
    assert!(e.to_string().contains("multi-conn"), "{e}");
    Runtime::new().unwrap().block_on(async {
        pipelined_round_trip(q.clone(), 4 * MB, 5).await;
        q.write_zeroes(0, 4096, false).await.unwrap();
    });
    let mut want = pattern(4 * MB as usize, 5);
    want[..4096].fill(0);
    assert!(std::fs::read(&img).unwrap() == want);
}

#[test]
fn nbdkit_error_filter_propagates_errors_promptly() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("k.sock");
    let _p = nbdkit(
        &[
            "--filter=error",
            "memory",
            "size=8M",
            "error-pread=EIO",
            "error-pread-rate=100%",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=100%",
        ],
        &sock,
    );
    let t = open(&unix_uri(&sock), Duration::from_secs(10));
    let q = t.open_queue(0).unwrap();
    Runtime::new().unwrap().block_on(async {
        let start = Instant::now();
        let mut b = IoBuf::with_capacity(4096);
        assert_eq!(
            q.read(0, &mut b).await.unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        let e = q
            .write(0, &buf_from(&[1u8; 4096]), false)
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        // Errors from the server are answers, not lost connections: no retrying until timeout.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        q.flush().await.unwrap();
    });
}

#[test]
fn nbdkit_delay_filter_hits_the_timeout() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("k.sock");
    let _p = nbdkit(&["--filter=delay", "memory", "size=8M", "rdelay=3"], &sock);
    let t = open(&unix_uri(&sock), Duration::from_millis(800));
    let q = t.open_queue(0).unwrap();
    Runtime::new().unwrap().block_on(async {
        let start = Instant::now();
        let mut b = IoBuf::with_capacity(4096);
        let e = q.read(0, &mut b).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // Writes are not delayed: the queue reconnects and keeps working.
        q.write(0, &buf_from(&[7u8; 4096]), false).await.unwrap();
    });
}

#[test]
fn reconnects_after_server_restart_and_fails_with_eio_when_it_stays_down() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("f.img");
    std::fs::write(&img, vec![0u8; MB as usize]).unwrap();
    let sock = dir.path().join("k.sock");
    let mut p = Some(nbdkit(&["file", &format!("file={}", img.display())], &sock));
    let t = open(&unix_uri(&sock), Duration::from_secs(5));
    let q = Rc::new(t.open_queue(0).unwrap());
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        q.write(0, &buf_from(&[9u8; 4096]), true).await.unwrap();
    });
    // Server goes away; a request waits, the server comes back, the request completes.
    drop(p.take());
    // Restarted by a shell from this thread (nbdkit's --exit-with-parent follows the thread
    // that spawned it, so a helper thread would take it down when it ends).
    let restart = Peer(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep 0.7; rm -f '{0}'; exec nbdkit -f --exit-with-parent -U '{0}' file '{1}'",
                sock.display(),
                img.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    rt.block_on(async {
        let start = Instant::now();
        let mut b = IoBuf::with_capacity(4096);
        q.read(0, &mut b).await.unwrap();
        assert!(b.as_slice().iter().all(|&x| x == 9));
        assert!(
            start.elapsed() >= Duration::from_millis(500),
            "did not wait for the server"
        );
    });
    drop(restart);
    // Down for good: EIO after the timeout, not before and not much later.
    rt.block_on(async {
        let start = Instant::now();
        let e = q
            .write(0, &buf_from(&[1u8; 4096]), false)
            .await
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(4500) && took < Duration::from_secs(8),
            "{took:?}"
        );
    });
}

/// The target follows a server that grew its export (nbdkit's file plugin over a file the test
/// extends): `resize` checks the server holds the size, and a request beyond the size the
/// queue's connection negotiated goes out on a fresh connection (nbdkit checks requests against
/// the size it announced on each connection).
#[test]
fn follows_an_export_grown_on_the_server() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("grow.img");
    std::fs::write(&img, vec![0u8; 4 * MB as usize]).unwrap();
    let sock = dir.path().join("k.sock");
    let _p = nbdkit(&["file", &format!("file={}", img.display())], &sock);
    let t = open(&unix_uri(&sock), Duration::from_secs(30));
    let q = Rc::new(t.open_queue(0).unwrap());
    let rt = Runtime::new().unwrap();
    rt.block_on(async {
        q.write(0, &buf_from(&pattern(4096, 1)), false)
            .await
            .unwrap();
    });
    assert_eq!(t.backing_size().unwrap(), Some(4 * MB));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(8 * MB)
        .unwrap();
    let e = t.resize(16 * MB).unwrap_err().to_string();
    assert!(e.contains("fewer than"), "{e}");
    assert_eq!(t.geometry().size, 4 * MB, "a refused resize keeps the size");
    assert_eq!(t.backing_size().unwrap(), Some(8 * MB));
    t.resize(8 * MB).unwrap();
    assert_eq!(t.geometry().size, 8 * MB);
    rt.block_on(async {
        // Writes in flight on the first connection while one beyond its 4 MiB retires it: they
        // finish there (not re-sent), the new one goes out on a new connection.
        let mut hs = vec![];
        for i in 0..32u64 {
            let q = q.clone();
            hs.push(rt::spawn(async move {
                let b = buf_from(&pattern(65536, 100 + i));
                q.write(MB + i * 65536, &b, false).await.unwrap();
            }));
        }
        rt::time::sleep(Duration::from_millis(1)).await; // let them go out first
        q.write(6 * MB, &buf_from(&pattern(65536, 2)), true)
            .await
            .unwrap();
        for h in hs {
            h.await;
        }
        let mut b = IoBuf::with_capacity(65536);
        q.read(6 * MB, &mut b).await.unwrap();
        assert!(b.as_slice() == &pattern(65536, 2)[..]);
        // And the data before the old end is still served.
        let mut b = IoBuf::with_capacity(4096);
        q.read(0, &mut b).await.unwrap();
        assert!(b.as_slice() == &pattern(4096, 1)[..]);
    });
    // A server that stops answering: asking its size fails within the probe's 10 s bound, not
    // the target's 30 s request timeout, and the size stays.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(_p.0.id() as i32, libc::SIGSTOP) };
    let t0 = Instant::now();
    let e = t.backing_size().unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(12), "{:?}", t0.elapsed());
    assert!(e.to_string().contains("timed out"), "{e}");
    assert_eq!(t.geometry().size, 8 * MB);
    // SAFETY: as above.
    unsafe { libc::kill(_p.0.id() as i32, libc::SIGCONT) };
    let f = std::fs::read(&img).unwrap();
    assert!(f[6 * MB as usize..6 * MB as usize + 65536] == pattern(65536, 2)[..]);
    for i in 0..32usize {
        let at = MB as usize + i * 65536;
        assert!(
            f[at..at + 65536] == pattern(65536, 100 + i as u64)[..],
            "write {i}"
        );
    }
}

//! Our server against real NBD clients: qemu-img, nbdinfo, nbdcopy, fio's nbd engine.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nbd::server::ExportConfig;
use targets::file::FileTarget;
use targets::mem::MemTarget;

const MB: u64 = 1 << 20;

fn cfg(name: &str) -> ExportConfig {
    ExportConfig {
        name: name.into(),
        description: "test export".into(),
        threads: 2,
        ..Default::default()
    }
}

#[test]
fn qemu_img_info_convert_compare() {
    if !have("qemu-img") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let mut data = pattern(16 * MB as usize, 1);
    data[4 * MB as usize..8 * MB as usize].fill(0); // a zero run: sent as holes
    std::fs::write(&src, &data).unwrap();
    let srv = Server::tcp(MemTarget::new(16 * MB, 512).unwrap(), cfg("disk"));
    let uri = srv.uri("disk");

    let info = run_ok(Command::new("qemu-img").args(["info", "--output=json", &uri]));
    assert!(info.contains("\"virtual-size\": 16777216"), "{info}");

    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&src)
            .arg(&uri),
    );
    run_ok(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&src)
            .arg(&uri),
    );

    let back = dir.path().join("back.img");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &uri])
            .arg(&back),
    );
    assert!(
        std::fs::read(&back).unwrap() == data,
        "converted image differs"
    );

    // compare must notice a difference (the test can fail).
    let mut other = data.clone();
    other[12345] ^= 0xff;
    let o = dir.path().join("other.img");
    std::fs::write(&o, &other).unwrap();
    let out = run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&o)
            .arg(&uri),
        Duration::from_secs(60),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "compare should report a mismatch"
    );
}

#[test]
fn nbdinfo_list_and_map() {
    if !have("nbdinfo") || !have("qemu-io") {
        return;
    }
    let srv = Server::tcp(MemTarget::new(8 * MB, 512).unwrap(), cfg("disk"));
    let uri = srv.uri("disk");
    // Write data at [1M, 2M) only; the rest was never touched and is a hole.
    run_ok(Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x55 1M 1M", &uri]));

    let list = run_ok(Command::new("nbdinfo").args(["--list", &srv.uri("")]));
    assert!(list.contains("export=\"disk\""), "{list}");
    assert!(list.contains("test export"), "{list}");

    let json = run_ok(Command::new("nbdinfo").args(["--json", &uri]));
    assert!(json.contains("\"export-size\": 8388608"), "{json}");
    assert!(json.contains("\"can_multi_conn\": true"), "{json}");
    assert!(json.contains("\"is_read_only\": false"), "{json}");
    assert!(json.contains("\"block_size_minimum\": 512"), "{json}");

    let map = run_ok(Command::new("nbdinfo").args(["--map", &uri]));
    // Lines: offset length type description
    let rows: Vec<(u64, u64, u32)> = map
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    // The map covers the disk contiguously.
    let mut at = 0;
    for r in &rows {
        assert_eq!(r.0, at, "{map}");
        at += r.1;
    }
    assert_eq!(at, 8 * MB, "{map}");
    let state = |off: u64| {
        rows.iter()
            .find(|r| r.0 <= off && off < r.0 + r.1)
            .unwrap()
            .2
    };
    // Written range is data; never-touched ranges are holes that read as zero. (The first pages
    // may show as data: the mem target counts pages qemu-io read while probing as resident.)
    assert_eq!(state(MB), 0, "{map}");
    assert_eq!(state(2 * MB - 1), 0, "{map}");
    assert_eq!(state(MB / 2), 3, "{map}");
    assert_eq!(state(2 * MB), 3, "{map}");
    assert_eq!(state(8 * MB - 1), 3, "{map}");
}

#[test]
fn nbdcopy_both_ways_over_unix_socket() {
    if !have("nbdcopy") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let data = pattern(8 * MB as usize, 2);
    std::fs::write(&src, &data).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 8 * MB as usize]).unwrap();
    let t = FileTarget::open(&disk, None, false, false).unwrap();
    let srv = Server::unix(t, cfg("f"), &dir.path().join("nbd.sock"));
    let uri = srv.uri("f");
    run_ok(Command::new("nbdcopy").arg(&src).arg(&uri));
    let dst = dir.path().join("dst.img");
    run_ok(Command::new("nbdcopy").arg(&uri).arg(&dst));
    assert!(std::fs::read(&dst).unwrap() == data);
    assert!(
        std::fs::read(&disk).unwrap() == data,
        "the backing file holds the data"
    );
}

#[test]
fn fio_nbd_engine_verify() {
    if !have("fio") {
        return;
    }
    let srv = Server::tcp(MemTarget::new(64 * MB, 512).unwrap(), cfg("disk"));
    let out = run_ok(Command::new("fio").args([
        "--name=verify",
        "--ioengine=nbd",
        &format!("--uri={}", srv.uri("disk")),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=32",
        "--size=32M",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--output-format=terse",
    ]));
    // terse: field 5 is read_kb..., just make sure it reported, and no verify error occurred.
    assert!(out.lines().count() >= 1, "{out}");
}

#[test]
fn read_only_export_refuses_writes() {
    if !have("qemu-io") || !have("nbdinfo") {
        return;
    }
    let mut c = cfg("ro");
    c.read_only = true;
    let srv = Server::tcp(MemTarget::new(4 * MB, 512).unwrap(), c);
    let json = run_ok(Command::new("nbdinfo").args(["--json", &srv.uri("ro")]));
    assert!(json.contains("\"is_read_only\": true"), "{json}");
    let out = run(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write 0 4k", &srv.uri("ro")]),
        Duration::from_secs(30),
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() || all.contains("ermission") || all.contains("read-only"),
        "{all}"
    );
    assert!(!all.contains("wrote 4096"), "{all}");
}

#[test]
fn non_loopback_needs_allow_remote_and_shutdown_is_prompt() {
    let e = nbd::server::Listener::bind_tcp("0.0.0.0:0".parse().unwrap(), false).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
    let mut srv = Server::tcp(MemTarget::new(MB, 512).unwrap(), cfg("x"));
    // An idle client mid-negotiation must not keep the server alive.
    let _idle = std::net::TcpStream::connect(srv.addr.unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let took = srv.stop();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

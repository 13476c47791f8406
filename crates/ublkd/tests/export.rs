//! `ublkd export` as a program, checked with real NBD peers (nbdinfo, nbdcopy, qemu-img), and
//! the nbd target (`-t nbd`) through `ublkd export -t nbd` chained onto another export. No ublk
//! driver needed. A missing peer is a loud SKIP, or a failure when CI is set.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The nbd crate's peer-test helpers (have, run, run_ok, pattern, free_port), shared as source:
// one copy of the CI-aware skip logic and the time-limited command runner.
#[path = "../../nbd/tests/common/mod.rs"]
mod common;
use common::{free_port, have, pattern, run, run_ok};

const UBLKD: &str = env!("CARGO_BIN_EXE_ublkd");

/// A running `ublkd export`; killed (SIGKILL) and reaped on drop if still running.
struct Export {
    child: Child,
    /// Its stderr lines, collected by a thread.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Export {
    /// Start `ublkd export ARGS` and wait for its "listening" line.
    fn start(args: &[&str]) -> Export {
        let mut child = Command::new(UBLKD)
            .arg("export")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                // Record the line before announcing it, so `log()` after `start` contains it.
                let listening = line.contains("listening on");
                log2.lock().unwrap().push(line);
                if listening {
                    let _ = tx.send(());
                }
            }
        });
        let mut e = Export { child, log };
        if rx.recv_timeout(Duration::from_secs(20)).is_err() {
            let st = e.child.try_wait().unwrap();
            panic!(
                "ublkd export {args:?} never listened (status {st:?}): {:?}",
                e.log()
            );
        }
        e
    }
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; it is not reaped yet (Drop reaps it).
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
    /// Wait up to `limit` for the process to exit.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic non-zero test data.
/// The "export-size" nbdinfo reports for `uri`.
fn nbdinfo_size(uri: &str) -> u64 {
    let out = run_ok(Command::new("nbdinfo").arg("--json").arg(uri));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["exports"][0]["export-size"]
        .as_u64()
        .unwrap_or_else(|| panic!("no export-size in {out}"))
}

/// Write 64 MiB of data with nbdcopy, check it with `qemu-img compare` (when qemu-img is
/// installed) and read it back with nbdcopy.
fn round_trip(uri: &str, dir: &Path, seed: u64) {
    let src = dir.join(format!("src{seed}.img"));
    let back = dir.join(format!("back{seed}.img"));
    let mut data = pattern(64 << 20, seed);
    data[8 << 20..12 << 20].fill(0); // a zero run: exercises zero detection / holes
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(uri));
    if have("qemu-img") {
        run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(&src)
                .arg(uri),
        );
    }
    run_ok(Command::new("nbdcopy").arg(uri).arg(&back));
    assert!(
        std::fs::read(&back).unwrap() == data,
        "data read back differs"
    );
}

#[test]
fn export_mem_serves_nbdinfo_and_round_trips_data() {
    if !have("nbdinfo") || !have("nbdcopy") {
        return;
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut e = Export::start(&["-t", "mem", "--size", "64M", "--listen", &listen]);
    let line = e
        .log()
        .into_iter()
        .find(|l| l.contains("listening on"))
        .unwrap();
    assert!(line.contains(&listen) && line.contains("64M"), "{line}");
    let uri = format!("nbd://{listen}");
    assert_eq!(nbdinfo_size(&uri), 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    round_trip(&uri, dir.path(), 1);
    e.signal(libc::SIGTERM);
    let st = e
        .wait(Duration::from_secs(10))
        .expect("no exit after SIGTERM");
    assert!(st.success(), "{st:?}: {:?}", e.log());
}

#[test]
fn sigterm_and_sigint_stop_promptly_with_status_0() {
    if !have("nbdinfo") {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut e = Export::start(&["-t", "mem", "--size", "64M", "--listen", &listen]);
        // An idle client connected while the signal arrives must not hold the export up.
        let idle = TcpStream::connect(listen.parse::<SocketAddr>().unwrap()).unwrap();
        assert_eq!(nbdinfo_size(&format!("nbd://{listen}")), 64 << 20);
        let t = Instant::now();
        e.signal(sig);
        let st = e
            .wait(Duration::from_secs(15))
            .expect("no exit after the signal");
        assert!(st.success(), "signal {sig}: {st:?}: {:?}", e.log());
        assert!(
            t.elapsed() < Duration::from_secs(12),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            e.log().iter().any(|l| l.contains("export stopped")),
            "{:?}",
            e.log()
        );
        drop(idle);
        // The port is free again.
        std::net::TcpListener::bind(&listen).unwrap();
    }
}

#[test]
fn unix_socket_export_read_only_and_socket_removed() {
    if !have("nbdinfo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("e.sock");
    let sock_s = sock.to_str().unwrap();
    let mut e = Export::start(&[
        "-t",
        "mem",
        "--size",
        "32M",
        "--socket",
        sock_s,
        "--name",
        "disk",
        "--read-only",
    ]);
    let uri = format!("nbd+unix:///disk?socket={sock_s}");
    let out = run_ok(Command::new("nbdinfo").arg("--json").arg(&uri));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["exports"][0]["export-size"].as_u64(),
        Some(32 << 20),
        "{out}"
    );
    assert_eq!(
        v["exports"][0]["is_read_only"].as_bool(),
        Some(true),
        "{out}"
    );
    e.signal(libc::SIGTERM);
    assert!(e.wait(Duration::from_secs(10)).expect("no exit").success());
    assert!(!sock.exists(), "socket file left behind");
}

/// Filters stack on an export as on a device: injected errors reach an NBD client with their
/// errno, only in their range, behind a delay the client waits out.
#[test]
fn filters_stack_on_an_export() {
    if !have("qemu-io") {
        return;
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let e = Export::start(&[
        "-t",
        "mem",
        "--size",
        "16M",
        "--listen",
        &listen,
        "--filter",
        "delay:ms=50",
        "--filter",
        "error:ops=read,offset=1M,length=4K",
    ]);
    assert!(
        e.log().iter().any(|l| l.contains("+delay:ms=50 +error:")),
        "{:?}",
        e.log()
    );
    let io = |cmd: &str| {
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", cmd, &format!("nbd://{listen}")])
            .output()
            .unwrap()
    };
    let t0 = Instant::now();
    let ok = io("read 0 4k");
    assert!(ok.status.success() && !String::from_utf8_lossy(&ok.stdout).contains("failed"));
    assert!(t0.elapsed() >= Duration::from_millis(50), "no delay");
    let bad = io("read 1M 4k");
    let out =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(out.contains("Input/output error"), "{out}");
    let w = io("write 1M 4k");
    assert!(
        !String::from_utf8_lossy(&w.stdout).contains("failed"),
        "writes pass"
    );
}

/// `--read-only` makes any target's export read-only, not only a file's.
#[test]
fn read_only_export_of_mem_refuses_writes() {
    if !have("qemu-io") {
        return;
    }
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _e = Export::start(&[
        "-t",
        "mem",
        "--size",
        "16M",
        "--listen",
        &listen,
        "--read-only",
    ]);
    let w = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &format!("nbd://{listen}")])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&w.stdout).to_string() + &String::from_utf8_lossy(&w.stderr);
    // qemu-io opens read-write and the server says no.
    assert!(
        !w.status.success() && out.contains("Permission denied"),
        "{out}"
    );
}

/// `ublkd export -t nbd --uri` of another `ublkd export`: the nbd target end to end (the same
/// AnyTarget/AnyQueue code a ublk device uses). Our export allows multi-conn, so every worker
/// thread of the outer export has its own connection to the inner one.
#[test]
fn nbd_target_chained_through_a_second_export() {
    if !have("nbdinfo") || !have("nbdcopy") {
        return;
    }
    let inner = format!("127.0.0.1:{}", free_port());
    let _inner = Export::start(&[
        "-t", "mem", "--size", "64M", "--listen", &inner, "--name", "in",
    ]);
    let outer = format!("127.0.0.1:{}", free_port());
    let in_uri = format!("nbd://{inner}/in");
    let mut e = Export::start(&[
        "-t",
        "nbd",
        "--uri",
        &in_uri,
        "--timeout",
        "5",
        "--listen",
        &outer,
    ]);
    let uri = format!("nbd://{outer}");
    assert_eq!(nbdinfo_size(&uri), 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    round_trip(&uri, dir.path(), 2);
    // What went through the outer export is in the inner one.
    let direct = dir.path().join("direct.img");
    run_ok(Command::new("nbdcopy").arg(&in_uri).arg(&direct));
    let mut want = pattern(64 << 20, 2);
    want[8 << 20..12 << 20].fill(0);
    assert!(std::fs::read(&direct).unwrap() == want);
    e.signal(libc::SIGTERM);
    assert!(e.wait(Duration::from_secs(10)).expect("no exit").success());
}

/// nbdkit's memory plugin advertises multi-conn; its multi-conn filter hides it. Without it the
/// nbd target allows one queue, so the export is lowered to one worker thread and says why.
#[test]
fn nbd_target_without_multi_conn_uses_one_queue() {
    if !have("nbdkit") || !have("nbdinfo") {
        return;
    }
    let port = free_port();
    let mut kit = Command::new("nbdkit")
        .args(["-f", "-p", &port.to_string(), "-i", "127.0.0.1"])
        .args([
            "--filter=multi-conn",
            "memory",
            "16M",
            "multi-conn-mode=disable",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = kit.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut kit.stderr.take().unwrap(), &mut err);
            eprintln!("\n*** SKIP: nbdkit multi-conn filter unavailable ({st}): {err} ***\n");
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "nbdkit never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let outer = format!("127.0.0.1:{}", free_port());
    let mut e = Export::start(&[
        "-t",
        "nbd",
        "--uri",
        &format!("nbd://127.0.0.1:{port}"),
        "--listen",
        &outer,
        "--connections",
        "4",
    ]);
    let log = e.log();
    assert!(
        log.iter()
            .any(|l| l.contains("server does not allow multi-conn: using 1 worker thread")),
        "{log:?}"
    );
    assert_eq!(nbdinfo_size(&format!("nbd://{outer}")), 16 << 20);
    e.signal(libc::SIGTERM);
    assert!(e.wait(Duration::from_secs(10)).expect("no exit").success());
    let _ = kit.kill();
    let _ = kit.wait();
}

#[test]
fn idle_timeout_disconnects_an_idle_client_with_a_log_line() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut e = Export::start(&[
        "-t",
        "mem",
        "--size",
        "1M",
        "--name",
        "d",
        "--listen",
        &listen,
        "--idle-timeout",
        "1",
    ]);
    let t = Instant::now();
    let mut c = common::raw::handshake_at(listen.parse().unwrap(), false);
    assert!(common::raw::closed(&mut c));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let log = e.log();
    assert!(
        log.iter()
            .any(|l| l.contains("idle clients disconnected after 1 s")),
        "{log:?}"
    );
    // The line is written just before the socket is shut down; give the reader thread a moment.
    let t = Instant::now();
    while !e
        .log()
        .iter()
        .any(|l| l.contains("nothing in flight, disconnecting"))
    {
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", e.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    e.signal(libc::SIGTERM);
    assert!(e.wait(Duration::from_secs(10)).expect("no exit").success());
}

/// Errors are one line on stderr, exit non-zero, and nothing keeps running.
fn one_line_error(args: &[&str], want: &str) {
    let out = run(Command::new(UBLKD).args(args), Duration::from_secs(20));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.contains(want), "{args:?}: {err} lacks {want:?}");
    assert!(err.starts_with("ublkd: error: "), "{err}");
}

#[test]
fn bad_input_is_one_line() {
    let port = free_port();
    let any = format!("0.0.0.0:{port}");
    one_line_error(
        &["export", "-t", "mem", "--size", "64M", "--listen", &any],
        "--allow-remote",
    );
    // Nobody listens on port 1.
    one_line_error(
        &["export", "-t", "nbd", "--uri", "nbd://127.0.0.1:1"],
        "Connection refused",
    );
    one_line_error(
        &["add", "-t", "nbd", "--uri", "nbd://127.0.0.1:1"],
        "Connection refused",
    );
    one_line_error(
        &["add", "-t", "nbd", "--uri", "http://x"],
        "invalid NBD URI",
    );
    one_line_error(&["export", "-t", "nbd"], "needs --uri");
    one_line_error(
        &["add", "-t", "null", "--size", "1G", "--busy-poll-us", "0"],
        "1..=1000000",
    );
    one_line_error(
        &["export", "-t", "mem", "--size", "1M", "--idle-timeout", "0"],
        "1..=604800",
    );
    one_line_error(
        &["export", "-t", "mem", "--size", "1M", "--uri", "nbd://h"],
        "--uri applies only to -t nbd",
    );
    one_line_error(
        &["export", "-t", "mem", "--size", "1M", "--connections", "0"],
        "--connections",
    );
    one_line_error(
        &[
            "export",
            "-t",
            "mem",
            "--size",
            "1M",
            "--socket",
            "/x",
            "--listen",
            "127.0.0.1:1",
        ],
        "cannot be used with",
    );
    // A port already in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    one_line_error(
        &["export", "-t", "mem", "--size", "1M", "--listen", &addr],
        "cannot listen on",
    );
}

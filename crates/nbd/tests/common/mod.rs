//! Test helpers: peer programs (present, or a loud SKIP; a failure under CI), children killed on
//! drop, commands with a time limit, and our server on a random loopback port.

#![allow(dead_code)]

pub mod raw;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nbd::server::serve;
use nbd::server::{ExportConfig, Listener, Shutdown};
use targets::Target;

/// Whether `prog` is on PATH. Missing: a failure under CI, a loud SKIP otherwise.
pub fn have(prog: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{prog} is required under CI but is not installed");
        }
        eprintln!("\n*** SKIP: {prog} not installed; this test did not run ***\n");
    }
    found
}

/// Run a command to completion within `limit`; panics (after killing it) past the limit.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} timed out after {limit:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run and require success; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process killed and reaped on drop.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Our server on 127.0.0.1:<random port> or a Unix socket; stopped on drop.
pub struct Server {
    pub addr: Option<SocketAddr>,
    pub socket: Option<PathBuf>,
    pub stop: Arc<Shutdown>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub fn tcp<T: Target>(t: T, cfg: ExportConfig) -> Server {
        let l = Listener::bind_tcp("127.0.0.1:0".parse().unwrap(), false).unwrap();
        Self::start(l, t, cfg)
    }
    pub fn unix<T: Target>(t: T, cfg: ExportConfig, path: &Path) -> Server {
        let l = Listener::bind_unix(path).unwrap();
        let mut s = Self::start(l, t, cfg);
        s.socket = Some(path.to_owned());
        s
    }
    fn start<T: Target>(l: Listener, t: T, cfg: ExportConfig) -> Server {
        let addr = l.local_addr();
        let stop = Shutdown::new().unwrap();
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || serve(l, Arc::new(t), cfg, s2));
        Server {
            addr,
            socket: None,
            stop,
            thread: Some(thread),
        }
    }
    /// nbd://127.0.0.1:PORT/NAME or nbd+unix:///NAME?socket=PATH
    pub fn uri(&self, name: &str) -> String {
        match (&self.addr, &self.socket) {
            (Some(a), _) => format!("nbd://{a}/{name}"),
            (None, Some(p)) => format!("nbd+unix:///{name}?socket={}", p.display()),
            _ => unreachable!(),
        }
    }
    /// Trigger shutdown and wait for `serve` to return (bounded).
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        self.stop.trigger();
        if let Some(h) = self.thread.take() {
            while !h.is_finished() {
                assert!(t.elapsed() < Duration::from_secs(20), "server did not stop");
                std::thread::sleep(Duration::from_millis(10));
            }
            h.join().unwrap().unwrap();
        }
        t.elapsed()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() && !std::thread::panicking() {
            self.stop();
        } else {
            self.stop.trigger();
        }
    }
}

/// Deterministic non-zero test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Wait until a TCP port or Unix socket accepts connections.
pub fn wait_listening(addr: Option<SocketAddr>, sock: Option<&Path>) {
    let t = Instant::now();
    loop {
        let ok = match (addr, sock) {
            (Some(a), _) => std::net::TcpStream::connect(a).is_ok(),
            (None, Some(p)) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            _ => unreachable!(),
        };
        if ok {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "peer never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free TCP port on loopback (racy by nature, good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

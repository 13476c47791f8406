//! `ublkd top`: every device's IOPS, throughput, latency and queue use, refreshed each
//! interval. On a terminal it redraws the screen and reads keys in raw mode (q or Ctrl-C
//! quits; the terminal's mode is restored on the way out); otherwise (a pipe, a file) it
//! prints one line per device per interval.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use stats::{DeviceSnapshot, Op};

use crate::cmd::stats::{elapsed, parse_secs};
use crate::control;

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0, value_parser = parse_secs)]
    interval: f64,
    /// Stop after this many refreshes (default: until q or Ctrl-C, or the pipe closes).
    #[arg(long)]
    iterations: Option<u64>,
}

/// One device's row over one interval.
struct Row {
    device: String,
    iops: [f64; 2],
    mbs: [f64; 2],
    p99_us: [Option<f64>; 2],
    inflight: u64,
    depth: u64,
    what: String,
}

fn row(now: &DeviceSnapshot, before: Option<&DeviceSnapshot>) -> Row {
    let secs = before.and_then(|b| elapsed(b, now));
    let mut r = Row {
        device: now.device.clone(),
        iops: [0.0; 2],
        mbs: [0.0; 2],
        p99_us: [None; 2],
        inflight: now.inflight(),
        depth: now.depth(),
        what: format!("{} {}", now.path, now.target),
    };
    if let (Some(b), Some(s)) = (before, secs) {
        for (i, op) in [Op::Read, Op::Write].into_iter().enumerate() {
            let d = now.total(op).since(&b.total(op));
            r.iops[i] = d.requests as f64 / s;
            r.mbs[i] = d.bytes as f64 / s / 1e6;
            r.p99_us[i] = d.quantile_ns(0.99).map(|n| n as f64 / 1000.0);
        }
    }
    r
}

const HEADER: &str =
    "DEV      R-IOPS    W-IOPS   R-MB/s   W-MB/s  R-p99us  W-p99us  INFLIGHT  DEVICE";

fn line(r: &Row) -> String {
    let p = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    format!(
        "{:<5} {:>9.0} {:>9.0} {:>8.1} {:>8.1} {:>8} {:>8} {:>5}/{:<4} {}",
        r.device,
        r.iops[0],
        r.iops[1],
        r.mbs[0],
        r.mbs[1],
        p(r.p99_us[0]),
        p(r.p99_us[1]),
        r.inflight,
        r.depth,
        r.what
    )
}

/// The terminal in raw mode (no echo, no line buffering, Ctrl-C as a key), restored on drop.
struct RawTerm(libc::termios);

impl RawTerm {
    fn enter() -> Option<RawTerm> {
        // SAFETY: termios is plain data, filled by tcgetattr on fd 0 before any use.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            t.c_cc[libc::VMIN] = 0;
            t.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(RawTerm(saved))
        }
    }
}

impl Drop for RawTerm {
    fn drop(&mut self) {
        // SAFETY: restores the attributes tcgetattr gave us, on the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

/// Wait until `deadline`, reading keys; true if one of them asks to quit.
fn wait_keys(deadline: Instant) -> bool {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on the stack, valid for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if n <= 0 {
            continue;
        }
        let mut buf = [0u8; 64];
        // SAFETY: reads into a stack buffer of the given length.
        let got = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if got <= 0 {
            // stdin closed: keep refreshing, only the deadline matters now.
            std::thread::sleep(left);
            return false;
        }
        if buf[..got as usize]
            .iter()
            .any(|&c| c == b'q' || c == b'Q' || c == 3)
        {
            return true;
        }
    }
}

fn snapshots() -> HashMap<u32, DeviceSnapshot> {
    control::fetch_all().into_iter().collect()
}

fn rows(now: &HashMap<u32, DeviceSnapshot>, before: &HashMap<u32, DeviceSnapshot>) -> Vec<Row> {
    let mut ids: Vec<&u32> = now.keys().collect();
    ids.sort();
    ids.into_iter()
        .map(|id| row(&now[id], before.get(id)))
        .collect()
}

pub fn run(a: TopArgs) -> ExitCode {
    let tty = std::io::stdout().is_terminal();
    let raw = if tty && std::io::stdin().is_terminal() {
        RawTerm::enter()
    } else {
        None
    };
    let interval = Duration::from_secs_f64(a.interval.max(0.1));
    let mut before = snapshots();
    let mut out = std::io::stdout();
    if !tty && writeln!(out, "TIME     {HEADER}").is_err() {
        return ExitCode::SUCCESS;
    }
    let mut n = 0u64;
    // A terminal gets its first screen at once (no rates yet), not after an interval.
    if tty {
        let rs = rows(&before, &HashMap::new());
        if out
            .write_all(screen(&rs, interval).as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
    }
    loop {
        let deadline = Instant::now() + interval;
        if raw.is_some() {
            if wait_keys(deadline) {
                break;
            }
        } else {
            std::thread::sleep(interval);
        }
        let now = snapshots();
        let rs = rows(&now, &before);
        before = now;
        let text = if tty {
            screen(&rs, interval)
        } else {
            let t = clock();
            if rs.is_empty() {
                format!("{t} no devices\n")
            } else {
                rs.iter().map(|r| format!("{t} {}\n", line(r))).collect()
            }
        };
        // A reader that went away ends us quietly (see out.rs).
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            break;
        }
        n += 1;
        if a.iterations.is_some_and(|max| n >= max) {
            break;
        }
    }
    drop(raw);
    ExitCode::SUCCESS
}

/// The whole screen: home, clear, title, header, a row per device (raw mode: CR LF).
fn screen(rs: &[Row], interval: Duration) -> String {
    let mut s = format!(
        "\x1b[H\x1b[2Jublkd top: {} devices, every {:.1} s (q quits)\n\n{HEADER}\n",
        rs.len(),
        interval.as_secs_f64()
    );
    for r in rs {
        s += &line(r);
        s.push('\n');
    }
    s.replace('\n', "\r\n")
}

/// Wall-clock time of day, UTC, HH:MM:SS.
fn clock() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02}", s / 3600 % 24, s / 60 % 60, s % 60)
}

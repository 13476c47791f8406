//! `ublkd metrics`: every device's counters and latency histograms for Prometheus, over a
//! minimal HTTP/1.1 server (GET /metrics, one request per connection). Loopback only unless
//! `--allow-remote`: the numbers say what the machine's disks do, and nothing authenticates.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::control;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Address to serve http://ADDR/metrics on.
    #[arg(long, default_value = "127.0.0.1:9433")]
    listen: String,
    /// Allow an address other than loopback (anyone who reaches it can read the metrics).
    #[arg(long)]
    allow_remote: bool,
}

/// The address to listen on, if allowed.
pub(crate) fn listen_addr(s: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| format!("'{s}' is not an address like 127.0.0.1:9433 or [::1]:9433"))?;
    if !a.ip().is_loopback() && !allow_remote {
        return Err(format!(
            "{a} is not a loopback address: refusing to serve metrics beyond this machine \
             without --allow-remote"
        ));
    }
    Ok(a)
}

/// Bind `addr` and answer scrapes with what `body` renders, forever, on the calling thread.
pub(crate) fn serve(addr: SocketAddr, body: impl Fn() -> String) -> Result<(), String> {
    let l = TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!("serving Prometheus metrics on http://{addr}/metrics");
    serve_on(l, body);
    Ok(())
}

/// Bind `addr` and answer scrapes with what `body` renders on a thread of its own, for as long
/// as the process lives (`export --metrics-listen`, `vhost --metrics-listen`).
pub(crate) fn spawn(
    addr: SocketAddr,
    body: impl Fn() -> String + Send + 'static,
) -> Result<(), String> {
    let l =
        TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve_on(l, body))
        .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    tracing::info!("serving Prometheus metrics on http://{addr}/metrics");
    Ok(())
}

/// Snapshots of a frontend that is not a ublk device (an NBD export, a vhost-user backend):
/// its per-thread counters under one `device` label. `depth` 0: no fixed queue depth.
pub(crate) fn frontend_snapshot(
    kind: &str,
    device: &str,
    path: &str,
    target: &str,
    counters: &[std::sync::Arc<stats::QueueCounters>],
    depth: u32,
) -> impl Fn() -> stats::DeviceSnapshot + Send + use<> {
    let (kind, device, path, target) = (
        kind.to_string(),
        device.to_string(),
        path.to_string(),
        target.to_string(),
    );
    let counters = counters.to_vec();
    let t0 = std::time::Instant::now();
    move || stats::DeviceSnapshot {
        device: device.clone(),
        kind: kind.clone(),
        path: path.clone(),
        target: target.clone(),
        recoveries: 0,
        uptime_ns: t0.elapsed().as_nanos() as u64,
        queues: counters
            .iter()
            .enumerate()
            .map(|(i, c)| c.snapshot(i as u32, depth))
            .collect(),
    }
}

/// Answer scrapes on `l` with what `body` renders, forever, on the calling thread.
pub(crate) fn serve_on(l: TcpListener, body: impl Fn() -> String) {
    for conn in l.incoming() {
        let Ok(c) = conn else { continue };
        if let Err(e) = answer(c, &body) {
            tracing::debug!("metrics client: {e}");
        }
    }
}

/// Read one request's head (bounded in size and time), answer it, close.
fn answer(mut c: TcpStream, body: &impl Fn() -> String) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 << 10 {
            return respond(
                &mut c,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    // Prometheus may add a query string; the path is what counts.
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let text = body();
            let text = if method == "HEAD" { "" } else { &text };
            respond(&mut c, "200 OK", stats::prom::CONTENT_TYPE, text)
        }
        ("GET" | "HEAD", _) => respond(&mut c, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => respond(
            &mut c,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
        ),
    }
}

fn respond(c: &mut TcpStream, status: &str, ctype: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body.as_bytes())?;
    c.flush()
}

pub fn run(a: MetricsArgs) -> ExitCode {
    let addr = match listen_addr(&a.listen, a.allow_remote) {
        Ok(a) => a,
        Err(e) => return crate::fail(e),
    };
    let body = || {
        let devs: Vec<_> = control::fetch_all().into_iter().map(|(_, s)| s).collect();
        stats::prom::render(&devs)
    };
    match serve(addr, body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_unless_allowed() {
        assert!(listen_addr("127.0.0.1:9433", false).is_ok());
        assert!(listen_addr("[::1]:9433", false).is_ok());
        let e = listen_addr("0.0.0.0:9433", false).unwrap_err();
        assert!(e.contains("--allow-remote"), "{e}");
        assert!(listen_addr("0.0.0.0:9433", true).is_ok());
        assert!(
            listen_addr("localhost", false)
                .unwrap_err()
                .contains("not an address")
        );
    }

    #[test]
    fn answers_get_metrics_and_refuses_the_rest() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        std::thread::spawn(move || serve(addr, || "x_total 1\n".to_string()));
        let ask = |req: &str| {
            for _ in 0..100 {
                if let Ok(mut c) = TcpStream::connect(addr) {
                    c.write_all(req.as_bytes()).unwrap();
                    let mut s = String::new();
                    c.read_to_string(&mut s).unwrap();
                    return s;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("no server on {addr}");
        };
        let ok = ask("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("Content-Length: 10\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nx_total 1\n"), "{ok}");
        assert!(ask("GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(ask("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    }
}

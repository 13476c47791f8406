//! Snapshots in the Prometheus text exposition format (version 0.0.4): one HELP and TYPE line
//! per metric family, then its samples; counters end in `_total`; latency is a histogram in
//! seconds with cumulative `le` buckets at powers of two of nanoseconds (the internal buckets,
//! 8 to each power of two, are summed into them: every edge is exact).

use std::fmt::Write;

use crate::counters::Op;
use crate::hist;
use crate::snapshot::{DeviceSnapshot, OpSnapshot};

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Every op of every queue of every device: `(labels, op)`.
fn per_op(devs: &[DeviceSnapshot]) -> Vec<(String, &OpSnapshot)> {
    let mut v = Vec::new();
    for d in devs {
        for q in &d.queues {
            for op in Op::ALL {
                if let Some(o) = q.op(op) {
                    let labels = format!(
                        "device=\"{}\",queue=\"{}\",op=\"{}\"",
                        esc(&d.device),
                        q.queue,
                        op.name()
                    );
                    v.push((labels, o));
                }
            }
        }
    }
    v
}

/// Seconds from nanoseconds, as Prometheus reads a float.
fn secs(ns: u64) -> String {
    format!("{}", ns as f64 / 1e9)
}

/// A counter family: name, help, and the op's value.
type CounterFamily = (&'static str, &'static str, fn(&OpSnapshot) -> u64);

/// The exposition of `devs`.
pub fn render(devs: &[DeviceSnapshot]) -> String {
    let mut out = String::new();
    let ops = per_op(devs);
    let counters: [CounterFamily; 3] = [
        (
            "ublkd_requests_total",
            "Requests served, by device, queue and operation.",
            |o| o.requests,
        ),
        (
            "ublkd_bytes_total",
            "Bytes of the requests that succeeded, by device, queue and operation.",
            |o| o.bytes,
        ),
        (
            "ublkd_errors_total",
            "Requests that failed, by device, queue and operation.",
            |o| o.errors,
        ),
    ];
    for (name, help, get) in counters {
        family(&mut out, name, "counter", help);
        for (labels, o) in &ops {
            let _ = writeln!(out, "{name}{{{labels}}} {}", get(o));
        }
    }
    let name = "ublkd_request_duration_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "Time from receiving a request to returning its result, by device, queue and operation.",
    );
    for (labels, o) in &ops {
        let dense = o.dense();
        let mut cum = 0u64;
        let mut next = 0usize;
        for (edge, last) in hist::power_of_two_edges() {
            while next <= last {
                cum += dense[next];
                next += 1;
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{}\"}} {cum}", secs(edge));
        }
        // +Inf is the count: every request, including those past the last edge.
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", o.requests);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", secs(o.latency_ns));
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", o.requests);
    }
    let gauges: [(&str, &str, bool); 2] = [
        (
            "ublkd_inflight_requests",
            "Requests being served, by device and queue.",
            true,
        ),
        (
            "ublkd_queue_depth",
            "Queue depth, by device and queue.",
            false,
        ),
    ];
    for (name, help, inflight) in gauges {
        family(&mut out, name, "gauge", help);
        for d in devs {
            for q in &d.queues {
                let v = if inflight { q.inflight } else { q.depth as u64 };
                let _ = writeln!(
                    out,
                    "{name}{{device=\"{}\",queue=\"{}\"}} {v}",
                    esc(&d.device),
                    q.queue
                );
            }
        }
    }
    let name = "ublkd_recoveries_total";
    family(
        &mut out,
        name,
        "counter",
        "Daemons that took the device over after the first (user recovery).",
    );
    for d in devs {
        let _ = writeln!(
            out,
            "{name}{{device=\"{}\",kind=\"{}\"}} {}",
            esc(&d.device),
            esc(&d.kind),
            d.recoveries
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::QueueCounters;
    use std::time::{Duration, Instant};

    fn device() -> DeviceSnapshot {
        let c = QueueCounters::new();
        // Two reads of 4 KiB, one slow write that failed, one request still in flight.
        for _ in 0..2 {
            let t = c.start();
            c.finish(Op::Read, 4096, false, t);
        }
        let t = c.start();
        c.finish(Op::Write, 4096, true, t - Duration::from_millis(3));
        let _ = c.start();
        DeviceSnapshot {
            device: "7\"x".into(),
            kind: "ublk".into(),
            path: "/dev/ublkb7".into(),
            target: "null".into(),
            recoveries: 2,
            uptime_ns: 0,
            queues: vec![c.snapshot(1, 64)],
        }
    }

    fn sample<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
    }

    #[test]
    fn families_samples_and_escaping() {
        let _ = Instant::now();
        let t = render(&[device()]);
        let l = r#"device="7\"x",queue="1",op="#;
        assert_eq!(
            sample(&t, &format!("ublkd_requests_total{{{l}\"read\"}}")),
            "2"
        );
        assert_eq!(
            sample(&t, &format!("ublkd_bytes_total{{{l}\"read\"}}")),
            "8192"
        );
        assert_eq!(
            sample(&t, &format!("ublkd_errors_total{{{l}\"write\"}}")),
            "1"
        );
        assert_eq!(
            sample(&t, &format!("ublkd_bytes_total{{{l}\"write\"}}")),
            "0"
        );
        assert_eq!(
            sample(&t, &format!("ublkd_requests_total{{{l}\"flush\"}}")),
            "0"
        );
        assert_eq!(
            sample(&t, r#"ublkd_inflight_requests{device="7\"x",queue="1"}"#),
            "1"
        );
        assert_eq!(
            sample(&t, r#"ublkd_queue_depth{device="7\"x",queue="1"}"#),
            "64"
        );
        assert_eq!(
            sample(&t, r#"ublkd_recoveries_total{device="7\"x",kind="ublk"}"#),
            "2"
        );
        // Each family is announced once, before its samples.
        for f in [
            "ublkd_requests_total",
            "ublkd_bytes_total",
            "ublkd_errors_total",
            "ublkd_request_duration_seconds",
            "ublkd_inflight_requests",
            "ublkd_queue_depth",
            "ublkd_recoveries_total",
        ] {
            assert_eq!(t.matches(&format!("# TYPE {f} ")).count(), 1, "{f}");
            let ty = t.find(&format!("# TYPE {f} ")).unwrap();
            let first = t.find(&format!("\n{f}")).unwrap();
            assert!(ty < first, "{f}");
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_in_the_count() {
        let t = render(&[device()]);
        let w = r#"ublkd_request_duration_seconds_bucket{device="7\"x",queue="1",op="write",le="#;
        let buckets: Vec<(f64, u64)> = t
            .lines()
            .filter(|l| l.starts_with(w))
            .map(|l| {
                let le = l[w.len() + 1..].split('"').next().unwrap();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, l.rsplit(' ').next().unwrap().parse().unwrap())
            })
            .collect();
        assert_eq!(buckets.len(), (hist::MAX_EXP - hist::MIN_EXP + 2) as usize);
        assert!(
            buckets
                .windows(2)
                .all(|p| p[0].0 < p[1].0 && p[0].1 <= p[1].1)
        );
        assert_eq!(buckets[0].0, 1.024e-6);
        // The 3 ms write: not under 2^21 ns (2.1 ms), under 2^22 ns (4.2 ms).
        let at = |le: f64| buckets.iter().find(|b| b.0 == le).unwrap().1;
        assert_eq!(at(2097152e-9), 0);
        assert_eq!(at(4194304e-9), 1);
        assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 1));
        let c = r#"ublkd_request_duration_seconds_count{device="7\"x",queue="1",op="write"}"#;
        assert_eq!(sample(&t, c), "1");
        let s = r#"ublkd_request_duration_seconds_sum{device="7\"x",queue="1",op="write"}"#;
        let sum: f64 = sample(&t, s).parse().unwrap();
        assert!((0.003..0.1).contains(&sum), "{sum}");
    }

    #[test]
    fn nothing_to_export_is_still_valid() {
        let t = render(&[]);
        assert!(t.lines().all(|l| l.starts_with('#')));
    }
}

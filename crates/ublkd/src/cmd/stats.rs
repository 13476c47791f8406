//! `ublkd stats`: each device's counters from its daemon's control socket: totals and latency
//! percentiles since the daemon started, and rates between two snapshots `--interval` apart.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::{Value, json};
use stats::{DeviceSnapshot, Op, OpSnapshot};

use crate::control;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this device (default: every device with a daemon).
    #[arg(short = 'n', long = "number")]
    id: Option<u32>,
    /// Print JSON: {"devices": [...]}, each with per-op totals, rates and percentiles, and the
    /// same per queue.
    #[arg(long)]
    json: bool,
    /// Seconds between the two snapshots the rates come from (0: one snapshot, no rates).
    #[arg(long, default_value_t = 1.0, value_parser = parse_secs)]
    interval: f64,
}

/// Seconds: a number from 0 to one day.
pub(crate) fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86400.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds from 0 to 86400")),
    }
}

/// Seconds between two snapshots of one daemon (None if not the same daemon, or no time).
pub(crate) fn elapsed(before: &DeviceSnapshot, now: &DeviceSnapshot) -> Option<f64> {
    (now.uptime_ns > before.uptime_ns).then(|| (now.uptime_ns - before.uptime_ns) as f64 / 1e9)
}

fn us(ns: Option<u64>) -> Value {
    ns.map_or(Value::Null, |n| json!(n as f64 / 1000.0))
}

/// One op's numbers: totals and percentiles of `now`, rates since `before` over `secs`.
fn op_json(now: &OpSnapshot, before: Option<&OpSnapshot>, secs: Option<f64>) -> Value {
    let (iops, mbs) = match (before, secs) {
        (Some(b), Some(s)) => {
            let d = now.since(b);
            (
                json!(d.requests as f64 / s),
                json!(d.bytes as f64 / s / 1e6),
            )
        }
        _ => (Value::Null, Value::Null),
    };
    let mean = (now.requests > 0).then(|| now.latency_ns / now.requests);
    json!({
        "requests": now.requests,
        "bytes": now.bytes,
        "errors": now.errors,
        "iops": iops,
        "mb_s": mbs,
        "mean_us": us(mean),
        "p50_us": us(now.quantile_ns(0.5)),
        "p99_us": us(now.quantile_ns(0.99)),
        "p999_us": us(now.quantile_ns(0.999)),
    })
}

fn ops_json(
    get: impl Fn(&DeviceSnapshot, Op) -> Option<OpSnapshot>,
    now: &DeviceSnapshot,
    before: Option<&DeviceSnapshot>,
) -> Value {
    let secs = before.and_then(|b| elapsed(b, now));
    let mut m = serde_json::Map::new();
    for op in Op::ALL {
        if let Some(n) = get(now, op) {
            let b = before.and_then(|b| get(b, op));
            m.insert(op.name().into(), op_json(&n, b.as_ref(), secs));
        }
    }
    Value::Object(m)
}

fn device_json(now: &DeviceSnapshot, before: Option<&DeviceSnapshot>) -> Value {
    let queues: Vec<Value> = now
        .queues
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let get = move |d: &DeviceSnapshot, op: Op| d.queues.get(i)?.op(op).cloned();
            json!({
                "queue": q.queue,
                "depth": q.depth,
                "inflight": q.inflight,
                "ops": ops_json(get, now, before),
            })
        })
        .collect();
    json!({
        "device": now.device,
        "kind": now.kind,
        "path": now.path,
        "target": now.target,
        "recoveries": now.recoveries,
        "interval_s": before.and_then(|b| elapsed(b, now)),
        "inflight": now.inflight(),
        "depth": now.depth(),
        "ops": ops_json(|d, op| Some(d.total(op)), now, before),
        "queues": queues,
    })
}

/// Bytes in binary units, one decimal.
fn human(n: u64) -> String {
    let mut v = n as f64;
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"] {
        if v < 1024.0 || unit == "TiB" {
            return if unit == "B" {
                format!("{n}B")
            } else {
                format!("{v:.1}{unit}")
            };
        }
        v /= 1024.0;
    }
    unreachable!()
}

fn fmt_opt(v: &Value, width: usize, prec: usize) -> String {
    match v.as_f64() {
        Some(f) => format!("{f:>width$.prec$}"),
        None => format!("{:>width$}", "-"),
    }
}

/// One table line of an op (`who` = "read", "q0 read"...).
fn op_line(who: &str, o: &Value) -> String {
    format!(
        "  {who:<18} {:>12} {:>10} {:>7} {} {} {} {} {}",
        o["requests"].as_u64().unwrap_or(0),
        human(o["bytes"].as_u64().unwrap_or(0)),
        o["errors"].as_u64().unwrap_or(0),
        fmt_opt(&o["iops"], 10, 0),
        fmt_opt(&o["mb_s"], 9, 1),
        fmt_opt(&o["p50_us"], 9, 1),
        fmt_opt(&o["p99_us"], 9, 1),
        fmt_opt(&o["p999_us"], 9, 1),
    )
}

fn device_text(d: &Value) -> String {
    let mut s = format!(
        "device {} ({}, {}): {} queues, {}/{} in flight, {} recoveries\n",
        d["device"].as_str().unwrap_or("?"),
        d["path"].as_str().unwrap_or("?"),
        d["target"].as_str().unwrap_or("?"),
        d["queues"].as_array().map_or(0, |q| q.len()),
        d["inflight"],
        d["depth"],
        d["recoveries"],
    );
    s += &format!(
        "  {:<18} {:>12} {:>10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
        "op", "requests", "bytes", "errors", "IOPS", "MB/s", "p50 us", "p99 us", "p99.9 us"
    );
    let busy = |o: &Value| o["requests"].as_u64().unwrap_or(0) > 0;
    let mut any = false;
    for op in Op::ALL {
        let o = &d["ops"][op.name()];
        if busy(o) {
            s += &op_line(op.name(), o);
            s.push('\n');
            any = true;
        }
    }
    if !any {
        s += "  (no requests yet)\n";
    }
    for q in d["queues"].as_array().into_iter().flatten() {
        for op in Op::ALL {
            let o = &q["ops"][op.name()];
            if busy(o) {
                s += &op_line(&format!("q{} {}", q["queue"], op.name()), o);
                s.push('\n');
            }
        }
    }
    s
}

pub fn run(a: StatsArgs) -> ExitCode {
    let first: Vec<(u32, DeviceSnapshot)> = match a.id {
        Some(id) => match control::fetch(id) {
            Ok(s) => vec![(id, s)],
            Err(e) => return crate::fail(e),
        },
        None => control::fetch_all(),
    };
    let mut pairs: Vec<(DeviceSnapshot, Option<DeviceSnapshot>)> = Vec::new();
    if a.interval > 0.0 && !first.is_empty() {
        std::thread::sleep(Duration::from_secs_f64(a.interval));
        for (id, before) in first {
            match control::fetch(id) {
                Ok(now) => pairs.push((now, Some(before))),
                // Gone meanwhile: only a device asked for by number is an error.
                Err(e) if a.id.is_some() => return crate::fail(e),
                Err(_) => {}
            }
        }
    } else {
        pairs = first.into_iter().map(|(_, s)| (s, None)).collect();
    }
    let devices: Vec<Value> = pairs
        .iter()
        .map(|(now, before)| device_json(now, before.as_ref()))
        .collect();
    if a.json {
        return crate::out::print(json!({ "devices": devices }));
    }
    if devices.is_empty() {
        return crate::out::print("no devices");
    }
    let text: Vec<String> = devices.iter().map(device_text).collect();
    crate::out::print(text.join("\n").trim_end())
}

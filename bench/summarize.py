#!/usr/bin/env python3
"""Summarize a scripts/bench.sh run: runs.csv -> summary.csv and table.md (same directory).

Medians over the repetitions; spread = (max - min) / median; ratio = ublkd median / kernel
baseline median in the same cell (null -> null_blk, file -> loop, mem -> null_blk). The issue-5
targets are checked per row (blank when the row has none).
"""
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

BASELINE = {"null": "null_blk", "file": "loop", "mem": "null_blk",
            "qcow2": "qemu-nbd-qcow2", "qcow2-empty": "qemu-nbd-qcow2-empty"}
BASE_GROUP = {"null": "null", "file": "file", "mem": "null", "qcow2": "qcow2",
              "qcow2-empty": "qcow2-empty"}
UBLK = {"null": "ublk-null", "file": "ublk-file", "mem": "ublk-mem", "qcow2": "ublk-qcow2",
        "qcow2-empty": "ublk-qcow2-empty"}
# Peer rows (bench.sh --peers): our device, the baseline build's and rublk's in both modes.
PEERS = {"null": ["ublk-null", "ublk-null@base", "rublk-null", "rublk-null-z"],
         "file": ["ublk-file", "ublk-file@base", "rublk-loop", "rublk-loop-z"]}
PEER_NAME = {"ublk-null": "ublkd", "ublk-null@base": "ublkd (baseline)", "rublk-null": "rublk",
             "rublk-null-z": "rublk -z", "ublk-file": "ublkd", "ublk-file@base": "ublkd (baseline)",
             "rublk-loop": "rublk", "rublk-loop-z": "rublk -z"}
DELAY_S = 0.005
# --no-schedstat: leave out the schedstat CPU column (runs before bench/guest.sh summed it with
# "%.0f" have it clamped at 2^31 ns by mawk's %d).
NO_SCHEDSTAT = "--no-schedstat" in sys.argv


def target_for(group, qd, jobs):
    """The issue-5 ratio target of a row, or None."""
    if group == "null" and qd == 64:
        return 0.45 if jobs == 1 else 0.65
    if group == "file":
        return 0.55 if (qd == 64 and jobs == 1) else 0.40
    if group.startswith("qcow2") and qd == 64:
        return 2.0  # issue 13: >= 2x qemu-nbd through the kernel's nbd client
    return None


def base_cols(b, kernel, ours):
    """Extra cells for a baseline build: its IOPS, its ratio to the kernel device, ours / its."""
    if b is None:
        return " - | - | - |"
    r = b["iops"] / kernel["iops"] if kernel and kernel["iops"] else None
    return f" {fmt(b['iops'])} | {fmt(r, 3)} | {fmt(ours['iops'] / b['iops'], 3)} |"


def fnum(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0, suffix=""):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}{suffix}"


def main(d):
    d = Path(d)
    rows = list(csv.DictReader(open(d / "runs.csv")))
    if not rows:
        sys.exit("summarize: runs.csv has no runs")
    kernel = rows[0]["kernel"]
    cells = defaultdict(list)
    for r in rows:
        cells[(r["group"], r["device"], r["rw"], int(r["iodepth"]), int(r["numjobs"]))].append(r)

    def stat(key):
        rs = cells.get(key, [])
        iops = [float(r["iops"]) for r in rs]
        if not iops:
            return None
        m = statistics.median(iops)
        return {
            "n": len(iops),
            "iops": m,
            "spread": (max(iops) - min(iops)) / m if m else None,
            "batch": med(fnum(r["batch"]) for r in rs),
            "rpe": med(fnum(r.get("req_per_enter")) for r in rs),
            "cpu": med(fnum(r["cpu_us_per_io"]) for r in rs),
            "cpu_stat": med(fnum(r.get("cpu_stat_us_per_io")) for r in rs),
            "lat": med(fnum(r["lat_us"]) for r in rs),
            "create": med(fnum(r["create_ms"]) for r in rs),
            "rss_idle": med(fnum(r["rss_idle_kib"]) for r in rs),
            "rss_load": max((fnum(r["rss_load_kib"]) or 0) for r in rs),
            "nr_requests": rs[0].get("nr_requests", ""),
            "sys": med(fnum(r.get("sys_cpu_us_per_io")) for r in rs),
        }

    out_rows = []
    md = [f"Kernel {kernel}; medians of {max(len(v) for v in cells.values())} run(s). "
          "Ratio = ublkd / kernel device in the same boot (mem: / null_blk). "
          "Spread = (max-min)/median. Batch = completions per io_uring_enter; req/enter = requests "
          "served per io_uring_enter (with batch I/O commands one completion carries many requests). "
          "CPU = daemon utime+stime per I/O from /proc/PID/stat (tick-sampled; biased upwards at "
          "qd1 under TCG)" + ("" if NO_SCHEDSTAT else "; in brackets: the exact run time from "
          "/proc/PID/task/*/schedstat") + ".", "",
          "| group | rw | qd | jobs | kernel dev | kernel IOPS | spread | ublkd IOPS | spread "
          "| ratio | target | batch | req/enter | CPU µs/IO | ublkd lat µs |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    # With a baseline build (bench.sh --baseline): its IOPS, ratio and our change against it.
    has_base = any(k[1].endswith("@base") for k in cells)
    if has_base:
        md[0] += (" Baseline = the --baseline build, measured right after ours in every cell; "
                  "change = ours / baseline.")
        md[2] = md[2] + " baseline IOPS | baseline ratio | change |"
        md[3] = md[3] + " --- | --- | --- |"
    for group in ("null", "file", "mem", "qcow2", "qcow2-empty"):
        for rw in ("randread", "randwrite"):
            for qd in (1, 64):
                for jobs in (1, 2):
                    base = stat((BASE_GROUP[group], BASELINE[group], rw, qd, jobs))
                    ours = stat((group, UBLK[group], rw, qd, jobs))
                    if ours is None:
                        continue
                    ratio = ours["iops"] / base["iops"] if base and base["iops"] else None
                    tgt = target_for(group, qd, jobs)
                    ok = "" if tgt is None or ratio is None else (
                        f"≥{tgt} ok" if ratio >= tgt else f"≥{tgt} **MISS**")
                    md.append(
                        f"| {group} | {rw} | {qd} | {jobs} | {BASELINE[group]} | "
                        f"{fmt(base and base['iops'])} | {fmt(base and base['spread'], 2)} | "
                        f"{fmt(ours['iops'])} | {fmt(ours['spread'], 2)} | {fmt(ratio, 3)} | {ok} | "
                        f"{fmt(ours['batch'], 1)} | {fmt(ours['rpe'], 1)} | {fmt(ours['cpu_stat'], 1)}"
                        f"{'' if NO_SCHEDSTAT else ' (' + fmt(ours['cpu'], 1) + ')'} | "
                        f"{fmt(ours['lat'], 0)} |"
                        + (base_cols(stat((group, UBLK[group] + "@base", rw, qd, jobs)), base, ours)
                           if has_base else ""))
                    out_rows.append({
                        "kind": "ratio", "group": group, "device": UBLK[group], "rw": rw,
                        "iodepth": qd, "numjobs": jobs, "runs": ours["n"],
                        "median_iops": round(ours["iops"], 1),
                        "spread": round(ours["spread"], 4) if ours["spread"] is not None else "",
                        "baseline": BASELINE[group],
                        "baseline_iops": round(base["iops"], 1) if base else "",
                        "baseline_spread": round(base["spread"], 4) if base and base["spread"] is not None else "",
                        "ratio": round(ratio, 4) if ratio is not None else "",
                        "target": tgt if tgt is not None else "",
                        "batch": ours["batch"] if ours["batch"] is not None else "",
                        "req_per_enter": ours["rpe"] if ours["rpe"] is not None else "",
                        "cpu_us_per_io": ours["cpu_stat"] if ours["cpu_stat"] is not None else "",
                        "cpu_schedstat_us_per_io": "" if NO_SCHEDSTAT or ours["cpu"] is None else ours["cpu"],
                        "ideal_iops": "",
                        "ideal_eff_iops": "",
                    })

    # Peer ublk servers (bench.sh --peers): every server of a group side by side, each with its
    # ratio to the kernel device, its daemon's CPU per I/O and the whole system's.
    peer_rows = []
    for group, kdev in (("null", "null_blk"), ("file", "loop")):
        variants = sorted({k[1] for k in cells if k[0] == group and "~" in k[1]})
        devs = [dv for dv in PEERS[group] + variants
                if any(k[0] == group and k[1] == dv for k in cells)]
        if not any(dv.startswith("rublk") or "~" in dv for dv in devs):
            continue
        if not peer_rows:
            peer_rows += ["", "Side by side with the peer ublk server (bench.sh --peers) and lever variants of ours (bench.sh --variant, 'ublkd NAME'). Each cell: "
                          "ratio to the kernel device (its daemon's CPU µs per I/O from schedstat; "
                          "the whole system's busy CPU µs per I/O from /proc/stat, fio's own start and exit included, "
                          "which inflates short runs alike for every device). The best ratio "
                          "of a row is in bold. kIOPS per busy CPU-second = 1000 / the second number.",
                          ""]
        peer_rows += ([""] if peer_rows[-1] else []) + ["| " + group + " | rw | qd | jobs | " + kdev + " IOPS (sys µs/IO) | "
                      + " | ".join(PEER_NAME.get(dv, "ublkd " + dv.split("~")[-1]) for dv in devs) + " |",
                      "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in devs) + " |"]
        for rw in ("randread", "randwrite"):
            for qd in (1, 64):
                for jobs in (1, 2):
                    k = stat((group, kdev, rw, qd, jobs))
                    ss = {dv: stat((group, dv, rw, qd, jobs)) for dv in devs}
                    if not k or not any(ss.values()):
                        continue
                    best = max((v["iops"] for v in ss.values() if v), default=None)
                    cellv = []
                    for dv in devs:
                        v = ss[dv]
                        if not v:
                            cellv.append("-")
                            continue
                        r = v["iops"] / k["iops"] if k["iops"] else None
                        txt = fmt(r, 2)
                        if v["iops"] == best:
                            txt = f"**{txt}**"
                        cellv.append(f"{txt} ({fmt(v['cpu'], 1)}; {fmt(v['sys'], 1)})")
                        out_rows.append({
                            "kind": "peer", "group": group, "device": dv, "rw": rw,
                            "iodepth": qd, "numjobs": jobs, "runs": v["n"],
                            "median_iops": round(v["iops"], 1),
                            "spread": round(v["spread"], 4) if v["spread"] is not None else "",
                            "baseline": kdev, "baseline_iops": round(k["iops"], 1),
                            "baseline_spread": "", "ratio": round(r, 4) if r is not None else "",
                            "target": "", "batch": "", "req_per_enter": "",
                            "cpu_us_per_io": v["cpu_stat"] if v["cpu_stat"] is not None else "",
                            "cpu_schedstat_us_per_io": v["cpu"] if v["cpu"] is not None else "",
                            "sys_cpu_us_per_io": v["sys"] if v["sys"] is not None else "",
                            "ideal_iops": "", "ideal_eff_iops": "",
                        })
                    peer_rows.append(f"| {group} | {rw} | {qd} | {jobs} | {fmt(k['iops'])} "
                                     f"({fmt(k['sys'], 1)}) | " + " | ".join(cellv) + " |")
    md += peer_rows

    # The qcow2 format's own cost: the qcow2 device against the file target on a raw copy of the
    # same data, same boot (issue 13: >= 0.8x on allocated randread).
    if any(k[1] == "ublk-file-raw" for k in cells):
        md += ["", "| qcow2 cost | rw | qd | jobs | file (raw) IOPS | qcow2 IOPS | ratio | target "
               "| qemu-nbd CPU µs/IO | ublkd qcow2 CPU µs/IO |",
               "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for rw in ("randread", "randwrite"):
            for qd in (1, 64):
                for jobs in (1, 2):
                    raw = stat(("qcow2", "ublk-file-raw", rw, qd, jobs))
                    q = stat(("qcow2", "ublk-qcow2", rw, qd, jobs))
                    qn = stat(("qcow2", "qemu-nbd-qcow2", rw, qd, jobs))
                    if not raw or not q:
                        continue
                    r = q["iops"] / raw["iops"] if raw["iops"] else None
                    tgt = "≥0.8 " + ("ok" if r and r >= 0.8 else "**MISS**") if rw == "randread" else ""
                    md.append(f"| qcow2/raw | {rw} | {qd} | {jobs} | {fmt(raw['iops'])} | "
                              f"{fmt(q['iops'])} | {fmt(r, 3)} | {tgt} | "
                              f"{fmt(qn and qn['cpu_stat'], 1)} | {fmt(q['cpu_stat'], 1)} |")

    # Device lifecycle: creation time and RSS, per ublkd target over all its runs.
    md += ["", "| ublkd device | runs | creation ms (median / max) | idle RSS MiB (median) "
           "| RSS under qd64 MiB (max) |", "| --- | --- | --- | --- | --- |"]
    for dev in ("ublk-null", "ublk-file", "ublk-mem", "ublk-null-delay5ms"):
        rs = [r for r in rows if r["device"] == dev]
        if not rs:
            continue
        cr = [fnum(r["create_ms"]) for r in rs if fnum(r["create_ms"]) is not None]
        idle = med(fnum(r["rss_idle_kib"]) for r in rs)
        load = [fnum(r["rss_load_kib"]) or 0 for r in rs if int(r["iodepth"]) >= 64]
        md.append(f"| {dev} | {len(rs)} | {fmt(med(cr))} / {fmt(max(cr) if cr else None)} | "
                  f"{fmt(idle and idle / 1024, 1)} | {fmt(max(load) / 1024 if load else None, 1)} |")

    # Queue-depth sweep.
    qrows = sorted({k[3] for k in cells if k[0] == "qd"})
    if qrows:
        md += ["", f"Queue-depth sweep: ublkd -t null --filter delay:ms=5, -q 1 -d 4096, randread, "
               "1 job. Ideal = iodepth / 5 ms.", "",
               "| iodepth | IOPS | ideal | % of ideal | mean lat ms | batch | CPU µs/IO | RSS MiB |",
               "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        s1 = stat(("qd", "ublk-null-delay5ms", "randread", qrows[0], 1))
        lat1 = s1["lat"] / 1e6 if s1 and s1["lat"] else None  # seconds, measured at the lowest depth
        md.insert(-3, f"Effective latency at iodepth {qrows[0]}: {fmt(lat1 and lat1 * 1000, 2)} ms "
                      "(the 5 ms timer plus the data path and TCG's timer slack); "
                      "'ideal @ measured' = iodepth / that latency.")
        md[-2] = "| iodepth | IOPS | ideal (5 ms) | % of ideal | ideal @ measured | % of it | mean lat ms | batch | CPU µs/IO | RSS MiB |"
        md[-1] = "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        for qd in qrows:
            s = stat(("qd", "ublk-null-delay5ms", "randread", qd, 1))
            ideal = qd / DELAY_S
            eff = qd / lat1 if lat1 else None
            md.append(f"| {qd} | {fmt(s['iops'])} | {fmt(ideal)} | {fmt(100 * s['iops'] / ideal, 1)} | "
                      f"{fmt(eff)} | {fmt(eff and 100 * s['iops'] / eff, 1)} | "
                      f"{fmt(s['lat'] and s['lat'] / 1000, 2)} | {fmt(s['batch'], 1)} | "
                      f"{fmt(s['cpu_stat'], 1)} | {fmt(s['rss_load'] / 1024, 1)} |")
            out_rows.append({
                "kind": "qd", "group": "qd", "device": "ublk-null-delay5ms", "rw": "randread",
                "iodepth": qd, "numjobs": 1, "runs": s["n"], "median_iops": round(s["iops"], 1),
                "spread": round(s["spread"], 4) if s["spread"] is not None else "",
                "baseline": "ideal", "baseline_iops": "", "baseline_spread": "", "ratio": "",
                "target": "", "batch": s["batch"] if s["batch"] is not None else "",
                "cpu_us_per_io": s["cpu_stat"] if s["cpu_stat"] is not None else "",
                "cpu_schedstat_us_per_io": "" if NO_SCHEDSTAT or s["cpu"] is None else s["cpu"],
                "ideal_iops": ideal,
                "ideal_eff_iops": round(eff, 1) if eff else "",
            })

    with open(d / "summary.csv", "w", newline="") as f:
        # Peer rows add the whole system's CPU per I/O; other rows leave it blank.
        fields = list(dict.fromkeys(k for r in out_rows for k in r))
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(out_rows)
    notes = (d / "notes.txt").read_text() if (d / "notes.txt").exists() else ""
    (d / "table.md").write_text("\n".join(md) + "\n\n```\n" + notes + "```\n")


if __name__ == "__main__":
    main([a for a in sys.argv[1:] if not a.startswith("--")][0])

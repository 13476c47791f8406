#!/usr/bin/env bash
# NBD server benchmark: `ublkd export` vs qemu-nbd vs nbdkit, driven by fio's nbd engine.
#
#   scripts/bench-nbd.sh [--quick] [--runtime S] [--reps N] [--out DIR] [--ublkd PATH]
#                        [--backends "file mem qcow2"] [--servers "ublkd qemu-nbd nbdkit qsd"]
#                        [--file-cache buffered|direct] [--ublkd-args "..."] [--port-base P]
#                        [--pin split|none] [--workloads REGEX] [--no-load-wait] [--keep]
#                        [--baseline PATH]
#
# Serves the same 1 GiB file (random data, on the disk under /var/tmp) and the same kind of
# 1 GiB memory disk with each server, all on 127.0.0.1, and runs 4k randread/randwrite at
# iodepth 1 and 64 with 1 and 2 jobs (one NBD connection per job), time-based, JSON output,
# repeated --reps times with the servers interleaved per row (A,B,C,A,B,C,...). Prints a Markdown
# table of median IOPS and the ratio of ublkd to the best peer and to qemu-nbd, and writes it with
# the raw fio JSON, a per-run CSV and a summary CSV to the results directory
# (default /tmp/bench-nbd-<date>). See docs/bench-nbd.md for the method and the numbers.
#
# --baseline PATH adds server `ublkd-base`: another ublkd binary (the tree before a change)
# served and measured like `ublkd`, interleaved in every row; the table gets "ublkd / base".
#
# Backends:
#   file  /var/tmp/bench-nbd/disk.img. Default --file-cache buffered: every server goes through
#         the page cache (ublkd --buffered, qemu-nbd --cache=writeback, nbdkit file default), so
#         the rows compare the servers, not the disk. --file-cache direct: ublkd O_DIRECT (its
#         default), qemu-nbd --cache=none; nbdkit 1.32's file plugin has no O_DIRECT, it gets
#         cache=none (page cache plus eviction), which is not the same thing.
#   mem   ublkd -t mem --size 1G; nbdkit memory 1G; qemu-nbd has no memory backend, so it serves
#         a 1 GiB file on /dev/shm (tmpfs) with --cache=writeback. Each memory disk is first
#         filled by a sequential 1 MiB write through NBD so reads hit allocated memory.
#   qcow2 (not by default) the random data as a fully allocated qcow2 image (qemu-img convert), a
#         copy per server (two servers must never write one image): ublkd -t qcow2, qemu-nbd
#         -f qcow2, and qemu-storage-daemon's NBD export (server `qsd`: file node with io_uring,
#         qcow2 node on it), with the --file-cache mode of the file backend. nbdkit has no
#         writable qcow2 and is left out of this backend.
#
# CPU placement: with --pin split (default) the servers run on the upper half of the CPUs and
# fio on the lower half (on 2 CPUs: server on CPU 1, fio on CPU 0), the same for every server, so
# fio does not compete with the server and the scheduler's placement does not decide the result:
# unpinned, a qd1 ping-pong runs ~8x faster when client and server happen to share a CPU (a
# context switch) than when they do not (a cross-CPU wakeup of an idle vCPU), and which one
# happens varies from run to run. --pin none leaves placement to the scheduler.
#
# The machine may have other jobs (VMs): before measuring we wait (up to 10 min) for the 1-minute
# load average to drop below 1.0, and record it at start and end. fio runs on the same cores as
# the server, identically for every server. Everything started here is killed on exit.
set -euo pipefail

RUNTIME=10
REPS=3
QUICK=0
OUT=""
HERE=$(cd "$(dirname "$0")/.." && pwd)
UBLKD=${UBLKD:-/tmp/tgt-bench/release/ublkd}
UBLKD_BASE=""
BACKENDS="file mem"
SERVERS="ublkd qemu-nbd nbdkit"
FILE_CACHE=buffered
UBLKD_ARGS=""
PORT_BASE=10910
LOAD_WAIT=1
PIN=split
WL_FILTER=.
KEEP=0
SIZE_MIB=1024
WORKDIR=/var/tmp/bench-nbd
SHMFILE=/dev/shm/bench-nbd-mem.img

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; RUNTIME=2; REPS=1 ;;
        --runtime) RUNTIME=$2; shift ;;
        --reps) REPS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --ublkd) UBLKD=$2; shift ;;
        --backends) BACKENDS=$2; shift ;;
        --servers) SERVERS=$2; shift ;;
        --file-cache) FILE_CACHE=$2; shift ;;
        --ublkd-args) UBLKD_ARGS=$2; shift ;;
        --port-base) PORT_BASE=$2; shift ;;
        --pin) PIN=$2; shift ;;
        --workloads) WL_FILTER=$2; shift ;;
        --no-load-wait) LOAD_WAIT=0 ;;
        --keep) KEEP=1 ;;
        --baseline) UBLKD_BASE=$2; SERVERS="$SERVERS ublkd-base"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-nbd: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
case "$FILE_CACHE" in buffered|direct) ;; *) echo "bench-nbd: --file-cache buffered|direct" >&2; exit 2 ;; esac
case "$PIN" in split|none) ;; *) echo "bench-nbd: --pin split|none" >&2; exit 2 ;; esac
NCPU=$(nproc)
SRV_CPUS=""; FIO_CPUS=""
if [ "$PIN" = split ] && [ "$NCPU" -ge 2 ]; then
    FIO_CPUS="0-$((NCPU / 2 - 1))"; SRV_CPUS="$((NCPU / 2))-$((NCPU - 1))"
fi
# A prefix, not a function: `cmd &` must leave the server's own pid in $! (taskset execs).
SRV=(taskset -c "${SRV_CPUS:-0-$((NCPU - 1))}")
[ -n "$OUT" ] || OUT=/tmp/bench-nbd-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT/json" "$WORKDIR"

need() { command -v "$1" >/dev/null || { echo "bench-nbd: $1 not found" >&2; exit 1; }; }
need fio; need python3
for s in $SERVERS; do
    case "$s" in
        ublkd-base) [ -x "$UBLKD_BASE" ] || { echo "bench-nbd: no baseline binary at $UBLKD_BASE" >&2; exit 1; } ;;
        ublkd) [ -x "$UBLKD" ] || { echo "bench-nbd: $UBLKD not built (CARGO_TARGET_DIR=/tmp/tgt-bench cargo build --release -p ublkd)" >&2; exit 1; } ;;
        qemu-nbd|nbdkit) need "$s" ;;
        qsd) need qemu-storage-daemon ;;
        *) echo "bench-nbd: unknown server $s" >&2; exit 2 ;;
    esac
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "bench-nbd: this fio has no nbd engine" >&2; exit 1; }

# --- cleanup -----------------------------------------------------------------------------------
PIDS=()
# Stop every server and remove the per-backend copies (between backends, and at exit).
stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
    done
    PIDS=()
    rm -f "$SHMFILE" "$WORKDIR"/disk-*.qcow2
}
# At exit also the random data file (a second backend still needs it: stop_servers must not).
cleanup() {
    stop_all
    [ "$KEEP" = 1 ] || rm -f "$WORKDIR/disk.img"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

log() { echo "[bench-nbd $(date +%T)] $*" >&2; }
loadavg() { cut -d' ' -f1 /proc/loadavg; }

# --- machine notes -----------------------------------------------------------------------------
{
    echo "date: $(date -Is)"
    echo "kernel: $(uname -r)"
    echo "cpus: $(nproc) ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'))"
    echo "mem: $(free -g | awk '/Mem:/{print $2 " GiB"}')"
    echo "fio: $(fio --version)"
    echo "qemu-nbd: $(qemu-nbd --version 2>/dev/null | head -1)"
    echo "nbdkit: $(nbdkit --version 2>/dev/null | head -1)"
    echo "qemu-storage-daemon: $(qemu-storage-daemon --version 2>/dev/null | head -1)"
    echo "ublkd: $UBLKD ($(cd "$HERE" && git rev-parse --short HEAD 2>/dev/null)$(cd "$HERE" && git diff --quiet -- crates 2>/dev/null || echo '+dirty'))"
    echo "file: $WORKDIR/disk.img on $(findmnt -no FSTYPE,SOURCE -T "$WORKDIR" | tr -s ' '), cache mode $FILE_CACHE"
    echo "cpu placement: ${PIN} (servers on CPUs ${SRV_CPUS:-any}, fio on CPUs ${FIO_CPUS:-any})"
    echo "runtime per run: ${RUNTIME}s, reps: $REPS, ublkd extra args: '${UBLKD_ARGS}'"
} > "$OUT/machine.txt"

# --- wait for a quiet machine -----------------------------------------------------------------
if [ "$LOAD_WAIT" = 1 ]; then
    waited=0
    while awk -v l="$(loadavg)" 'BEGIN{exit !(l >= 1.0)}'; do
        if [ $waited -ge 600 ]; then
            log "WARNING: 1-minute load average still $(loadavg) after 10 minutes; measuring anyway"
            echo "warning: load average did not drop below 1.0 within 10 minutes" >> "$OUT/machine.txt"
            break
        fi
        [ $((waited % 30)) = 0 ] && log "waiting for load average < 1.0 (now $(loadavg))"
        sleep 5; waited=$((waited + 5))
    done
fi
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at start: $LOAD_START" >> "$OUT/machine.txt"
log "load average at start: $LOAD_START; results in $OUT"

# --- data --------------------------------------------------------------------------------------
if [[ " $BACKENDS " == *" file "* || " $BACKENDS " == *" qcow2 "* ]]; then
    if [ ! -f "$WORKDIR/disk.img" ] || [ "$(stat -c %s "$WORKDIR/disk.img")" != $((SIZE_MIB << 20)) ]; then
        log "writing ${SIZE_MIB} MiB of random data to $WORKDIR/disk.img"
        head -c "$((SIZE_MIB << 20))" /dev/urandom > "$WORKDIR/disk.img.tmp"
        mv "$WORKDIR/disk.img.tmp" "$WORKDIR/disk.img"
    fi
    sync "$WORKDIR/disk.img"
fi

# --- servers -----------------------------------------------------------------------------------
NAME=bench
declare -A PORT PID
port_of() { # server -> port
    case "$1" in ublkd) echo $PORT_BASE ;; qemu-nbd) echo $((PORT_BASE + 1)) ;; nbdkit) echo $((PORT_BASE + 2)) ;; qsd) echo $((PORT_BASE + 3)) ;; ublkd-base) echo $((PORT_BASE + 4)) ;; esac
}

wait_port() { # pid port
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || return 1
        if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

start_server() { # server backend
    local s=$1 b=$2 port; port=$(port_of "$s")
    local errlog="$OUT/$s-$b.log" bin=$UBLKD
    [ "$s" = ublkd-base ] && bin=$UBLKD_BASE
    case "$s/$b" in
        ublkd/file|ublkd-base/file)
            local buf=""; [ "$FILE_CACHE" = buffered ] && buf=--buffered
            # shellcheck disable=SC2086
            "${SRV[@]}" "$bin" export -t file --path "$WORKDIR/disk.img" $buf --name $NAME \
                --listen 127.0.0.1:$port $UBLKD_ARGS 2>"$errlog" & ;;
        ublkd/mem|ublkd-base/mem)
            # shellcheck disable=SC2086
            "${SRV[@]}" "$bin" export -t mem --size ${SIZE_MIB}M --name $NAME \
                --listen 127.0.0.1:$port $UBLKD_ARGS 2>"$errlog" & ;;
        qemu-nbd/file)
            local c=writeback; [ "$FILE_CACHE" = direct ] && c=none
            "${SRV[@]}" qemu-nbd -f raw -x $NAME -b 127.0.0.1 -p $port -t -e 16 --cache=$c --aio=io_uring \
                "$WORKDIR/disk.img" 2>"$errlog" & ;;
        qemu-nbd/mem)
            rm -f "$SHMFILE"; truncate -s ${SIZE_MIB}M "$SHMFILE"
            "${SRV[@]}" qemu-nbd -f raw -x $NAME -b 127.0.0.1 -p $port -t -e 16 --cache=writeback --aio=io_uring \
                "$SHMFILE" 2>"$errlog" & ;;
        nbdkit/file)
            local c=default; [ "$FILE_CACHE" = direct ] && c=none
            "${SRV[@]}" nbdkit -f -i 127.0.0.1 -p $port -e $NAME file "$WORKDIR/disk.img" cache=$c 2>"$errlog" & ;;
        nbdkit/mem)
            "${SRV[@]}" nbdkit -f -i 127.0.0.1 -p $port -e $NAME memory ${SIZE_MIB}M 2>"$errlog" & ;;
        nbdkit/qcow2) return 0 ;;
        ublkd/qcow2|ublkd-base/qcow2)
            local buf=""; [ "$FILE_CACHE" = buffered ] && buf=--buffered
            qcow2_copy "$s"
            # shellcheck disable=SC2086
            "${SRV[@]}" "$bin" export -t qcow2 --path "$WORKDIR/disk-$s.qcow2" $buf --name $NAME \
                --listen 127.0.0.1:$port $UBLKD_ARGS 2>"$errlog" & ;;
        qemu-nbd/qcow2)
            local c=writeback; [ "$FILE_CACHE" = direct ] && c=none
            qcow2_copy "$s"
            "${SRV[@]}" qemu-nbd -f qcow2 -x $NAME -b 127.0.0.1 -p $port -t -e 16 --cache=$c --aio=io_uring \
                "$WORKDIR/disk-$s.qcow2" 2>"$errlog" & ;;
        qsd/*)
            local f=$WORKDIR/disk.img fmt=raw direct=off
            [ "$FILE_CACHE" = direct ] && direct=on
            case $b in
                mem) rm -f "$SHMFILE"; truncate -s ${SIZE_MIB}M "$SHMFILE"; f=$SHMFILE; direct=off ;;
                qcow2) qcow2_copy "$s"; f=$WORKDIR/disk-$s.qcow2; fmt=qcow2 ;;
            esac
            "${SRV[@]}" qemu-storage-daemon \
                --blockdev "driver=file,node-name=file0,filename=$f,cache.direct=$direct,aio=io_uring" \
                --blockdev "driver=$fmt,node-name=disk0,file=file0" \
                --nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$port" \
                --export "type=nbd,id=exp0,node-name=disk0,name=$NAME,writable=on" 2>"$errlog" & ;;
    esac
    local pid=$!
    PIDS+=("$pid"); PID[$s]=$pid; PORT[$s]=$port
    wait_port "$pid" "$port" || { log "$s ($b) did not start:"; cat "$errlog" >&2; exit 1; }
}

# A fully allocated qcow2 image of the random data, one per server.
qcow2_copy() { # server
    [ -f "$WORKDIR/disk-base.qcow2" ] || qemu-img convert -O qcow2 "$WORKDIR/disk.img" "$WORKDIR/disk-base.qcow2"
    cp "$WORKDIR/disk-base.qcow2" "$WORKDIR/disk-$1.qcow2"
}

stop_servers() {
    stop_all
}

cpu_ticks() { # pid -> utime+stime in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# --- runs --------------------------------------------------------------------------------------
WORKLOADS=()
for rw in randread randwrite; do for qd in 1 64; do for nj in 1 2; do
    [[ "$rw-qd$qd-j$nj" =~ $WL_FILTER ]] && WORKLOADS+=("$rw-qd$qd-j$nj")
done; done; done

CSV="$OUT/runs.csv"
echo "backend,workload,server,rep,iops,lat_mean_us,server_cpu_s,fio_usr_pct,fio_sys_pct,json" > "$CSV"
CLK=$(getconf CLK_TCK)

run_fio() { # server backend workload rep
    local s=$1 b=$2 w=$3 r=$4
    local rw=${w%%-*} rest=${w#*-}; local qd=${rest%%-*}; qd=${qd#qd}; local nj=${w##*-j}
    local json="json/$b-$s-$w-r$r.json"
    local t0; t0=$(cpu_ticks "${PID[$s]}")
    timeout $((RUNTIME + 60)) taskset -c "${FIO_CPUS:-0-$((NCPU - 1))}" fio --name="$w" --ioengine=nbd --uri="nbd://127.0.0.1:${PORT[$s]}/$NAME" \
        --rw="$rw" --bs=4k --iodepth="$qd" --numjobs="$nj" --time_based --runtime="$RUNTIME" \
        --group_reporting --randrepeat=0 --norandommap --output-format=json \
        --output="$OUT/$json" >/dev/null 2>"$OUT/fio-err.log" \
        || { log "fio failed for $s $b $w:"; cat "$OUT/fio-err.log" >&2; exit 1; }
    local t1; t1=$(cpu_ticks "${PID[$s]}")
    python3 - "$OUT/$json" "$b" "$w" "$s" "$r" "$(( t1 - t0 ))" "$CLK" "$json" >> "$CSV" <<'EOF'
import json, sys
path, b, w, s, r, ticks, clk, rel = sys.argv[1:]
j = json.load(open(path))
jb = j["jobs"][0]
d = jb["read"] if w.startswith("randread") else jb["write"]
print(f'{b},{w},{s},{r},{d["iops"]:.0f},{d["lat_ns"]["mean"]/1000:.1f},{int(ticks)/int(clk):.2f},'
      f'{jb["usr_cpu"]:.1f},{jb["sys_cpu"]:.1f},{rel}')
EOF
    log "$b $w $s rep $r: $(tail -1 "$CSV" | cut -d, -f5) IOPS"
}

prefill() { # server
    timeout 300 taskset -c "${FIO_CPUS:-0-$((NCPU - 1))}" fio --name=prefill --ioengine=nbd --uri="nbd://127.0.0.1:${PORT[$1]}/$NAME" \
        --rw=write --bs=1M --iodepth=8 --size=${SIZE_MIB}M --output=/dev/null 2>"$OUT/fio-err.log" \
        || { log "prefill failed on $1:"; cat "$OUT/fio-err.log" >&2; exit 1; }
}

for b in $BACKENDS; do
    SERVERS_B=$SERVERS
    [ "$b" = qcow2 ] && SERVERS_B=$(echo "$SERVERS" | tr ' ' '\n' | grep -vx nbdkit | tr '\n' ' ')
    for s in $SERVERS_B; do start_server "$s" "$b"; done
    if [ "$b" = mem ]; then
        for s in $SERVERS; do log "prefilling $s memory disk"; prefill "$s"; done
    fi
    for r in $(seq "$REPS"); do
        for w in "${WORKLOADS[@]}"; do
            for s in $SERVERS_B; do run_fio "$s" "$b" "$w" "$r"; done
        done
    done
    stop_servers
done

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average at end: $LOAD_END" >> "$OUT/machine.txt"

# --- summary -----------------------------------------------------------------------------------
python3 - "$OUT" "$SERVERS" > "$OUT/table.md" <<'EOF'
import csv, statistics, sys
out, servers = sys.argv[1], sys.argv[2].split()
rows = list(csv.DictReader(open(f"{out}/runs.csv")))
keys = []
for r in rows:
    k = (r["backend"], r["workload"])
    if k not in keys:
        keys.append(k)
def med(b, w, s, col):
    v = [float(r[col]) for r in rows if (r["backend"], r["workload"], r["server"]) == (b, w, s)]
    return statistics.median(v) if v else None
machine = open(f"{out}/machine.txt").read().strip().splitlines()
print("Median IOPS over repetitions (4k, fio nbd engine, one connection per job).\n")
hdr = ["backend", "workload"] + servers
peers = [s for s in servers if not s.startswith("ublkd")]
has_u = "ublkd" in servers
if has_u and peers:
    hdr += ["ublkd / best peer"]
if has_u and "qemu-nbd" in servers:
    hdr += ["ublkd / qemu-nbd"]
if has_u and peers:
    hdr += ["target"]
has_base = has_u and "ublkd-base" in servers
if has_base:
    hdr += ["ublkd / base"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
summary = []
for b, w in keys:
    iops = {s: med(b, w, s, "iops") for s in servers}
    present = [s for s in servers if iops[s] is not None]
    line = [b, w]
    for s in servers:
        line.append(f"{iops[s]:,.0f}" if iops[s] is not None else "-")
    rec = {"backend": b, "workload": w,
           **{f"{s}_iops": (f"{iops[s]:.0f}" if iops[s] is not None else "") for s in servers}}
    if has_u and peers:
        best = max(iops[p] for p in peers if iops[p] is not None)
        rb = iops["ublkd"] / best
        line.append(f"{rb:.2f}")
        rec["ublkd_over_best_peer"] = f"{rb:.3f}"
    if has_u and "qemu-nbd" in servers:
        rq = iops["ublkd"] / iops["qemu-nbd"]
        line.append(f"{rq:.2f}")
        rec["ublkd_over_qemu_nbd"] = f"{rq:.3f}"
    if has_u and peers:
        ok = True
        if "qemu-nbd" in servers and iops["ublkd"] < 1.2 * iops["qemu-nbd"]:
            ok = False
        if "nbdkit" in present and iops["ublkd"] < iops["nbdkit"]:
            ok = False
        if "qsd" in present and iops["ublkd"] < 1.2 * iops["qsd"]:
            ok = False
        line.append("met" if ok else "**missed**")
        rec["target_met"] = "yes" if ok else "no"
    if has_base:
        rbase = iops["ublkd"] / iops["ublkd-base"]
        line.append(f"{rbase:.2f}")
        rec["ublkd_over_base"] = f"{rbase:.3f}"
    summary.append(rec)
    print("| " + " | ".join(line) + " |")
print()
print("Target: ublkd >= 1.2x qemu-nbd, >= nbdkit, and >= 1.2x qemu-storage-daemon (qsd) on every row where they run.\n")
print("Server CPU per request (µs, median; CPU time of the server process over the run / requests served):\n")
print("| backend | workload | " + " | ".join(servers) + " |")
print("|---|---|" + "---|" * len(servers))
rt = float(machine[[i for i, l in enumerate(machine) if l.startswith("runtime per run")][0]].split(":")[1].split("s,")[0])
for rec in summary:
    b, w = rec["backend"], rec["workload"]
    vals = []
    for s in servers:
        v = [float(r["server_cpu_s"]) * 1e6 / (float(r["iops"]) * rt) for r in rows
             if (r["backend"], r["workload"], r["server"]) == (b, w, s) and float(r["iops"]) > 0]
        vals.append(f"{statistics.median(v):.1f}" if v else "-")
    print(f"| {b} | {w} | " + " | ".join(vals) + " |")
print()
print("Machine:\n")
for l in machine:
    print(f"- {l}")
with open(f"{out}/summary.csv", "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=list(summary[0].keys()))
    wr.writeheader()
    for rec in summary:
        wr.writerow(rec)
EOF
cat "$OUT/table.md"
log "results: $OUT (table.md, runs.csv, summary.csv, json/, machine.txt)"

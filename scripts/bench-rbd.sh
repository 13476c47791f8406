#!/usr/bin/env bash
# Benchmark the rbd target against its baselines on one image, in one run (ratios only mean
# something within a run). Run by hand, not by CI; results and method in docs/bench-rbd.md.
#
#   scripts/bench-rbd.sh [--host-only | --guest-only] [--runtime SECS] [--out DIR] [--kernel 7.3]
#
# Host (Ceph is fast enough here to show a frontend's cost), fio's nbd engine against:
#   ublkd      `ublkd export -t rbd` (one shared image handle, --connections 2)
#   qemu-nbd   QEMU's rbd driver (qemu-block-extra), cache=none, -e 2
#   fio-rbd    fio's own rbd engine: librbd with no server in between, the practical limit
# plus, on an image without exclusive-lock, ublkd with `--handles per-queue` vs shared.
# Guest (scripts/vm.sh, Linux 7.3, TCG; the cluster runs inside the guest): fio io_uring on
#   ublkd      the `ublkd add -t rbd -q 2` device
#   rbd-nbd    librbd + the kernel's nbd client on the same image
# Cells: 4k randread/randwrite at qd1 (1 job), qd64 (1 and 2 jobs), 64k sequential read/write
# at qd16. Every server gets `rbd_cache = false` (ublkd always sets it; a killed daemon must not
# lose acknowledged writes). Daemon CPU per I/O: the server process's user+system time over the
# run divided by the I/Os fio completed (fio-rbd has no server).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runtime=10 out="" mode=both kernel=7.3 in_guest=0
while [[ $# -gt 0 ]]; do
    case "$1" in
    --host-only) mode=host; shift ;;
    --guest-only) mode=guest; shift ;;
    --runtime) runtime=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --kernel) kernel=$2; shift 2 ;;
    --in-guest) in_guest=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-rbd.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
# Under target/: the guest can write there (scripts/vm.sh).
out=${out:-$repo/target/bench-rbd}
mkdir -p "$out"
out=$(cd "$out" && pwd)
ublkd=$repo/target/release/ublkd
[[ -x $ublkd ]] || { echo "bench-rbd.sh: build first (cargo build --release)" >&2; exit 1; }

cells=(
    "randread 4k 1 1" "randread 4k 64 1" "randread 4k 64 2"
    "randwrite 4k 1 1" "randwrite 4k 64 1" "randwrite 4k 64 2"
    "read 64k 16 1" "write 64k 16 1"
)

# Whatever this run started goes when it ends, however it ends.
pids=()
clusters=()
cleanup() {
    local p c
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for c in "${clusters[@]}"; do "$repo/scripts/ceph.sh" stop "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

cpu_ticks() { # PID: user+system clock ticks so far
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# run_fio NAME CELL PID FIO-ARGS...: one fio run; prints "IOPS CPU-US-PER-IO".
run_fio() {
    local name=$1 cell=$2 pid=$3; shift 3
    local rw bs qd jobs c0 c1 json
    read -r rw bs qd jobs <<<"$cell"
    json=$out/fio-$name-${rw}-${bs}-qd${qd}-j${jobs}.json
    c0=$( [[ $pid -gt 0 ]] && cpu_ticks "$pid" || echo 0)
    fio --name=b --rw="$rw" --bs="$bs" --iodepth="$qd" --numjobs="$jobs" --group_reporting \
        --time_based --runtime="$runtime" --ramp_time=2 --size=1G --offset_increment=1G \
        --output-format=json "$@" >"$json" 2>"$json.err" || { echo "0 0"; return; }
    c1=$( [[ $pid -gt 0 ]] && cpu_ticks "$pid" || echo 0)
    python3 - "$json" "$((c1 - c0))" "$(getconf CLK_TCK)" "$runtime" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()  # the nbd engine prints a line before the JSON
j = json.loads(text[text.index("{"):])["jobs"][0]
ticks, hz, rt = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
iops = j["read"]["iops"] + j["write"]["iops"]
# CPU over the whole run (ramp included) per I/O over the whole run (ramp ~ 2 s more I/O).
ios = iops * (rt + 2)
cpu = ticks / hz * 1e6 / ios if ios and ticks else 0
print(f"{iops:.0f} {cpu:.0f}")
EOF
}

host_bench() {
    local cluster=$out/cluster conf bconf port=10950 qport=10951 pqport=10952 spid qpid
    "$repo/scripts/ceph.sh" stop "$cluster" >/dev/null 2>&1 || true
    clusters+=("$cluster")
    "$repo/scripts/ceph.sh" start "$cluster" --osd-mem 6G
    conf=$cluster/ceph.conf
    bconf=$out/bench.conf
    { cat "$conf"; printf '\n[client]\nrbd cache = false\n'; } >"$bconf"
    export CEPH_CONF=$bconf
    rbd create --size 2G rbd/bench
    rbd create --size 2G --image-feature layering rbd/benchpq
    for img in bench benchpq; do
        fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=$img --rw=write \
            --bs=4M --iodepth=8 --size=2G >/dev/null
    done
    "$ublkd" export -t rbd --conf "$bconf" --image rbd/bench --connections 2 \
        --listen 127.0.0.1:$port 2>"$out/ublkd-export.log" &
    spid=$!
    pids+=("$spid")
    qemu-nbd -f raw --cache=none -e 2 --persistent -p $qport -b 127.0.0.1 \
        "rbd:rbd/bench:conf=$bconf" 2>"$out/qemu-nbd.log" &
    qpid=$!
    pids+=("$qpid")
    sleep 3
    local table=$out/host.md cell f u q
    {
        echo "| cell | fio-rbd IOPS | ublkd IOPS | qemu-nbd IOPS | ublkd / qemu-nbd | ublkd / fio-rbd | ublkd CPU µs/IO | qemu-nbd CPU µs/IO |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    } >"$table"
    for cell in "${cells[@]}"; do
        read -r rw bs qd jobs <<<"$cell"
        # Two fio rbd jobs are two librbd clients of one exclusive-lock image: they take the
        # lock from each other on every write (one may even get blocklisted), so fio-rbd has
        # no two-job row.
        if [[ $jobs -eq 1 ]]; then
            f=$(run_fio fio-rbd "$cell" 0 --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench)
        else
            f="0 0"
        fi
        u=$(run_fio ublkd "$cell" "$spid" --ioengine=nbd --uri="nbd://127.0.0.1:$port/")
        q=$(run_fio qemu-nbd "$cell" "$qpid" --ioengine=nbd --uri="nbd://127.0.0.1:$qport/")
        python3 - "$rw $bs qd$qd j$jobs" "$f" "$u" "$q" >>"$table" <<'EOF'
import sys
cell, f, u, q = sys.argv[1], *[list(map(float, a.split())) for a in sys.argv[2:]]
r = lambda a, b: f"{a / b:.2f}x" if b else "-"
print(f"| {cell} | {f[0]:.0f} | {u[0]:.0f} | {q[0]:.0f} | {r(u[0], q[0])} | {r(u[0], f[0])} | {u[1]:.0f} | {q[1]:.0f} |")
EOF
        tail -1 "$table"
    done
    kill "$spid" "$qpid"; wait "$spid" "$qpid" 2>/dev/null || true
    # Image handles: shared vs one per queue (image without exclusive-lock), 2 connections.
    local handles=$out/handles.md h s p ppid
    {
        echo "| cell | shared handle IOPS | per-queue handles IOPS | per-queue / shared | shared CPU µs/IO | per-queue CPU µs/IO |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    } >"$handles"
    "$ublkd" export -t rbd --conf "$bconf" --image rbd/benchpq --connections 2 \
        --listen 127.0.0.1:$port 2>>"$out/ublkd-export.log" &
    spid=$!
    pids+=("$spid")
    "$ublkd" export -t rbd --conf "$bconf" --image rbd/benchpq --connections 2 --handles per-queue \
        --listen 127.0.0.1:$pqport 2>>"$out/ublkd-export.log" &
    ppid=$!
    pids+=("$ppid")
    sleep 3
    for cell in "randread 4k 64 2" "randwrite 4k 64 2" "randread 4k 1 1" "read 64k 16 1"; do
        read -r rw bs qd jobs <<<"$cell"
        s=$(run_fio shared "$cell" "$spid" --ioengine=nbd --uri="nbd://127.0.0.1:$port/")
        p=$(run_fio perqueue "$cell" "$ppid" --ioengine=nbd --uri="nbd://127.0.0.1:$pqport/")
        python3 - "$rw $bs qd$qd j$jobs" "$s" "$p" >>"$handles" <<'EOF'
import sys
cell, s, p = sys.argv[1], *[list(map(float, a.split())) for a in sys.argv[2:]]
print(f"| {cell} | {s[0]:.0f} | {p[0]:.0f} | {p[0] / s[0] if s[0] else 0:.2f}x | {s[1]:.0f} | {p[1]:.0f} |")
EOF
        tail -1 "$handles"
    done
    kill "$spid" "$ppid"; wait "$spid" "$ppid" 2>/dev/null || true
    unset CEPH_CONF
    "$repo/scripts/ceph.sh" stop "$cluster"
}

# Inside the guest: ublkd's device vs rbd-nbd on one image.
guest_bench() {
    local cluster=/tmp/ublkd-scratch/ceph conf bconf dev nbd upid npid cell u n
    ip link set lo up 2>/dev/null || true
    clusters+=("$cluster")
    "$repo/scripts/ceph.sh" start "$cluster" --osd-mem 1G
    conf=$cluster/ceph.conf
    bconf=$cluster/bench.conf
    { cat "$conf"; printf '\n[client]\nrbd cache = false\n'; } >"$bconf"
    rbd -c "$bconf" create --size 256M rbd/bench
    rbd -c "$bconf" bench --io-type write --io-size 4M --io-total 256M rbd/bench >/dev/null 2>&1
    dev=$("$ublkd" add -t rbd --conf "$bconf" --image rbd/bench -q 2 -d 128)
    upid=$("$ublkd" list -n "${dev#/dev/ublkb}" --json | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$')
    nbd=$(rbd-nbd -c "$bconf" map rbd/bench 2>>"$out/rbd-nbd.log")
    npid=$(pgrep -f "rbd-nbd.*map" | head -1)
    local table=$out/guest.md
    {
        echo "| cell | ublkd IOPS | rbd-nbd IOPS | ublkd / rbd-nbd | ublkd CPU µs/IO | rbd-nbd CPU µs/IO |"
        echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    } >"$table"
    for cell in "${cells[@]}"; do
        read -r rw bs qd jobs <<<"$cell"
        u=$(run_fio ublkd-dev "$cell" "$upid" --ioengine=io_uring --direct=1 --filename="$dev" --size=128M --offset_increment=128M)
        n=$(run_fio rbd-nbd "$cell" "$npid" --ioengine=io_uring --direct=1 --filename="$nbd" --size=128M --offset_increment=128M)
        python3 - "$rw $bs qd$qd j$jobs" "$u" "$n" >>"$table" <<'EOF'
import sys
cell, u, n = sys.argv[1], *[list(map(float, a.split())) for a in sys.argv[2:]]
print(f"| {cell} | {u[0]:.0f} | {n[0]:.0f} | {u[0] / n[0] if n[0] else 0:.2f}x | {u[1]:.0f} | {n[1]:.0f} |")
EOF
        tail -1 "$table"
    done
    "$ublkd" del -n "${dev#/dev/ublkb}"
    rbd-nbd unmap "$nbd"
    "$repo/scripts/ceph.sh" stop "$cluster"
}

if [[ $in_guest -eq 1 ]]; then
    guest_bench
    exit 0
fi
if [[ $mode != guest ]]; then
    echo "=== host: $(nproc) CPUs, $(uname -r)"
    host_bench
fi
if [[ $mode != host ]]; then
    echo "=== guest: Linux $kernel (TCG)"
    "$repo/scripts/vm.sh" --kernel "$kernel" --mem 3G --timeout 3000 -- \
        "$repo/scripts/bench-rbd.sh" --in-guest --runtime "$runtime" --out "$out"
fi
echo "tables: $out/host.md $out/handles.md $out/guest.md"

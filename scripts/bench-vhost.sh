#!/bin/bash
# vhost-user-blk benchmark: one QEMU guest (TCG, scripts/vm.sh) with three disks on the same
# host file, all O_DIRECT through io_uring:
#   ublkd    ublkd vhost -t file (2 queues)
#   qsd      qemu-storage-daemon --export type=vhost-user-blk (2 queues)
#   builtin  QEMU's own virtio-blk-pci with an iothread and aio=io_uring (2 queues)
# fio 4k randread/randwrite, qd 1 and 64, 1 and 2 jobs, interleaved (bench/vhost-guest.sh).
# Prints a table: IOPS per disk (median over rounds), ratios, and the backends' CPU per I/O
# (host CPU time of the ublkd and qemu-storage-daemon processes, and of QEMU's iothread,
# during each run, divided by the I/Os fio completed).
#
# Usage: scripts/bench-vhost.sh [--kernel 7.3] [--rounds 2] [--runtime 8] [--smoke]
#        [--out DIR] [--cells 'randread-qd64-j1 ...']
# --smoke: one round of one cell, 3 s per run (checks that everything runs).
# Not a test: numbers under TCG are only meaningful as ratios within one boot.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UBLKD=${UBLKD:-$repo/target/release/ublkd}
kernel=7.3 rounds=2 runtime=8 cells="" out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --kernel) kernel=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --runtime) runtime=$2; shift ;;
    --cells) cells=$2; shift ;;
    --out) out=$2; shift ;;
    --smoke) rounds=1 runtime=3 cells=randread-qd64-j1 ;;
    *) echo "bench-vhost.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[[ -x "$UBLKD" ]] || { echo "bench-vhost.sh: build first (cargo build --release)" >&2; exit 2; }
command -v qemu-storage-daemon >/dev/null || { echo "bench-vhost.sh: qemu-storage-daemon missing (scripts/install-deps.sh)" >&2; exit 2; }
mkdir -p /tmp/ublkd-vm
ctl=$(mktemp -d /tmp/ublkd-vm/bench-vhost.XXXXXX)
out=${out:-$ctl}
mkdir -p "$out" /var/cache/ublkd
# The disk: a real file on the host's disk (ext4; /tmp and /var/tmp may be tmpfs), fully allocated.
img=/var/cache/ublkd/bench-vhost.img
if [[ ! -f $img || $(stat -c %s "$img") -ne $((1 << 30)) ]]; then
    dd if=/dev/urandom of="$img" bs=1M count=1024 status=none
fi

"$UBLKD" vhost -t file --path "$img" --socket "$ctl/ublkd.sock" --num-queues 2 \
    --serial ublkd-bench >"$ctl/ublkd.log" 2>&1 &
ublkd_pid=$!
qemu-storage-daemon \
    --blockdev "driver=file,node-name=disk,filename=$img,cache.direct=on,aio=io_uring,locking=off" \
    --export "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path=$ctl/qsd.sock,writable=on,num-queues=2" \
    >"$ctl/qsd.log" 2>&1 &
qsd_pid=$!
for s in ublkd qsd; do
    for _ in $(seq 100); do [[ -S "$ctl/$s.sock" ]] && break; sleep 0.05; done
done
cleanup() { kill "$ublkd_pid" "$qsd_pid" 2>/dev/null; touch "$ctl/done"; }
trap cleanup EXIT

qopts="-name ublkd-bench,debug-threads=on"
qopts+=" -chardev socket,id=u,path=$ctl/ublkd.sock -device vhost-user-blk-pci,chardev=u,num-queues=2"
qopts+=" -chardev socket,id=q,path=$ctl/qsd.sock -device vhost-user-blk-pci,chardev=q,num-queues=2"
qopts+=" -object iothread,id=iot0"
qopts+=" -blockdev driver=file,node-name=bi,filename=$img,cache.direct=on,aio=io_uring,locking=off"
qopts+=" -device virtio-blk-pci,drive=bi,iothread=iot0,num-queues=2,serial=qemu-builtin"

# CPU ticks (utime + stime) of a process, or of QEMU's iothread.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
iothread_ticks() {
    local qemu t
    # The QEMU process itself (vm.sh's shell has the same words in its arguments).
    for qemu in $(pgrep -f "ublkd-bench,debug-threads"); do
        [[ "$(cat "/proc/$qemu/comm" 2>/dev/null)" == qemu-system* ]] && break
        qemu=""
    done
    [[ -n "$qemu" ]] || { echo 0; return; }
    for t in /proc/"$qemu"/task/*; do
        [[ "$(cat "$t/comm" 2>/dev/null)" == "IO iot0" ]] && { awk '{print $14 + $15}' "$t/stat"; return; }
    done
    echo 0
}
(
    declare -A seen
    while [[ ! -e "$ctl/done" ]]; do
        for f in "$ctl"/start-* "$ctl"/end-*; do
            [[ -e "$f" && -z "${seen[$f]:-}" ]] || continue
            seen[$f]=1
            echo "$(basename "$f") $(ticks "$ublkd_pid") $(ticks "$qsd_pid") $(iothread_ticks)" >>"$ctl/cpu.txt"
        done
        sleep 0.02
    done
) &

"$repo/scripts/vm.sh" --kernel "$kernel" --shared-mem --timeout 3000 --env "VHOST_CTL=$ctl" \
    --env "BENCH_ROUNDS=$rounds" --env "BENCH_RUNTIME=$runtime" --env "BENCH_CELLS=$cells" \
    --qemu-opts "$qopts" -- bench/vhost-guest.sh 2>&1 | tee "$ctl/guest.out"
rc=${PIPESTATUS[0]}
touch "$ctl/done"
sleep 0.2
python3 - "$ctl" "$out" <<'PY'
import json, os, sys, glob, collections
ctl, out = sys.argv[1], sys.argv[2]
hz = os.sysconf("SC_CLK_TCK")
cpu = {}
for line in open(os.path.join(ctl, "cpu.txt")) if os.path.exists(os.path.join(ctl, "cpu.txt")) else []:
    name, u, q, i = line.split()
    kind, tag = name.split("-", 1)
    cpu.setdefault(tag, {})[kind] = (int(u), int(q), int(i))
iops = collections.defaultdict(list)
cpuio = collections.defaultdict(list)
for f in glob.glob(os.path.join(ctl, "fio-*.json")):
    tag = os.path.basename(f)[4:-5]
    r, rest = tag.split("-", 1)
    cell, disk = rest.rsplit("-", 1)
    try:
        j = json.load(open(f))
    except Exception:
        continue
    jb = j["jobs"][0]
    rw = "read" if "randread" in cell else "write"
    v = jb[rw]["iops"]
    ios = jb[rw]["total_ios"]
    iops[(cell, disk)].append(v)
    c = cpu.get(tag, {})
    if "start" in c and "end" in c and ios:
        k = {"ublkd": 0, "qsd": 1, "builtin": 2}[disk]
        d = (c["end"][k] - c["start"][k]) / hz
        # The CPU window includes fio's ramp time; count those I/Os too (same rate).
        rt = jb.get("job_runtime", 0) / 1000.0 or 1
        ios_all = ios * (rt + 1.0) / rt
        cpuio[(cell, disk)].append(d * 1e6 / ios_all)
def mean(v):  # the median: one slow round (another VM's burst) must not move it
    v = sorted(v)
    if not v:
        return float("nan")
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
cells = sorted({c for c, _ in iops}, key=lambda c: (c.split("-")[0], int(c.split("-")[1][2:]), c))
lines = ["| cell | ublkd IOPS | qsd IOPS | built-in IOPS | ublkd/qsd | ublkd/built-in | CPU µs/IO ublkd | qsd | built-in iothread |",
         "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
for c in cells:
    u, q, b = (mean(iops[(c, d)]) for d in ("ublkd", "qsd", "builtin"))
    cu, cq, cb = (mean(cpuio[(c, d)]) for d in ("ublkd", "qsd", "builtin"))
    lines.append(f"| {c} | {u:.0f} | {q:.0f} | {b:.0f} | {u/q:.2f}x | {u/b:.2f}x | {cu:.0f} | {cq:.0f} | {cb:.0f} |")
table = "\n".join(lines)
print(table)
open(os.path.join(out, "table.md"), "w").write(table + "\n")
PY
grep -h 'requests;' "$ctl/ublkd.log" | tail -1
echo "bench-vhost: results in $out (logs in $ctl)"
exit "$rc"

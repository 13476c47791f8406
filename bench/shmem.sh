#!/bin/bash
# Shared-memory zero copy against copy (and zero copy for reference), run inside a VM:
#   scripts/vm.sh --kernel 7.3 --env UBLKD=target/release/ublkd -- 'bench/shmem.sh [BS QD JOBS ROUNDS]'
# A -t file device on a 256 MiB tmpfs file, 2 queues, --recovery off. fio maps the same shared
# file for every device (--iomem=mmapshared:FILE), so only the device differs. Prints, per
# device and workload: IOPS and the daemon's CPU per request in µs; then the requests its log
# says were served in shared memory. docs/benchmarks.md, "Shared-memory zero copy".
set -u
U=${UBLKD:-target/release/ublkd}
bs=${1:-4k} qd=${2:-32} jobs=${3:-"1 2"} rounds=${4:-3}
shm=$TMPDIR/ublkd-bench-shm.buf img=$TMPDIR/ublkd-bench-shm.img
runtime=8
truncate -s 64M "$shm"
truncate -s 256M "$img"
dd if=/dev/urandom of="$img" bs=1M count=256 status=none conv=notrunc
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run() { # LABEL ADD-ARGS...
    local label=$1 dev id pid rw j c0 c1 iops; shift
    dev=$("$U" add -t file --path "$img" -q 2 --recovery off "$@") || { echo "$label: add failed"; return; }
    id=${dev#/dev/ublkb}
    pid=$(python3 -c "import json; print(json.load(open('/run/ublkd/$id.json'))['pid'])")
    for rw in randread randwrite; do
        for j in $jobs; do
            c0=$(cpu_ticks "$pid")
            iops=$(fio --name=b --filename="$dev" --ioengine=io_uring --direct=1 --rw=$rw --bs="$bs" \
                --iodepth="$qd" --numjobs="$j" --group_reporting --runtime=$runtime --time_based \
                --size=256M --iomem="mmapshared:$shm" --output-format=json |
                python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(int(j['read']['iops'] + j['write']['iops']))")
            c1=$(cpu_ticks "$pid")
            # Ticks are 10 ms: µs per request = ticks * 1e4 / requests.
            echo "$label $rw ${bs} qd$qd j$j $iops $(python3 -c "print(round(($c1 - $c0) * 1e4 / max(1, $iops * $runtime), 1))")"
        done
    done
    "$U" del -n "$id"
    echo "$label: $(grep -o '[0-9]* in shared memory' "/run/ublkd/$id.log" | tail -2 | awk '{ n += $1 } END { print n + 0 }') requests in shared memory"
}
for ((r = 1; r <= rounds; r++)); do
    run copy --buffers copy
    run shmem --shmem "$shm"
    run zc --buffers zero-copy
done
rm -f "$shm" "$img"

#!/usr/bin/env bash
# Where does a read's CPU go, server by server? (issue 17's file row, issue 13's qcow2 row.)
# Run inside scripts/vm.sh on 7.3 (rublk -z needs AUTO_BUF_REG):
#
#   scripts/vm.sh --kernel 7.3 --mem 4G --keep --env RUBLK=$PWD/target/peers/rublk-0.2.15/bin/rublk \
#       -- bench/profile-servers.sh ublkd-file rublk-loop-z ublkd-qcow2 ublkd-qcow2-empty
#
# Servers: ublkd-file (`ublkd add -t file`), ublkd-qcow2 (`-t qcow2` on a qcow2 copy of the same
# data), rublk-loop-z (`rublk add loop -z`; needs RUBLK=path), all with 2 queues, depth 64, over
# a 512 MiB file of random data on the guest tmpfs (as scripts/bench.sh uses); and
# ublkd-qcow2-empty: first writes into a fresh empty 4 GiB qcow2 image. For each: fio 4k
# randread (randwrite for ublkd-qcow2-empty) qd $QD (64) x $JOBS (2) jobs; the server's CPU per I/O (schedstat of all its
# threads, io_uring workers included) and its threads -> profile-servers.txt; then cpu-clock
# samples with call graphs: the whole guest by comm -> profile-<server>-comm.txt, the server's
# process by symbol (self) -> profile-<server>.txt, with the call chains into its symbols above
# 3% -> profile-<server>-callers.txt.
# Output: $PROFILE_OUT (default the run dir vm.sh keeps with --keep).
set -euo pipefail

[[ $# -gt 0 ]] || { echo "usage: bench/profile-servers.sh ublkd-file|ublkd-qcow2|ublkd-qcow2-empty|rublk-loop-z..." >&2; exit 2; }
out=${PROFILE_OUT:-${UBLKD_VM_OUT:?run inside scripts/vm.sh or set PROFILE_OUT}}
QD=${QD:-64} JOBS=${JOBS:-2} RUNTIME=${RUNTIME:-5}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch=${TMPDIR:-/tmp}
cp "${UBLKD:-$repo/target/release/ublkd}" "$scratch/ublkd"
UBLKD=$scratch/ublkd
if [[ -n ${RUBLK:-} ]]; then
    cp "$RUBLK" "$scratch/rublk"
    RUBLK=$scratch/rublk
fi
file=$scratch/profile.img
# 512 MiB: the raw file and its qcow2 copy must both fit in the guest tmpfs (half of 4 GiB).
dd if=/dev/urandom of="$file" bs=1M count=512 status=none

rw=randread
fio_args() { # DEV RUNTIME
    echo --name=p --filename="$1" --ioengine=io_uring --direct=1 --bs=4k --rw="$rw" \
        --iodepth="$QD" --numjobs="$JOBS" --group_reporting --time_based --runtime="$2" \
        --norandommap --randrepeat=0
}
# (io_uring workers come and go: one that exits mid-run takes its CPU time out of the sum, so
# the figure is a lower bound; one that exits under `cat` must not end the script.)
ns_of() { { cat /proc/"$1"/task/*/schedstat 2>/dev/null || true; } | awk '{ s += $1 } END { print s }'; }
ublkd_pid() { "$UBLKD" list -n "$1" --json | jq -r 'if type == "array" then .[0].pid else .pid end'; }

measure() { # NAME DEV PID
    local name=$1 dev=$2 pid=$3 a b ios
    echo none >"/sys/block/${dev#/dev/}/queue/scheduler"
    a=$(ns_of "$pid")
    # shellcheck disable=SC2046
    fio $(fio_args "$dev" "$RUNTIME") --output-format=json >"$scratch/pf.json"
    b=$(ns_of "$pid")
    ios=$(jq -r '.jobs[0] | .read.total_ios + .write.total_ios' "$scratch/pf.json")
    echo "$name ($rw): $(jq -r '.jobs[0] | .read.iops + .write.iops | floor' "$scratch/pf.json") IOPS, server CPU/IO" \
        "$(awk -v a="$a" -v b="$b" -v n="$ios" 'BEGIN { printf "%.1f", (b - a) / n / 1000 }') us," \
        "threads:$(cat /proc/"$pid"/task/*/comm | sort | uniq -c | tr -s ' \n' ' ')" | tee -a "$out/profile-servers.txt"
    # -D: sample once fio is past its start-up.
    # shellcheck disable=SC2046
    perf record -q -D 2500 -o "$scratch/pf.data" -e cpu-clock -F 10000 -a -g -- \
        fio $(fio_args "$dev" $((RUNTIME + 3))) >/dev/null
    { perf report -i "$scratch/pf.data" --stdio -g none --no-children --sort comm 2>/dev/null |
        grep -v -e '^#' -e '^$' | head -12 || true; } >"$out/profile-$name-comm.txt"
    { perf report -i "$scratch/pf.data" --stdio -g none --no-children --pid "$pid" --sort dso,sym \
        --percent-limit 0.7 2>/dev/null | grep -v -e '^#' -e '^$' || true; } >"$out/profile-$name.txt"
    # Who calls the server's hottest symbols (those above 3%): each symbol, then its callers.
    { perf report -i "$scratch/pf.data" --stdio --no-children --pid "$pid" --sort sym \
        --percent-limit 3 -g graph,0.5,callee 2>/dev/null |
        grep -v -e '^#' -e '^$' || true; } >"$out/profile-$name-callers.txt"
}

for server in "$@"; do
    rw=randread
    case $server in
    ublkd-qcow2-empty)
        # 4 GiB of virtual size: at the rates seen here (hundreds of writes per second) nearly
        # every write of both fio runs allocates a cluster.
        rw=randwrite
        rm -f "$scratch/empty.qcow2"
        qemu-img create -q -f qcow2 "$scratch/empty.qcow2" 4G
        dev=$("$UBLKD" add -t qcow2 --path "$scratch/empty.qcow2" -q 2 -d 64)
        id=${dev#/dev/ublkb}
        measure "$server" "$dev" "$(ublkd_pid "$id")"
        "$UBLKD" del -n "$id"
        rm -f "$scratch/empty.qcow2"
        ;;
    ublkd-file | ublkd-qcow2)
        path=$file
        if [[ $server == ublkd-qcow2 ]]; then
            path=$scratch/profile.qcow2
            [[ -e $path ]] || qemu-img convert -O qcow2 "$file" "$path"
        fi
        dev=$("$UBLKD" add -t "${server#ublkd-}" --path "$path" -q 2 -d 64)
        id=${dev#/dev/ublkb}
        measure "$server" "$dev" "$(ublkd_pid "$id")"
        "$UBLKD" del -n "$id"
        ;;
    rublk-loop-z)
        [[ -n ${RUBLK:-} ]] || { echo "rublk-loop-z: set RUBLK" >&2; exit 2; }
        "$RUBLK" add loop -f "$file" -q 2 -d 64 -z -n 90 --quiet >/dev/null
        dd if=/dev/ublkb90 of=/dev/null bs=4k count=1 iflag=direct status=none
        measure "$server" /dev/ublkb90 "$(pgrep -n -f "^$RUBLK add")"
        "$RUBLK" del -n 90 >/dev/null 2>&1 || true
        ;;
    *) echo "unknown server $server" >&2; exit 2 ;;
    esac
done
rm -f "$file" "$scratch/profile.qcow2"
echo "profiles: $out/profile-*.txt"

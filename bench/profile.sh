#!/usr/bin/env bash
# Where does a ublk request's time go? Guest-side profiling helpers (run inside scripts/vm.sh):
#
#   scripts/vm.sh --kernel 7.3 --mem 4G -- bench/profile.sh MODE [ublkd add args...]
#
# MODE
#   split      fio's and the daemon's CPU per I/O, null_blk vs ublkd -t null, at $QD (64) x
#              $JOBS (2), randread; `ublkd add` args (e.g. --busy-poll-us 100) apply to ublkd.
#              fio's own figure comes from its usr_cpu/sys_cpu; the daemon's from schedstat.
#   timeline   a qd1 randread timeline of one second (perf tracepoints: wakeups, IPIs,
#              idle, io_uring_enter, block issue/complete) -> timeline.txt
#   profile    cpu-clock samples with call graphs at $QD x $JOBS, sampling only after fio
#              started -> profile-comm.txt, profile-daemon.txt (self), profile-daemon-children.txt,
#              profile-fio.txt
# Output: $PROFILE_OUT (default $UBLKD_VM_OUT, the run dir vm.sh keeps with --keep).
# Needs perf (linux-perf) for timeline/profile. Under TCG, cpu-clock samples land where
# interrupts are re-enabled (_raw_spin_unlock_irqrestore & co.), so read callers, not leaves.
set -euo pipefail

mode=${1:?usage: bench/profile.sh split|timeline|profile [ublkd add args...]}
shift
out=${PROFILE_OUT:-${UBLKD_VM_OUT:?run inside scripts/vm.sh or set PROFILE_OUT}}
QD=${QD:-64} JOBS=${JOBS:-2} RUNTIME=${RUNTIME:-4}
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch=${TMPDIR:-/tmp}
# Run the binary from the guest's RAM, not over 9p.
cp "$repo/target/release/ublkd" "$scratch/ublkd"
UBLKD=$scratch/ublkd

modprobe -r null_blk 2>/dev/null || true
modprobe null_blk queue_mode=2 submit_queues=2 nr_devices=1 gb=4 irqmode=0
echo none >/sys/block/nullb0/queue/scheduler
dev=$("$UBLKD" add -t null --size 4G -q 2 -d 64 "$@")
id=${dev#/dev/ublkb}
echo none >"/sys/block/ublkb$id/queue/scheduler"
trap '"$UBLKD" del -n "$id"' EXIT

fio_args() { # DEV QD JOBS RUNTIME
    echo --name=p --filename="$1" --ioengine=io_uring --direct=1 --bs=4k --rw=randread \
        --iodepth="$2" --numjobs="$3" --group_reporting --time_based --runtime="$4" \
        --norandommap --randrepeat=0
}

daemon_ns() { # summed run time of the daemon's threads (schedstat)
    local pid
    pid=$("$UBLKD" list -n "$id" --json | jq -r 'if type == "array" then .[0].pid else .pid end')
    cat /proc/"$pid"/task/*/schedstat | awk '{ s += $1 } END { print s }'
}

case $mode in
split)
    for d in /dev/nullb0 "$dev"; do
        [[ $d == "$dev" ]] && d0=$(daemon_ns)
        # shellcheck disable=SC2046
        fio $(fio_args "$d" "$QD" "$JOBS" "$RUNTIME") --output-format=json >"$scratch/split.json"
        line=$(jq -r '.jobs[0] as $j | $j.read as $d
            | "\($d.iops | floor) IOPS, fio CPU/IO \(($j.usr_cpu + $j.sys_cpu) / 100 * $j.job_runtime * 1000 / $d.total_ios | . * 10 | floor / 10) us"' \
            "$scratch/split.json")
        if [[ $d == "$dev" ]]; then
            ios=$(jq -r '.jobs[0].read.total_ios' "$scratch/split.json")
            line+=", daemon CPU/IO $(awk -v a="$d0" -v b="$(daemon_ns)" -v n="$ios" \
                'BEGIN { printf "%.1f", (b - a) / n / 1000 }') us"
        fi
        echo "$d ($*): $line" | tee -a "$out/split.txt"
    done
    ;;
timeline)
    ev=sched:sched_switch,sched:sched_wakeup,sched:sched_waking,power:cpu_idle
    ev+=,block:block_rq_issue,block:block_rq_complete,io_uring:io_uring_complete
    ev+=,io_uring:io_uring_submit_req,irq_vectors:call_function_single_entry
    ev+=,irq_vectors:reschedule_entry,syscalls:sys_enter_io_uring_enter
    ev+=,syscalls:sys_exit_io_uring_enter
    # shellcheck disable=SC2046
    perf record -q -o "$scratch/t.data" -e "$ev" -a -- fio $(fio_args "$dev" 1 1 1) >/dev/null
    perf script -i "$scratch/t.data" -F comm,tid,cpu,time,event,trace >"$out/timeline.txt" 2>/dev/null
    echo "timeline: $out/timeline.txt ($(grep -c block_rq_issue "$out/timeline.txt") requests)"
    ;;
profile)
    # -D: start sampling once fio is past its start-up (loading libraries takes ~2 s here).
    # shellcheck disable=SC2046
    perf record -q -D 2500 -o "$scratch/p.data" -e cpu-clock -F 10000 -a -g -- \
        fio $(fio_args "$dev" "$QD" "$JOBS" $((RUNTIME + 3))) >/dev/null
    rep() { perf report -i "$scratch/p.data" --stdio -g none "$@" 2>/dev/null | grep -v '^#' | grep -v '^$'; }
    rep --no-children --sort comm >"$out/profile-comm.txt"
    rep --no-children --comm "ublk${id}q0,ublk${id}q1" --sort dso,sym --percent-limit 0.3 >"$out/profile-daemon.txt"
    rep --children --comm "ublk${id}q0,ublk${id}q1" --sort sym --percent-limit 2 >"$out/profile-daemon-children.txt"
    rep --no-children --comm fio --sort dso,sym --percent-limit 0.5 >"$out/profile-fio.txt"
    head -5 "$out/profile-comm.txt"
    ;;
*)
    echo "bench/profile.sh: unknown mode '$mode' (split, timeline, profile)" >&2
    exit 2
    ;;
esac

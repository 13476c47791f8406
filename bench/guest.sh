#!/usr/bin/env bash
# Guest half of scripts/bench.sh: runs inside the VM (as root, ublk_drv loaded), writes raw fio
# JSON and a per-run CSV to $OUT. Not meant to be run by hand on a host (it reloads null_blk).
#
# Environment: UBLKD (binary), OUT (results dir, host-visible), RUNTIME (s per cell), RUNS,
# QD_SWEEP (1: run the delay-filter queue-depth sweep), LOAD1 (host load at boot, recorded),
# RUBLK (optional: a rublk binary; its null and loop targets, copy and -z, become peer rows of the
# null and file groups, measured right after ours in every cell).
set -euo pipefail

UBLKD=${UBLKD:?}
OUT=${OUT:?}
RUNTIME=${RUNTIME:-5}
RUNS=${RUNS:-3}
QD_SWEEP=${QD_SWEEP:-1}
LOAD1=${LOAD1:-}
# Lever experiments: extra `ublkd add` arguments for every ublkd device, a regex choosing matrix
# cells ("randread-qd64-j1"...), and the groups to run.
UBLKD_ADD_ARGS=${UBLKD_ADD_ARGS:-}
CELLS=${CELLS:-.}
GROUPS_=${GROUPS_:-null file mem}
SCRATCH=${TMPDIR:-/tmp}
FILE_MIB=1024
CLK_TCK=$(getconf CLK_TCK)
KVER=$(uname -r)

mkdir -p "$OUT/raw" "$OUT/logs"
# Run ublkd from the guest's tmpfs: every `add` execs it, and reading it over the host's 9p share
# (slow under TCG) would count in the creation time.
cp "$UBLKD" "$SCRATCH/ublkd"
UBLKD=$SCRATCH/ublkd
# A baseline build measured beside ours (scripts/bench.sh --baseline): its devices are ours with
# a "@base" suffix, run with the same arguments right after ours in every cell.
UBLKD_BASE=${UBLKD_BASE:-}
if [[ -n $UBLKD_BASE ]]; then
    cp "$UBLKD_BASE" "$SCRATCH/ublkd-base"
    UBLKD_BASE=$SCRATCH/ublkd-base
    UBLKD_OURS=$UBLKD
fi
# A peer ublk server (scripts/bench.sh --peers rublk), run from tmpfs like ours.
RUBLK=${RUBLK:-}
if [[ -n $RUBLK ]]; then
    cp "$RUBLK" "$SCRATCH/rublk"
    RUBLK=$SCRATCH/rublk
fi
RUBLK_ID=90 # a fixed device number far from ours
# Lever variants measured in the same boot (bench.sh --variant NAME=ARGS): "NAME=ARGS;NAME=ARGS".
# Each adds ublk-null~NAME and ublk-file~NAME, our device with ARGS added to `ublkd add`.
VARIANTS=${VARIANTS:-}
variant_args() { # NAME -> its ARGS
    local v
    IFS=';' read -ra vs <<<"$VARIANTS"
    for v in "${vs[@]}"; do [[ ${v%%=*} == "$1" ]] && { echo "${v#*=}"; return; }; done
}
variant_names() {
    local v
    IFS=';' read -ra vs <<<"$VARIANTS"
    for v in "${vs[@]}"; do [[ -n $v ]] && echo "${v%%=*}"; done
}
CSV=$OUT/runs.csv
echo "kernel,group,device,rw,iodepth,numjobs,rep,iops,lat_us,cpu_us_per_io,batch,create_ms,rss_idle_kib,rss_load_kib,requests,nr_requests,cpu_stat_us_per_io,req_per_enter,sys_cpu_us_per_io" >"$CSV"
note() { echo "bench(guest): $*" >&2; echo "$*" >>"$OUT/notes.txt"; }
now_ns() { date +%s%N; }

# ---- kernel baselines --------------------------------------------------------------------------
modprobe -r null_blk 2>/dev/null || true
modprobe null_blk queue_mode=2 submit_queues=2 nr_devices=1 gb=4 irqmode=0
NULLB=/dev/nullb0

# The 1 GiB backing file, shared by loop and the file target. Prefer the guest tmpfs; if loop
# cannot do direct I/O there, use ext4 on a brd RAM disk.
backing_dir=$SCRATCH
FILE=$backing_dir/bench-file.img
dd if=/dev/zero of="$FILE" bs=1M count=$FILE_MIB status=none
LOOP=$(losetup --direct-io=on -f --show "$FILE")
dio=$(cat "/sys/block/${LOOP#/dev/}/loop/dio")
if [[ "$dio" != 1 ]]; then
    losetup -d "$LOOP"
    rm -f "$FILE"
    modprobe brd rd_nr=1 rd_size=$(((FILE_MIB + 256) * 1024))
    mkfs.ext4 -q -F /dev/ram0
    mkdir -p /mnt/bench-ext4
    mount /dev/ram0 /mnt/bench-ext4
    backing_dir=/mnt/bench-ext4
    FILE=$backing_dir/bench-file.img
    dd if=/dev/zero of="$FILE" bs=1M count=$FILE_MIB oflag=direct status=none
    LOOP=$(losetup --direct-io=on -f --show "$FILE")
    dio=$(cat "/sys/block/${LOOP#/dev/}/loop/dio")
    note "backing: ext4 on brd (tmpfs refused loop direct I/O); loop dio=$dio"
else
    note "backing: 1 GiB file on the guest tmpfs; loop dio=$dio"
fi

# qcow2 groups: a 512 MiB raw file of data, the same data as a fully allocated qcow2 image
# (qemu-img convert), and the kernel's nbd client for qemu-nbd beside ublkd.
Q2RAW=$SCRATCH/q2.raw
Q2IMG=$SCRATCH/q2.qcow2
Q2EMPTY=$SCRATCH/q2-empty.qcow2
Q2_MIB=256  # the guest tmpfs (half of 4 GiB) also holds the 1 GiB file of the file group
if [[ " $GROUPS_ " == *" qcow2"* ]]; then
    head -c $((1 << 20)) /dev/urandom >"$SCRATCH/q2.chunk"
    for _ in $(seq "$Q2_MIB"); do cat "$SCRATCH/q2.chunk"; done >"$Q2RAW"
    qemu-img convert -O qcow2 "$Q2RAW" "$Q2IMG"
    modprobe nbd nbds_max=2
    # io_uring where this qemu-nbd has it, else Linux AIO; O_DIRECT either way, as ours.
    QNBD_AIO=io_uring
    qemu-nbd --help 2>&1 | grep -q io_uring || QNBD_AIO=native
fi

set_none() { # scheduler none for a fair comparison (single-queue devices default to mq-deadline)
    local s=/sys/block/${1#/dev/}/queue/scheduler
    [[ -w $s ]] && echo none >"$s" 2>/dev/null || true
}
nr_requests() { cat "/sys/block/${1#/dev/}/queue/nr_requests" 2>/dev/null || echo ""; }
set_none "$NULLB"
set_none "$LOOP"

{
    echo "kernel: $KVER"
    echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo)"
    echo "mem: $(grep MemTotal /proc/meminfo)"
    echo "fio: $(fio --version)"
    echo "THP: $(cat /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null)"
    echo "host load1 at boot: $LOAD1"
    echo "ublkd add extra args: '${UBLKD_ADD_ARGS}', cells: '$CELLS', groups: '$GROUPS_'"
    [[ -z $VARIANTS ]] || echo "lever variants (ublk-GROUP~NAME = ours with ARGS): $VARIANTS"
    echo "null_blk: queue_mode=2 submit_queues=2 nr_devices=1 gb=4 irqmode=0"
    echo "loop: $LOOP over $FILE, dio=$dio, nr_requests=$(nr_requests "$LOOP")"
    [[ -n $RUBLK ]] && echo "peer: rublk $("$RUBLK" --version 2>/dev/null | head -1), its defaults (one CPU per queue thread), -q 2 -d 64, device $RUBLK_ID"
    [[ -n "${QNBD_AIO:-}" ]] && echo "qcow2: ${Q2_MIB} MiB images on the guest tmpfs; $(qemu-nbd --version | head -1), --cache=none --aio=$QNBD_AIO through /dev/nbd0"
} >>"$OUT/notes.txt"

# qemu-nbd serving IMAGE through the kernel's nbd client at /dev/nbd0; sets UPID.
qnbd_connect() { # IMAGE
    qemu-nbd -f qcow2 --cache=none --aio="$QNBD_AIO" --discard=unmap -c /dev/nbd0 "$1"
    for _ in $(seq 100); do [[ "$(cat /sys/block/nbd0/size)" != 0 ]] && break; sleep 0.1; done
    # The server: the process whose thread drives /dev/nbd0. (`qemu-nbd -c` forks twice to
    # daemonize, and the previous run's server may still be exiting: a pgrep can pick the wrong
    # one, and the benchmark then died silently reading its gone /proc entry.)
    UPID=$(awk '/^Tgid:/ {print $2}' "/proc/$(cat /sys/block/nbd0/pid 2>/dev/null)/status" 2>/dev/null || true)
    [[ $UPID =~ ^[0-9]+$ ]] || { echo "bench(guest): qemu-nbd did not connect /dev/nbd0 to $1" >&2; return 1; }
    set_none /dev/nbd0
}
qnbd_disconnect() {
    qemu-nbd -d /dev/nbd0 >/dev/null
    for _ in $(seq 100); do kill -0 "$UPID" 2>/dev/null || break; sleep 0.1; done
}

# ---- one ublkd device per run ------------------------------------------------------------------
UDEV="" UID_="" UPID="" CREATE_MS="" RSS_IDLE=""
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# The peak RSS under load comes from the kernel's own high-water mark (VmHWM, reset to the
# current RSS by writing 5 to clear_refs before the run), so nothing runs beside fio. An earlier
# sampler forked awk and sleep every 0.2 s: ~30% of a vCPU under TCG, taken from ublkd runs only.
rss_peak_reset() { echo 5 2>/dev/null >"/proc/$1/clear_refs" || true; }
rss_peak_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Precise CPU time (ns) of all the daemon's threads: the scheduler's sum_exec_runtime. utime+stime
# above come from tick sampling, which TCG biases upwards when the process runs rarely (a tick
# that fell while the vCPU idled is delivered when it wakes, i.e. to the daemon).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; } # not %d: mawk clamps it at 2^31

ublk_add() { # args for `ublkd add`; sets UDEV UID_ UPID CREATE_MS RSS_IDLE
    local t0 t1 j
    t0=$(now_ns)
    # shellcheck disable=SC2086
    UDEV=$("$UBLKD" add "$@" $UBLKD_ADD_ARGS) || return 1
    t1=$(now_ns)
    # `add` returns once the device is live (START_DEV done, the kernel's partition scan already
    # read through the daemon). The read below proves it; starting dd costs ~150 ms under TCG,
    # so it is timed separately (logs/create-times.txt). jq stays outside the timed part too.
    dd if="$UDEV" of=/dev/null bs=4k count=1 iflag=direct status=none
    t2=$(now_ns)
    UID_=${UDEV#/dev/ublkb}
    CREATE_MS=$(((t1 - t0) / 1000000))
    echo "create_ms $CREATE_MS create_read_ms $(((t2 - t0) / 1000000)) $*" >>"$OUT/logs/create-times.txt"
    UPID=$("$UBLKD" list -n "$UID_" --json | jq -r 'if type == "array" then .[0].pid else .pid end')
    set_none "$UDEV"
    sleep 0.5
    RSS_IDLE=$(rss_kib "$UPID")
}

ublk_del() { # prints "requests batch requests-per-enter" from the daemon's shutdown lines
    local log=/run/ublkd/$UID_.log
    "$UBLKD" del -n "$UID_" >/dev/null
    for _ in $(seq 100); do kill -0 "$UPID" 2>/dev/null || break; sleep 0.1; done
    cp "$log" "$OUT/logs/last-ublkd.log" 2>/dev/null || true
    # Only the lines after the last "stopping device" belong to this daemon.
    awk '/stopping device/ {r = 0; e = 0; c = 0}
         /completions per enter/ {
             for (i = 1; i <= NF; i++) {
                 if ($(i) ~ /^requests,?$/) r += $(i - 1)
                 if ($(i) ~ /^enters,?$/) { e += $(i - 1); c += $(i - 1) * $(i + 1) }
             }
         }
         END { printf "%d %.2f %.2f\n", r, (e > 0 ? c / e : 0), (e > 0 ? r / e : 0) }' "$log"
}

# rublk_add TARGET ARGS...: a rublk device number $RUBLK_ID; sets UDEV UPID CREATE_MS RSS_IDLE.
# rublk's `add` forks its daemon and returns once the device is live, like ours.
rublk_add() {
    local t0 t1
    t0=$(now_ns)
    "$RUBLK" add "$@" -n "$RUBLK_ID" --quiet >/dev/null || return 1
    t1=$(now_ns)
    UDEV=/dev/ublkb$RUBLK_ID
    CREATE_MS=$(((t1 - t0) / 1000000))
    dd if="$UDEV" of=/dev/null bs=4k count=1 iflag=direct status=none
    UPID=$(pgrep -n -f "^$RUBLK add")
    set_none "$UDEV"
    sleep 0.5
    RSS_IDLE=$(rss_kib "$UPID")
}
rublk_del() {
    "$RUBLK" del -n "$RUBLK_ID" >/dev/null 2>&1 || true
    for _ in $(seq 100); do kill -0 "$UPID" 2>/dev/null || break; sleep 0.1; done
}

# Busy time of all CPUs (USER_HZ ticks, /proc/stat: everything but idle and iowait): the whole
# system's CPU per I/O, comparable across kernel devices, ublkd and its peers.
# (Not steal, field 9: time the host took away is not the guest's work.)
sys_busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }

# ---- one fio run -------------------------------------------------------------------------------
# fio_run NAME DEV RW QD JOBS [extra fio args]: writes $OUT/raw/NAME.json, prints "iops lat_us ios"
fio_run() {
    local name=$1 dev=$2 rw=$3 qd=$4 jobs=$5
    shift 5
    fio --name=bench --filename="$dev" --ioengine=io_uring --direct=1 --bs=4k --rw="$rw" \
        --iodepth="$qd" --numjobs="$jobs" --time_based --runtime="$RUNTIME" --group_reporting \
        --randrepeat=0 --norandommap --size="${FIO_SIZE:-1G}" "$@" \
        --output-format=json --output="$OUT/raw/$name.json" >/dev/null
    # The system's busy time right after fio, before jq runs (fio_run is called in a subshell).
    sys_busy_ticks >"$SCRATCH/sys-busy-after-fio"
    jq -r '.jobs[0] as $j | (if $j.read.total_ios > 0 then $j.read else $j.write end) as $d
           | "\($d.iops) \($d.lat_ns.mean / 1000) \($j.read.total_ios + $j.write.total_ios)"' \
        "$OUT/raw/$name.json"
}

# measure GROUP DEVICE RW QD JOBS REP [fio args...]: one row of the CSV; with a baseline
# binary, a ublkd device is measured again right after with it (DEVICE@base).
measure() {
    measure_one "$@"
    # (Only for targets the baseline build has: an older one may lack some.)
    local target=${2#ublk-}
    target=${target%%-*}
    if [[ -n $UBLKD_BASE && $2 == ublk-* ]] && "$UBLKD_BASE" add --help 2>&1 | grep -qw -- "$target"; then
        local dev=$2 group=$1
        shift 2
        UBLKD=$UBLKD_BASE measure_one "$group" "$dev@base" "$@"
        UBLKD=$UBLKD_OURS
    fi
}

measure_one() {
    local group=$1 device=$2 rw=$3 qd=$4 jobs=$5 rep=$6
    shift 6
    local name="$device-$rw-qd$qd-j$jobs-r$rep" dev res iops lat ios
    local cpu="" batch="" create="" rss_i="" rss_l="" reqs="" rpe="" nrr s0 s1 sys=""
    local dev="" vargs="" device_kind
    if [[ $device == ublk-*~* ]]; then
        vargs=$(variant_args "${device#*~}")
        device_kind=${device%~*}
    else
        device_kind=${device%@base}
    fi
    case $device_kind in
    null_blk) dev=$NULLB ;;
    loop) dev=$LOOP ;;
    # shellcheck disable=SC2086 # $vargs: a lever variant's extra arguments, split on spaces
    ublk-null) ublk_add -t null --size 4G -q 2 -d 64 $vargs && dev=$UDEV ;;
    # shellcheck disable=SC2086
    ublk-file) ublk_add -t file --path "$FILE" -q 2 -d 64 $vargs && dev=$UDEV ;;
    ublk-mem)
        # 256 MiB, filled before measuring: a fresh mem device's first write to each region
        # faults in (and zeroes) a page -- a transparent huge page where THP is on, ~10 ms each
        # under TCG -- which would measure the guest's page allocator, not the data path.
        ublk_add -t mem --size 256M -q 2 -d 64 && dev=$UDEV
        dd if=/dev/zero of="$dev" bs=1M count=256 oflag=direct status=none
        local FIO_SIZE=256M
        ;;
    ublk-null-delay5ms) ublk_add -t null --size 4G -q 1 -d 4096 --max-io 64K \
        --filter delay:ms=5 && dev=$UDEV ;;
    rublk-null) rublk_add null -q 2 -d 64 && dev=$UDEV ;;
    rublk-null-z) rublk_add null -q 2 -d 64 -z && dev=$UDEV ;;
    rublk-loop) rublk_add loop -f "$FILE" -q 2 -d 64 && dev=$UDEV ;;
    rublk-loop-z) rublk_add loop -f "$FILE" -q 2 -d 64 -z && dev=$UDEV ;;
    ublk-qcow2) ublk_add -t qcow2 --path "$Q2IMG" -q 2 -d 64 && dev=$UDEV ;;
    ublk-file-raw) ublk_add -t file --path "$Q2RAW" -q 2 -d 64 && dev=$UDEV ;;
    ublk-qcow2-empty)
        rm -f "$Q2EMPTY"
        qemu-img create -q -f qcow2 "$Q2EMPTY" "${Q2_MIB}M"
        ublk_add -t qcow2 --path "$Q2EMPTY" -q 2 -d 64 && dev=$UDEV
        ;;
    qemu-nbd-qcow2) qnbd_connect "$Q2IMG" && dev=/dev/nbd0 ;;
    qemu-nbd-qcow2-empty)
        rm -f "$Q2EMPTY"
        qemu-img create -q -f qcow2 "$Q2EMPTY" "${Q2_MIB}M"
        qnbd_connect "$Q2EMPTY" && dev=/dev/nbd0
        ;;
    *) echo "unknown device $device" >&2; return 1 ;;
    esac
    if [[ -z ${dev:-} ]]; then
        # Only a peer may be missing (rublk -z needs AUTO_BUF_REG, Linux 6.17+); our own
        # devices must come up, or the benchmark fails rather than drop their rows.
        [[ $device == rublk-* ]] || { echo "bench(guest): $name: $device could not be created" >&2; return 1; }
        note "$name: $device could not be created on this kernel; skipped"
        return 0
    fi
    nrr=$(nr_requests "$dev")
    [[ $group == qcow2* ]] && local FIO_SIZE=${Q2_MIB}M
    # (ublk-mem set FIO_SIZE above, for the same reason.)
    if [[ $device == ublk-* || $device == qemu-nbd-* || $device == rublk-* ]]; then
        local c0 c1 n0 n1 cpu_stat
        rss_peak_reset "$UPID"
        c0=$(cpu_ticks "$UPID")
        n0=$(cpu_ns "$UPID")
        s0=$(sys_busy_ticks)
        res=$(fio_run "$name" "$dev" "$rw" "$qd" "$jobs" "$@")
        s1=$(cat "$SCRATCH/sys-busy-after-fio")
        kill -0 "$UPID" 2>/dev/null || { echo "bench(guest): $name: the server (pid $UPID) is gone" >&2; return 1; }
        c1=$(cpu_ticks "$UPID")
        n1=$(cpu_ns "$UPID")
        rss_l=$(rss_peak_kib "$UPID")
        read -r iops lat ios <<<"$res"
        cpu_stat=$(awk -v d=$((c1 - c0)) -v t="$CLK_TCK" -v n="$ios" \
            'BEGIN { printf "%.2f", (n > 0 ? d * 1e6 / t / n : 0) }')
        cpu=$(awk -v d=$((n1 - n0)) -v n="$ios" 'BEGIN { printf "%.2f", (n > 0 ? d / 1e3 / n : 0) }')
        if [[ $device == qemu-nbd-* ]]; then
            qnbd_disconnect
        elif [[ $device == rublk-* ]]; then
            create=$CREATE_MS
            rss_i=$RSS_IDLE
            rublk_del
        else
            create=$CREATE_MS
            rss_i=$RSS_IDLE
            read -r reqs batch rpe < <(ublk_del)
        fi
    else
        s0=$(sys_busy_ticks)
        res=$(fio_run "$name" "$dev" "$rw" "$qd" "$jobs" "$@")
        s1=$(cat "$SCRATCH/sys-busy-after-fio")
        read -r iops lat ios <<<"$res"
    fi
    sys=$(awk -v d=$((s1 - s0)) -v t="$CLK_TCK" -v n="$ios" \
        'BEGIN { printf "%.2f", (n > 0 ? d * 1e6 / t / n : 0) }')
    echo "$KVER,$group,$device,$rw,$qd,$jobs,$rep,$iops,$lat,$cpu,$batch,$create,$rss_i,$rss_l,$reqs,$nrr,${cpu_stat:-},${rpe:-},$sys" >>"$CSV"
    echo "bench(guest): $name: $(printf '%.0f' "$iops") IOPS${cpu:+, $cpu us CPU/IO, batch $batch}" >&2
}

# ---- the matrix: repetitions outermost, devices interleaved within each cell -------------------
for rep in $(seq 1 "$RUNS"); do
    for rw in randread randwrite; do
        for qd in 1 64; do
            for jobs in 1 2; do
                [[ "$rw-qd$qd-j$jobs" =~ $CELLS ]] || continue
                if [[ " $GROUPS_ " == *" null "* ]]; then
                    measure null null_blk "$rw" "$qd" "$jobs" "$rep"
                    measure null ublk-null "$rw" "$qd" "$jobs" "$rep"
                    for v in $(variant_names); do measure_one null "ublk-null~$v" "$rw" "$qd" "$jobs" "$rep"; done
                    if [[ -n $RUBLK ]]; then
                        measure null rublk-null "$rw" "$qd" "$jobs" "$rep"
                        measure null rublk-null-z "$rw" "$qd" "$jobs" "$rep"
                    fi
                fi
                if [[ " $GROUPS_ " == *" file "* ]]; then
                    measure file loop "$rw" "$qd" "$jobs" "$rep"
                    measure file ublk-file "$rw" "$qd" "$jobs" "$rep"
                    for v in $(variant_names); do measure_one file "ublk-file~$v" "$rw" "$qd" "$jobs" "$rep"; done
                    if [[ -n $RUBLK ]]; then
                        measure file rublk-loop "$rw" "$qd" "$jobs" "$rep"
                        measure file rublk-loop-z "$rw" "$qd" "$jobs" "$rep"
                    fi
                fi
                if [[ " $GROUPS_ " == *" qcow2 "* ]]; then
                    measure qcow2 qemu-nbd-qcow2 "$rw" "$qd" "$jobs" "$rep"
                    measure qcow2 ublk-qcow2 "$rw" "$qd" "$jobs" "$rep"
                    measure qcow2 ublk-file-raw "$rw" "$qd" "$jobs" "$rep"
                fi
                # First writes into an empty image (a fresh image per run).
                if [[ " $GROUPS_ " == *" qcow2-empty "* && $rw == randwrite ]]; then
                    measure qcow2-empty qemu-nbd-qcow2-empty "$rw" "$qd" "$jobs" "$rep"
                    measure qcow2-empty ublk-qcow2-empty "$rw" "$qd" "$jobs" "$rep"
                fi
                if [[ " $GROUPS_ " == *" mem "* ]]; then
                    [[ " $GROUPS_ " == *" null "* ]] || measure null null_blk "$rw" "$qd" "$jobs" "$rep"
                    measure mem ublk-mem "$rw" "$qd" "$jobs" "$rep"
                fi
            done
        done
    done
done

# ---- queue-depth scaling over a 5 ms delay -----------------------------------------------------
if [[ $QD_SWEEP == 1 ]]; then
    for qd in 1 8 32 128 512 2048 4096; do
        b=$((qd < 64 ? qd : 64))
        measure qd ublk-null-delay5ms randread "$qd" 1 1 \
            --iodepth_batch_submit="$b" --iodepth_batch_complete_min=1 \
            --iodepth_batch_complete_max="$qd"
    done
fi

losetup -d "$LOOP" || true
echo "host load1 at end (guest view of its own load): $(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/notes.txt"
echo "bench(guest): done" >&2

# shellcheck shell=bash
# Filters on real devices (sourced by run.sh after lib.sh; uses $UBLKD, $SCRATCH, $LOG_DIR):
#   test_error_filter  injected errors reach applications with their errno, only where asked
#   test_rate_filter   an IOPS limit and a bandwidth limit hold within 10% under fio at qd64
#   test_filter_stack  filters stack in order (delay + error), --read-only on any target

# dd one 4 KiB block at OFFSET-in-KiB; prints dd's error line, fails as dd does.
dd_read() { dd if="$1" of=/dev/null bs=4k skip=$(($2 / 4)) count=1 iflag=direct status=none 2>&1; }
dd_write() { dd if=/dev/urandom of="$1" bs=4k seek=$(($2 / 4)) count=1 oflag=direct status=none 2>&1; }

error_filter_reaches_applications() { # DEV
    local dev=$1 out
    out=$(dd_read "$dev" 1024) && { echo "read in the range succeeded"; return 1; }
    echo "$out" | grep -q "Input/output error" || { echo "read error: $out"; return 1; }
    dd_read "$dev" 1020 >/dev/null || { echo "read before the range failed"; return 1; }
    dd_read "$dev" 1028 >/dev/null || { echo "read after the range failed"; return 1; }
    dd_write "$dev" 1024 >/dev/null || { echo "write in the range failed (only reads should)"; return 1; }
    out=$(dd_write "$dev" 4096) && { echo "write in the ENOSPC range succeeded"; return 1; }
    echo "$out" | grep -q "No space left on device" || { echo "write error: $out"; return 1; }
}

test_error_filter() {
    local dev
    dev=$("$UBLKD" add -t mem --size 64M -q 2 --filter error:ops=read,offset=1M,length=4K \
        --filter error:ops=write,errno=ENOSPC,offset=4M,length=4K) || { fail "error filter: add"; return; }
    check "error filter: EIO and ENOSPC reach dd exactly in their ranges" error_filter_reaches_applications "$dev"
    check "error filter: list shows the stack" bash -c "'$UBLKD' list -n ${dev#/dev/ublkb} | grep -q '+error:length=4096,offset=1048576,ops=read +error:'"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

# fio for SECS at qd64 on DEV; prints the IOPS (read+write) from its JSON.
fio_iops() { # DEV SECS BS [extra]
    local dev=$1 secs=$2 bs=$3; shift 3
    fio --name=rate --filename="$dev" --ioengine=io_uring --direct=1 --rw=randread --bs="$bs" \
        --iodepth=64 --runtime="$secs" --time_based --output-format=json "$@" 2>/dev/null |
        python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int(j["read"]["iops"] + j["write"]["iops"]))'
}

within_10_percent() { # GOT WANT
    echo "got $1, limit $2"
    [ "$1" -ge $(($2 * 9 / 10)) ] && [ "$1" -le $(($2 * 11 / 10)) ]
}

test_rate_filter() {
    local dev iops
    dev=$("$UBLKD" add -t null --size 1G -q 2 --filter rate:iops=1000) || { fail "rate: add iops"; return; }
    iops=$(fio_iops "$dev" 10 4k)
    check "rate iops=1000: fio randread qd64 for 10 s within 10%" within_10_percent "${iops:-0}" 1000
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    # 4 MiB/s in 64 KiB requests: 64 requests/s (well below what a loaded TCG guest can do with
    # 64 KiB reads, which it must zero: 8 MiB/s fell short once with the host busy).
    dev=$("$UBLKD" add -t null --size 1G -q 2 --filter rate:bw=4M) || { fail "rate: add bw"; return; }
    iops=$(fio_iops "$dev" 10 64k --numjobs=2 --group_reporting)
    check "rate bw=4M: fio 64k randread qd64 x 2 jobs for 10 s within 10%" within_10_percent "${iops:-0}" 64
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    # Without the filter the same device is far faster (the limit is the filter's, not the VM's).
    dev=$("$UBLKD" add -t null --size 1G -q 2) || { fail "rate: add unlimited"; return; }
    iops=$(fio_iops "$dev" 3 4k)
    echo "unlimited: ${iops:-0} IOPS"
    check "unlimited null is above 1500 IOPS here (so the 1000 limit is what held it)" test "${iops:-0}" -gt 1500
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

slow_and_failing_writes() { # DEV
    local t0 t1
    t0=$(date +%s%N)
    dd_read "$1" 0 >/dev/null || return 1
    t1=$(date +%s%N)
    echo "read took $(((t1 - t0) / 1000000)) ms"
    [ $(((t1 - t0) / 1000000)) -ge 50 ] || return 1
    ! dd_write "$1" 0
}

read_only_device() { # DEV
    [ "$(blockdev --getro "$1")" = 1 ] || { echo "not read-only"; return 1; }
    dd_read "$1" 0 >/dev/null || return 1
    ! dd if=/dev/zero of="$1" bs=4k count=1 oflag=direct status=none
}

test_filter_stack() {
    local dev
    dev=$("$UBLKD" add -t mem --size 64M --filter delay:ms=50 --filter error:ops=write) ||
        { fail "filter stack: add"; return; }
    check "stacked delay and error: reads take 50 ms, writes fail" slow_and_failing_writes "$dev"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    dev=$("$UBLKD" add -t mem --size 64M --read-only) || { fail "read-only mem: add"; return; }
    check "--read-only on mem: the device is read-only, writes fail" read_only_device "$dev"
    check "--read-only: list says so" bash -c "'$UBLKD' list -n ${dev#/dev/ublkb} | grep -q 'read-only'"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    truncate -s 64M "$BACK/ro.img"
    dev=$("$UBLKD" add -t file --path "$BACK/ro.img" --read-only) || { fail "read-only file: add"; return; }
    check "--read-only on file: the device is read-only, writes fail" read_only_device "$dev"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

#!/bin/bash
# The guest half of the vhost-user-blk suite (tests/vhost/run.sh boots the guest and runs the
# backends on the host). Disks are found by serial: file0 (-t file, 2 queues), mem0 (-t mem
# behind a delay filter), ro0 (-t file --read-only, backend started after QEMU), null0 (-t
# null), slow0 (-t file behind a 20 ms delay filter, so requests are surely in flight in the
# backend when it is killed). $VHOST_CTL is a directory shared with the host: writing
# kill-slow0 asks the host to kill -9 slow0's backend and start it again; it answers with
# restarted-slow0.
set -u
LOG_DIR=${UBLKD_VM_OUT:-/tmp}/vhost-logs
mkdir -p "$LOG_DIR"
PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS: $1"; }
fail() { FAILED=$((FAILED + 1)); echo "FAIL: $1${2:+ -- $2}"; }
check() {
    local name=$1; shift
    [[ -n "${VHOST_ONLY:-}" && "$name" != *"$VHOST_ONLY"* ]] && return
    local log="$LOG_DIR/$(echo "$name" | tr -c 'A-Za-z0-9._-' '_').log"
    if "$@" >"$log" 2>&1; then pass "$name"; else fail "$name" "exit $?, see $log: $(tail -3 "$log" | tr '\n' ' ')"; fi
}

modprobe virtio_blk 2>/dev/null
dev_of() { # serial -> /dev/vdX
    local s
    for s in /sys/block/vd*/serial; do
        [[ "$(cat "$s")" == "$1" ]] && { echo "/dev/$(basename "$(dirname "$s")")"; return; }
    done
}
for _ in $(seq 50); do [[ -n "$(dev_of null0)" && -n "$(dev_of ro0)" ]] && break; sleep 0.2; done
FILE=$(dev_of file0) MEM=$(dev_of mem0) RO=$(dev_of ro0) NUL=$(dev_of null0) SLOW=$(dev_of slow0)
echo "disks: file0=$FILE mem0=$MEM ro0=$RO null0=$NUL slow0=$SLOW"
for d in file0 mem0 ro0 null0 slow0; do
    [[ -n "$(dev_of $d)" ]] && pass "disk $d present" || fail "disk $d present"
done
[[ -n "$FILE" && -n "$MEM" && -n "$RO" && -n "$NUL" && -n "$SLOW" ]] || { echo "$PASSED passed, $FAILED failed"; exit 1; }
io_errors() { dmesg | grep -ciE 'I/O error|blk_update_request|critical (medium|target) error' ; }
errs0=$(io_errors)

# --- the device as the guest sees it
b=$(basename "$FILE")
check "file0: 2 queues" test "$(ls /sys/block/$b/mq | wc -l)" -eq 2
check "file0: write-back cache" grep -q 'write back' /sys/block/$b/queue/write_cache
check "file0: discard offered" test "$(cat /sys/block/$b/queue/discard_max_bytes)" -gt 0
check "file0: write-zeroes offered" test "$(cat /sys/block/$b/queue/write_zeroes_max_bytes)" -gt 0
check "ro0: read-only" test "$(cat /sys/block/$(basename "$RO")/ro)" -eq 1

# --- data integrity: fio crc32c verify, 4k..512k, qd 1 and 128, 2 jobs
fio_verify() { # dev qd size
    fio --name=verify --filename="$1" --direct=1 --ioengine=libaio --rw=randwrite \
        --bsrange=4k-512k --iodepth="$2" --numjobs=2 --size="$3" --offset_increment="$3" \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --group_reporting --norandommap
}
check "file0: fio verify 4k-512k qd1 x2 jobs" fio_verify "$FILE" 1 8M
check "file0: fio verify 4k-512k qd128 x2 jobs" fio_verify "$FILE" 128 32M
check "mem0 (delay filter): fio verify 4k-512k qd128 x2 jobs" fio_verify "$MEM" 128 16M
check "file0: fio verify 4k buffered (page cache, multi-segment)" \
    fio --name=pc --filename="$FILE" --rw=randwrite --bs=64k --size=16M --offset=200M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --ioengine=psync --end_fsync=1

# --- ext4 round trip with fsck and checksums
ext4_round_trip() {
    set -e
    local mnt=$TMPDIR/mnt
    mkdir -p "$mnt"
    mkfs.ext4 -q -F -E nodiscard "$FILE"
    mount "$FILE" "$mnt"
    for i in $(seq 40); do head -c $((RANDOM * 8 + 1)) /dev/urandom >"$mnt/f$i"; done
    cp -r /usr/share/doc/bash "$mnt/doc" 2>/dev/null || true
    (cd "$mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$TMPDIR/sums"
    umount "$mnt"
    # The disk's cached blocks only (a global drop_caches also empties the 9p root's cache,
    # and every later command reads its binary from the host again).
    blockdev --flushbufs "$FILE"
    fsck.ext4 -fn "$FILE"
    mount "$FILE" "$mnt"
    (cd "$mnt" && sha256sum -c --quiet "$TMPDIR/sums")
    fstrim -v "$mnt"
    umount "$mnt"
}
check "file0: ext4 round trip (mkfs, write, fsck, checksums, fstrim)" ext4_round_trip

# --- discard and write-zeroes read back as zeroes
zeroes_after() { # dev how
    set -e
    head -c 8M /dev/urandom | dd of="$1" bs=1M seek=100 oflag=direct status=none
    case $2 in
    discard) blkdiscard -o $((100 << 20)) -l $((8 << 20)) "$1" ;;
    zeroes) blkdiscard -z -o $((100 << 20)) -l $((8 << 20)) "$1" ;;
    esac
    cmp <(dd if="$1" bs=1M skip=100 count=8 iflag=direct status=none) <(head -c 8M /dev/zero)
}
check "file0: discard reads back zeroes" zeroes_after "$FILE" discard
check "file0: write-zeroes reads back zeroes" zeroes_after "$FILE" zeroes
check "mem0: write-zeroes reads back zeroes" zeroes_after "$MEM" zeroes

# --- read-only: reads match the host's pattern, writes are refused
check "ro0: reads the host's data" cmp <(dd if="$RO" bs=1M count=4 iflag=direct status=none) <(yes ublkd-ro | head -c 4M)
check "ro0: writes refused" bash -c "! dd if=/dev/zero of=$RO bs=4k count=1 oflag=direct status=none"
check "ro0: data unchanged" cmp <(dd if="$RO" bs=1M count=4 iflag=direct status=none) <(yes ublkd-ro | head -c 4M)
check "null0: reads zeroes" cmp <(dd if="$NUL" bs=1M count=16 iflag=direct status=none) <(head -c 16M /dev/zero)

# --- kill -9 of the backend under a fio verify write load, restart: no error, no lost write
restart_under_load() { # dev name
    set -e
    local dev=$1 name=$2 b inflight=0
    rm -f "$VHOST_CTL/restarted-$name"
    fio --name=restart --filename="$dev" --direct=1 --ioengine=libaio --rw=randwrite --bs=4k-64k \
        --iodepth=32 --numjobs=2 --size=32M --offset_increment=32M --verify=crc32c \
        --do_verify=1 --verify_fatal=1 --group_reporting --norandommap \
        --output="$LOG_DIR/restart-fio.txt" &
    local fio=$!
    # Kill while the disk has requests in flight. A process start takes ~0.5 s in this guest,
    # so the wait is a loop of shell builtins.
    b=$(basename "$dev")
    local r w deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        read -r r w <"/sys/block/$b/inflight"
        inflight=$((r + w))
        ((inflight >= 16)) && break
    done
    echo "killing the backend with $inflight requests in flight"
    echo "$inflight" >"$VHOST_CTL/kill.tmp" && mv "$VHOST_CTL/kill.tmp" "$VHOST_CTL/kill-$name"
    for _ in $(seq 300); do [[ -e "$VHOST_CTL/restarted-$name" ]] && break; sleep 0.1; done
    [[ -e "$VHOST_CTL/restarted-$name" ]] || { echo "the host did not restart the backend"; return 1; }
    wait $fio
    cat "$LOG_DIR/restart-fio.txt"
    grep -q 'err= 0' "$LOG_DIR/restart-fio.txt"
}
check "slow0: kill -9 + restart under fio verify load" restart_under_load "$SLOW" slow0
check "no I/O errors in the guest's kernel log" test "$(io_errors)" -eq "$errs0"

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]

#!/bin/bash
# The VM suite: runs against the real ublk driver (inside the guest booted by scripts/vm.sh, or
# directly on a host that has /dev/ublk-control). Usage: tests/vm/run.sh [--compat]
#   --compat: the subset for the oldest supported kernel (fio verify per target, ext4 round trip).
#   UBLKD_TESTS="test_a test_b": run only these test functions (development).
# Needs root, fio, e2fsprogs, util-linux. Ends with "N passed, N failed"; exits 1 on any failure.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
UBLKD=${UBLKD:-$ROOT/target/release/ublkd}
COMPAT=0
[ "${1:-}" = "--compat" ] && COMPAT=1
SCRATCH=${SCRATCH:-/tmp/ublkd-suite}
# Logs survive the VM when the host-shared directory is there (scripts/vm.sh mounts it).
# Each run gets its own (scripts/vm.sh's per-run directory, kept when the run fails): two suites
# running at once in two VMs once shared one and the second's start removed the first's files.
if [ -z "${LOG_DIR:-}" ] && [ -n "${UBLKD_VM_OUT:-}" ] && [ -w "$UBLKD_VM_OUT" ]; then
    LOG_DIR=$UBLKD_VM_OUT/suite-logs-$(uname -r)
fi
LOG_DIR=${LOG_DIR:-$SCRATCH/logs}
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH" "$LOG_DIR"
# shellcheck source=lib.sh
. "$HERE/lib.sh"
# shellcheck source=nbd.sh
. "$HERE/nbd.sh"
# shellcheck source=recovery.sh
. "$HERE/recovery.sh"
# shellcheck source=requests.sh
. "$HERE/requests.sh"
# shellcheck source=filters.sh
. "$HERE/filters.sh"
# shellcheck source=qcow2.sh
. "$HERE/qcow2.sh"
# shellcheck source=del.sh
. "$HERE/del.sh"
# shellcheck source=rbd.sh
. "$HERE/rbd.sh"
# shellcheck source=names.sh
. "$HERE/names.sh"
# shellcheck source=stats.sh
. "$HERE/stats.sh"
# shellcheck source=unpriv.sh
. "$HERE/unpriv.sh"
# shellcheck source=systemd.sh
. "$HERE/systemd.sh"
# shellcheck source=shmem.sh
. "$HERE/shmem.sh"

[ -x "$UBLKD" ] || { echo "no ublkd binary at $UBLKD (cargo build --release)"; echo "0 passed, 1 failed"; exit 1; }
modprobe ublk_drv 2>/dev/null
[ -e /dev/ublk-control ] || { echo "ublk_drv is not available"; echo "0 passed, 1 failed"; exit 1; }
echo "kernel $(uname -r), $(nproc) CPUs, ublkd $("$UBLKD" --version)"

# Backing files live on a scratch file system; tmpfs if nothing else (buffered fallback).
BACK=$SCRATCH/back
mkdir -p "$BACK"

fio_verify() { # DEV NAME BS IODEPTH [extra fio args]
    local dev=$1 name=$2 bs=$3 qd=$4; shift 4
    fio --name="$name" --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite \
        $bs --iodepth="$qd" --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --randrepeat=0 --output-format=normal "$@" >"$LOG_DIR/fio-$name.out" 2>&1 || return 1
    grep -q "err= 0" "$LOG_DIR/fio-$name.out" || return 1
    ! grep -qi "verify: bad\|verify failed\|crc32c: verify" "$LOG_DIR/fio-$name.out"
}

test_fio_verify() { # TARGET-ARGS...
    local label=$1; shift
    local dev
    dev=$("$UBLKD" add "$@" -q 2 -d 128) || { fail "verify $label: add"; return; }
    check "verify $label 4k qd1" fio_verify "$dev" "$label-4k-qd1" "--bs=4k" 1
    check "verify $label 4k qd128" fio_verify "$dev" "$label-4k-qd128" "--bs=4k" 128
    check "verify $label 64k-512k qd1" fio_verify "$dev" "$label-big-qd1" "--bsrange=64k-512k" 1
    check "verify $label 64k-512k qd128" fio_verify "$dev" "$label-big-qd128" "--bsrange=64k-512k" 128
    check "del $label" "$UBLKD" del -n "${dev#/dev/ublkb}"
}

test_null_io() {
    local dev
    dev=$("$UBLKD" add -t null --size 4G -q 2) || { fail "null: add"; return; }
    check "null 4k randrw qd128 no errors" fio --name=null --filename="$dev" --ioengine=io_uring --direct=1 \
        --rw=randrw --bs=4k --iodepth=128 --runtime=3 --time_based
    check "null 64k-512k qd1 no errors" fio --name=null2 --filename="$dev" --ioengine=io_uring --direct=1 \
        --rw=randrw --bsrange=64k-512k --iodepth=1 --runtime=2 --time_based
    check "null size is 4G" test "$(blockdev --getsize64 "$dev")" = $((4 << 30))
    check "del null" "$UBLKD" del -n "${dev#/dev/ublkb}"
}

test_ext4() {
    local dev file
    dev=$("$UBLKD" add -t mem --size 256M -q 2) || { fail "ext4 mem: add"; return; }
    check "ext4 on mem: mkfs, write, fsck, checksums" ext4_round_trip "$dev" mem
    check "del ext4 mem" "$UBLKD" del -n "${dev#/dev/ublkb}"

    file=$BACK/ext4.img
    truncate -s 256M "$file"
    dev=$("$UBLKD" add -t file --path "$file" -q 2) || { fail "ext4 file: add"; return; }
    check "ext4 on file: mkfs, write, fsck, checksums" ext4_round_trip "$dev" file
    local devsum
    devsum=$(sha256sum <"$dev" | cut -d' ' -f1)
    check "del ext4 file" "$UBLKD" del -n "${dev#/dev/ublkb}"
    check "file device: backing file holds the device's bytes" test "$devsum" = "$(sha256sum <"$file" | cut -d' ' -f1)"
}

zeroes_after() { # DEV OFFSET LEN: the range reads as zeroes
    cmp -s -n "$3" <(dd if="$1" bs=4096 skip=$(($2 / 4096)) count=$(($3 / 4096)) iflag=direct status=none) /dev/zero
}

discard_and_zeroes() { # DEV
    local dev=$1
    dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none || return 1
    ! zeroes_after "$dev" 0 $((1 << 20)) || return 1
    blkdiscard -o $((1 << 20)) -l $((1 << 20)) "$dev" || return 1
    zeroes_after "$dev" $((1 << 20)) $((1 << 20)) || return 1
    blkdiscard -z -o $((4 << 20)) -l $((2 << 20)) "$dev" || return 1
    zeroes_after "$dev" $((4 << 20)) $((2 << 20)) || return 1
    # Neighbours keep their data.
    ! zeroes_after "$dev" 0 $((1 << 20)) && ! zeroes_after "$dev" $((3 << 20)) $((1 << 20))
}

test_discard() {
    local dev
    dev=$("$UBLKD" add -t mem --size 64M) || { fail "discard mem: add"; return; }
    check "mem: discard and write-zeroes read back zeroes" discard_and_zeroes "$dev"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    truncate -s 64M "$BACK/discard.img"
    dev=$("$UBLKD" add -t file --path "$BACK/discard.img") || { fail "discard file: add"; return; }
    check "file: discard and write-zeroes read back zeroes" discard_and_zeroes "$dev"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

test_deep_queue() {
    local dev
    dev=$("$UBLKD" add -t null --size 1G -q 1 -d 4096) || { fail "depth 4096: add"; return; }
    local idle_pid
    idle_pid=$("$UBLKD" list -n "${dev#/dev/ublkb}" --json | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$')
    echo "depth-4096 daemon RSS at idle: $(awk '/VmRSS/ {print $2}' /proc/"$idle_pid"/status) KiB"
    check "depth 4096 granted" bash -c "'$UBLKD' list -n ${dev#/dev/ublkb} --json | grep -q '\"depth\": 4096'"
    check "fio at qd 4096 completes" fio --name=deep --filename="$dev" --ioengine=io_uring --direct=1 \
        --rw=randread --bs=4k --iodepth=4096 --iodepth_batch_submit=256 --iodepth_batch_complete_max=256 \
        --number_ios=20000 --size=1G
    local pid rss
    pid=$("$UBLKD" list -n "${dev#/dev/ublkb}" --json | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$')
    rss=$(awk '/VmRSS/ {print $2}' /proc/"$pid"/status)
    echo "depth-4096 daemon RSS after load: ${rss} KiB"
    check "depth 4096 daemon RSS under 64 MiB after load" test "${rss:-999999}" -lt 65536
    check "del depth 4096" "$UBLKD" del -n "${dev#/dev/ublkb}"
}

create_delete_32() {
    local i ids=()
    for i in $(seq 1 32); do
        "$UBLKD" add -t null --size 16M -q 1 -d 8 >/dev/null || return 1
    done
    [ "$(ls /dev | grep -c '^ublkb')" -eq 32 ] || return 1
    "$UBLKD" del --all || return 1
    [ "$(ls /dev | grep -c '^ublk[bc]')" -eq 0 ]
}

test_many_devices() {
    check "32 devices created and deleted" create_delete_32
}

test_bad_input() {
    local f=$BACK/small.img
    truncate -s 1M "$f"
    expect_error "bad: unknown target" "invalid value 'qcow9'" "$UBLKD" add -t qcow9 --size 1G
    expect_error "bad: unknown flag" "unexpected argument '--bogus'" "$UBLKD" add -t null --size 1G --bogus
    expect_error "bad: size not a block multiple" "not a multiple of the 512-byte block size" "$UBLKD" add -t null --size 1000
    expect_error "bad: garbage size" "invalid size" "$UBLKD" add -t null --size 12Q
    expect_error "bad: depth 0" "outside 1..=4096" "$UBLKD" add -t null --size 1G -d 0
    expect_error "bad: depth 4097" "outside 1..=4096" "$UBLKD" add -t null --size 1G -d 4097
    expect_error "bad: missing file" "No such file" "$UBLKD" add -t file --path "$BACK/none.img"
    expect_error "bad: directory as file" "neither a regular file" "$UBLKD" add -t file --path "$BACK"
    expect_error "bad: file smaller than --size" "smaller than --size" "$UBLKD" add -t file --path "$f" --size 2M
    expect_error "bad: del of missing id" "device 77 does not exist" "$UBLKD" del -n 77
    expect_error "bad: list of missing id" "device 77 does not exist" "$UBLKD" list -n 77
    local dev
    dev=$("$UBLKD" add -t null --size 1G -n 5) || { fail "bad: add id 5"; return; }
    expect_error "bad: id in use" "device id 5 is already in use" "$UBLKD" add -t null --size 1G -n 5
    "$UBLKD" del -n 5
    if id nobody >/dev/null 2>&1; then
        expect_error "bad: not root" "only root can add a privileged device: add --unprivileged" \
            setpriv --reuid=65534 --regid=65534 --clear-groups "$UBLKD" add -t null --size 1G
        expect_error "bad: not root, control device closed to users" "run as root, or install contrib/udev/70-ublkd-unprivileged.rules" \
            setpriv --reuid=65534 --regid=65534 --clear-groups "$UBLKD" list
    fi
    check_clean "bad input leaves nothing behind"
    # Last: without the driver (no devices may exist for rmmod to work).
    if rmmod ublk_drv 2>/dev/null; then
        expect_error "bad: driver not loaded" "modprobe ublk_drv" "$UBLKD" add -t null --size 1G
        expect_error "bad: list without driver" "modprobe ublk_drv" "$UBLKD" list
        modprobe ublk_drv
    else
        fail "bad: driver not loaded" "could not rmmod ublk_drv"
    fi
}

test_features() {
    check "features lists CMD_IOCTL_ENCODE" bash -c "'$UBLKD' features --json | grep -q CMD_IOCTL_ENCODE"
}

test_list_json() {
    local dev out
    dev=$("$UBLKD" add -t mem --size 64M -q 1 -d 32) || { fail "list: add"; return; }
    out=$("$UBLKD" list --json)
    check "list --json shows the device live with its target" \
        bash -c "echo '$out' | grep -q '\"state\": \"live\"' && echo '$out' | grep -q '\"depth\": 32' && echo '$out' | grep -q 'mem 64M'"
    check "list, list --json and features into a reader that already left: exit 0, no panic" \
        reports_survive_a_closed_reader
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

# `ublkd list --json | grep -q live` under pipefail: grep may leave before list writes, and
# list must then end quietly with status 0 (it used to panic in println!, status 134).
reports_survive_a_closed_reader() {
    local args rc
    for args in "list" "list --json" "features" "features --json"; do
        # shellcheck disable=SC2086
        "$UBLKD" $args 2>"$LOG_DIR/closed-reader.err" | true
        rc=${PIPESTATUS[0]}
        [ "$rc" = 0 ] || { echo "ublkd $args: status $rc"; cat "$LOG_DIR/closed-reader.err"; return 1; }
        ! grep -q panicked "$LOG_DIR/closed-reader.err" || { echo "ublkd $args panicked"; return 1; }
    done
}

test_user_copy() {
    local dev
    dev=$("$UBLKD" add -t mem --size 64M -q 2 --user-copy) || { fail "user-copy: add"; return; }
    check "user-copy: list shows the mode" bash -c "'$UBLKD' list --json | grep -q '\"mode\": \"user-copy\"'"
    check "user-copy mem verify 4k-512k qd32" fio_verify "$dev" "usercopy" "--bsrange=4k-512k" 32
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

mode_of() { # ID: the buffer mode `list --json` reports
    "$UBLKD" list --json | python3 -c "import json,sys; print([d['mode'] for d in json.load(sys.stdin) if d['id'] == $1][0])"
}

kernel_has() { "$UBLKD" features --json | grep -q "\"$1\""; }

refused_cleanly() { # EXPECTED-MESSAGE-PART ADD-ARGS...: add fails with that message, leaves nothing
    local want=$1 out; shift
    out=$("$UBLKD" add "$@" 2>&1) && { echo "add succeeded: $out"; return 1; }
    echo "$out" | grep -q "$want" || { echo "unexpected error: $out"; return 1; }
    [ "$(echo "$out" | wc -l)" = 1 ] || { echo "not one line: $out"; return 1; }
    [ -z "$(ls /dev/ublkb* 2>/dev/null)" ] && [ -z "$(ls /run/ublkd/*.json 2>/dev/null)" ]
}

# Buffer modes (--buffers): zero copy where the kernel has AUTO_BUF_REG and the target never
# touches bytes, copy otherwise; every mode passes verify, and impossible requests are refused.
test_buffer_modes() {
    local dev id
    truncate -s 256M "$BACK/zc.img"
    dev=$("$UBLKD" add -t mem --size 64M) || { fail "buffers: add mem"; return; }
    check "buffers auto: mem target gets copy mode" test "$(mode_of "${dev#/dev/ublkb}")" = copy
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    dev=$("$UBLKD" add -t null --size 1G) || { fail "buffers: add null"; return; }
    if kernel_has AUTO_BUF_REG; then
        check "buffers auto: null target gets zero-copy (reads filled from /dev/zero)" \
            test "$(mode_of "${dev#/dev/ublkb}")" = zero-copy
    else
        check "buffers auto without AUTO_BUF_REG: null target gets user-copy (writes move nothing)" \
            test "$(mode_of "${dev#/dev/ublkb}")" = user-copy
    fi
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    dev=$("$UBLKD" add -t null --size 1G --buffers user-copy) || { fail "buffers: add null user-copy"; return; }
    check "null user-copy 4k-512k randrw qd64 no errors" fio --name=ucnull --filename="$dev" \
        --ioengine=io_uring --direct=1 --rw=randrw --bsrange=4k-512k --iodepth=64 --runtime=2 --time_based
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    check "buffers: zero-copy for the mem target is refused in one line, nothing left" \
        refused_cleanly "cannot use zero-copy" -t mem --size 64M --buffers zero-copy
    if ! kernel_has AUTO_BUF_REG; then
        dev=$("$UBLKD" add -t file --path "$BACK/zc.img") || { fail "buffers: add file"; return; }
        check "buffers auto without AUTO_BUF_REG: file target falls back to copy" \
            test "$(mode_of "${dev#/dev/ublkb}")" = copy
        check "buffers auto fallback: file verify 4k-512k qd32" fio_verify "$dev" "fallback" "--bsrange=4k-512k" 32
        "$UBLKD" del -n "${dev#/dev/ublkb}"
        check "buffers: zero-copy without AUTO_BUF_REG is refused in one line, nothing left" \
            refused_cleanly "lacks AUTO_BUF_REG" -t file --path "$BACK/zc.img" --buffers zero-copy
        return
    fi
    dev=$("$UBLKD" add -t file --path "$BACK/zc.img" -q 2) || { fail "buffers: add file"; return; }
    id=${dev#/dev/ublkb}
    check "buffers auto with AUTO_BUF_REG: file target gets zero-copy" test "$(mode_of "$id")" = zero-copy
    check "zero-copy file verify 4k-512k qd32" fio_verify "$dev" "zc-file" "--bsrange=4k-512k" 32
    check "zero-copy file: ext4 round trip" ext4_round_trip "$dev" zc
    "$UBLKD" del -n "$id"
    dev=$("$UBLKD" add -t file --path "$BACK/zc.img" --buffered -q 2 --buffers zero-copy) \
        || { fail "buffers: add buffered zero-copy file"; return; }
    check "zero-copy buffered file verify 4k-512k qd32" fio_verify "$dev" "zc-buffered" "--bsrange=4k-512k" 32
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    dev=$("$UBLKD" add -t null --size 1G --buffers zero-copy) || { fail "buffers: add null"; return; }
    check "zero-copy null 4k-512k randrw qd128 no errors" fio --name=zcnull --filename="$dev" \
        --ioengine=io_uring --direct=1 --rw=randrw --bsrange=4k-512k --iodepth=128 --runtime=3 --time_based
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    dev=$("$UBLKD" add -t file --path "$BACK/zc.img" -q 2 --buffers copy) || { fail "buffers: add copy"; return; }
    check "buffers copy: list shows copy" test "$(mode_of "${dev#/dev/ublkb}")" = copy
    check "copy-mode file verify 4k-512k qd32" fio_verify "$dev" "copy-file" "--bsrange=4k-512k" 32
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

# The file target's inline I/O (--inline-io): a file on tmpfs, which io_uring can only serve
# through a worker thread per request, is read and written with blocking calls on the queue
# threads; with zero copy only requests that find their queue idle take that path (through user
# copy), deeper ones stay zero-copy. A file on a disk file system goes through io_uring.
io_note_says() { grep 'reads and writes' "/run/ublkd/$1.log" | tail -1 | grep -q "$2"; } # ID TEXT
# LOG WHAT QUEUES: the sum of "N WHAT" over the last daemon's queue lines in LOG (its exit log
# has one line per queue).
queue_count() {
    grep -o "[0-9]* $2" "$1" | tail -"$3" | awk '{ n += $1 } END { print n + 0 }'
}

served_inline() { # ID QUEUES: requests the last daemon of this id served inline
    queue_count "/run/ublkd/$1.log" "served inline" "$2"
}

test_inline_io() {
    local dev id mnt=$SCRATCH/inline-tmpfs ext=$SCRATCH/inline-ext4 loopdev zc=0
    kernel_has AUTO_BUF_REG && kernel_has USER_COPY && zc=1
    mkdir -p "$mnt" "$ext"
    mount -t tmpfs -o size=400M tmpfs "$mnt" || { fail "inline-io: mount tmpfs"; return; }
    truncate -s 256M "$mnt/disk.img"
    dev=$("$UBLKD" add -t file --path "$mnt/disk.img" -q 2 -d 128) || { fail "inline-io: add"; umount "$mnt"; return; }
    id=${dev#/dev/ublkb}
    check "inline-io auto: a file on tmpfs is read and written inline" \
        io_note_says "$id" 'inline on the queue threads'
    [ "$zc" = 1 ] && check "inline-io auto: still zero-copy for deep queues" test "$(mode_of "$id")" = zero-copy
    check "inline-io auto: verify 4k qd1" fio_verify "$dev" inline-qd1 "--bs=4k" 1
    check "inline-io auto: verify 4k-512k qd128" fio_verify "$dev" inline-qd128 "--bsrange=4k-512k" 128
    check "inline-io auto: ext4 round trip" ext4_round_trip "$dev" inline
    "$UBLKD" del -n "$id"
    if [ "$zc" = 1 ]; then
        check "inline-io auto with zero copy: idle-queue requests took the inline path" \
            test "$(served_inline "$id" 2)" -gt 0
    fi
    dev=$("$UBLKD" add -t file --path "$mnt/disk.img" -q 2 --inline-io off) || { fail "inline-io off: add"; umount "$mnt"; return; }
    id=${dev#/dev/ublkb}
    check "inline-io off: through io_uring" io_note_says "$id" 'through io_uring'
    check "inline-io off: list names the choice" bash -c "'$UBLKD' list -n $id | grep -q 'inline-io off'"
    check "inline-io off: verify 4k qd1" fio_verify "$dev" inline-off-qd1 "--bs=4k" 1
    "$UBLKD" del -n "$id"
    check "inline-io off: nothing served inline" test "$(served_inline "$id" 2)" = 0
    dev=$("$UBLKD" add -t file --path "$mnt/disk.img" -q 2 --buffers copy) || { fail "inline-io copy: add"; umount "$mnt"; return; }
    check "inline-io auto, copy buffers: verify 4k-512k qd32" fio_verify "$dev" inline-copy "--bsrange=4k-512k" 32
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    # A disk file system: ext4 on a loop device.
    truncate -s 128M "$mnt/ext4.img"
    loopdev=$(losetup -f --show "$mnt/ext4.img") && mkfs.ext4 -q "$loopdev" && mount "$loopdev" "$ext" \
        || { fail "inline-io: ext4 scratch"; umount "$mnt"; return; }
    truncate -s 64M "$ext/disk.img"
    dev=$("$UBLKD" add -t file --path "$ext/disk.img" -q 2) || fail "inline-io ext4: add"
    if [ -n "$dev" ]; then
        id=${dev#/dev/ublkb}
        check "inline-io auto: a file on ext4 goes through io_uring" \
            io_note_says "$id" 'through io_uring (not a file system in memory)'
        check "inline-io auto, ext4: verify 4k qd1" fio_verify "$dev" inline-ext4 "--bs=4k" 1
        "$UBLKD" del -n "$id"
    fi
    umount "$ext"; losetup -d "$loopdev"; umount "$mnt"
}

io_cmds_of() { # ID: the I/O command style `list --json` reports
    "$UBLKD" list --json | python3 -c "import json,sys; print([d['io_cmds'] for d in json.load(sys.stdin) if d['id'] == $1][0])"
}

# Batch I/O commands (--io-cmds): batch where the kernel has BATCH_IO (the default there, so
# the rest of the suite runs batch on 7.3 and per-tag on 6.12); every buffer mode verifies in
# both styles; batch without kernel support is refused.
test_batch_io() {
    local dev id m
    truncate -s 256M "$BACK/batch.img"
    if ! kernel_has BATCH_IO; then
        dev=$("$UBLKD" add -t null --size 1G) || { fail "batch: add null"; return; }
        check "io-cmds auto without BATCH_IO: per-tag" test "$(io_cmds_of "${dev#/dev/ublkb}")" = per-tag
        "$UBLKD" del -n "${dev#/dev/ublkb}"
        check "io-cmds: batch without BATCH_IO is refused in one line, nothing left" \
            refused_cleanly "lacks BATCH_IO" -t null --size 1G --io-cmds batch
        return
    fi
    dev=$("$UBLKD" add -t null --size 1G -q 2) || { fail "batch: add null"; return; }
    id=${dev#/dev/ublkb}
    check "io-cmds auto with BATCH_IO: batch" test "$(io_cmds_of "$id")" = batch
    check "batch null 4k-512k randrw qd128 no errors" fio --name=bnull --filename="$dev" \
        --ioengine=io_uring --direct=1 --rw=randrw --bsrange=4k-512k --iodepth=128 --runtime=3 --time_based
    "$UBLKD" del -n "$id"
    for m in zero-copy copy user-copy; do
        dev=$("$UBLKD" add -t file --path "$BACK/batch.img" -q 2 --buffers "$m" --io-cmds batch) \
            || { fail "batch: add file $m"; continue; }
        check "batch $m file verify 4k-512k qd32" fio_verify "$dev" "batch-$m" "--bsrange=4k-512k" 32
        "$UBLKD" del -n "${dev#/dev/ublkb}"
    done
    check "batch: fetches the driver ends (tiny rings) are re-armed, verify passes" \
        batch_fetch_rearmed "$BACK/batch.img"
    dev=$("$UBLKD" add -t mem --size 64M -q 1 -d 8 --io-cmds batch) || { fail "batch: add mem d8"; return; }
    check "batch mem depth 8 verify at qd32 (more requests than tags)" fio_verify "$dev" "batch-d8" "--bsrange=4k-128k" 32
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    dev=$("$UBLKD" add -t null --size 1G --recovery on) || { fail "batch: add recovery on"; return; }
    id=${dev#/dev/ublkb}
    check "batch: upgrade without --recovery reissue is refused, device still live" \
        upgrade_refused_without_reissue "$id"
    "$UBLKD" del -n "$id"
    dev=$("$UBLKD" add -t file --path "$BACK/batch.img" -q 2 --io-cmds per-tag) || { fail "batch: add per-tag"; return; }
    id=${dev#/dev/ublkb}
    check "io-cmds per-tag: list shows per-tag" test "$(io_cmds_of "$id")" = per-tag
    check "per-tag zero-copy file verify 4k-512k qd32" fio_verify "$dev" "pertag" "--bsrange=4k-512k" 32
    "$UBLKD" del -n "$id"
}

# Rings of 16 entries under 128 requests in flight per queue: the driver runs out of fetch
# buffers while completions wait in the CQ overflow list and ends the multishot fetch; the daemon
# must arm it again without losing a tag (fio verify) and say so in its shutdown lines.
batch_fetch_rearmed() { # BACKING-FILE
    local dev id log rearms
    dev=$(UBLKD_FAULT_RING_ENTRIES=16 "$UBLKD" add -t file --path "$1" -q 2 -d 128 --io-cmds batch) || return 1
    id=${dev#/dev/ublkb}
    fio_verify "$dev" batch-rearm "--bsrange=4k-64k" 128 --numjobs=2 --offset_increment=64M --size=32M \
        --group_reporting || { "$UBLKD" del -n "$id"; return 1; }
    "$UBLKD" del -n "$id" || return 1
    # The log is appended to by every daemon that had this id: only this one's lines count.
    log=$(awk '/stopping device/ { s = "" } /fetch re-arms/ { s = s $0 "\n" } END { printf "%s", s }' \
        "/run/ublkd/$id.log")
    echo "$log"
    [ "$(echo "$log" | grep -c " 0 errors")" = 2 ] || return 1
    rearms=$(echo "$log" | grep -o '[0-9]* fetch re-arms' | awk '{ n += $1 } END { print n + 0 }')
    [ "$rearms" -gt 0 ]
}

upgrade_refused_without_reissue() { # ID
    local out
    out=$("$UBLKD" upgrade -n "$1" 2>&1) && { echo "upgrade succeeded: $out"; return 1; }
    echo "$out" | grep -q "not created with --recovery reissue" || { echo "unexpected: $out"; return 1; }
    "$UBLKD" list -n "$1" | grep -q live
}

# A queue thread that fails before fetching (fault injected) makes `add` fail in one line with
# the queue's error, instead of leaving START_DEV waiting forever; nothing is left behind.
add_fails_when_queues_cannot_start() {
    local out
    out=$(UBLKD_FAULT_QUEUE_START=1 timeout 60 "$UBLKD" add -t null --size 1G 2>&1) \
        && { echo "add succeeded: $out"; return 1; }
    echo "$out" | grep -q "did not start: UBLKD_FAULT_QUEUE_START" || { echo "unexpected error: $out"; return 1; }
    [ "$(echo "$out" | wc -l)" = 1 ] || { echo "not one line: $out"; return 1; }
    [ -z "$(ls /dev/ublkb* 2>/dev/null)" ] && [ -z "$(ls /run/ublkd/*.json 2>/dev/null)" ]
}

test_queue_start_failure() {
    check "add fails in one line when a queue cannot start, nothing left" add_fails_when_queues_cannot_start
}

# timed TEST ARGS...: run one test and note its wall time (printed, slowest first, at the end:
# CI must stay under an hour, and this says where the suite's time goes).
timed() {
    local t0=$SECONDS
    "$@"
    echo "$((SECONDS - t0)) s  $*" >>"$LOG_DIR/test-times.txt"
}

truncate -s 256M "$BACK/verify.img"
if [ -n "${UBLKD_TESTS:-}" ]; then
    # Development: only the named test functions (UBLKD_TESTS="test_buffer_modes test_ext4").
    for t in $UBLKD_TESTS; do timed "$t"; done
elif [ "$COMPAT" = 1 ]; then
    timed test_buffer_modes
    timed test_batch_io
    timed test_fio_verify mem -t mem --size 256M
    timed test_fio_verify file -t file --path "$BACK/verify.img"
    timed test_null_io
    timed test_ext4
    timed test_large_discard
    timed test_null_reads_zero
    timed test_refused_commit
    timed check "recovery: kill -9 under fio verify writer, recover (6.12)" kill_and_recover_under_fio
    timed test_del_safety
    timed test_resize_refused
    timed test_shmem
    timed test_unprivileged
    # Not here, to keep CI under an hour: inline I/O (decided by the file system under the
    # file, not by a kernel feature; the copy-buffer path it takes here is in the 7.3 run),
    # filters, qcow2, names, statistics and NBD metrics
    # (the 7.3 run covers them; they depend on no kernel feature 6.12 lacks: their helpers
    # passed on 6.12 when written, see the issue notes).
else
    timed test_features
    timed test_fio_verify mem -t mem --size 256M
    timed test_fio_verify file -t file --path "$BACK/verify.img"
    timed test_fio_verify file-buffered -t file --path "$BACK/verify.img" --buffered
    timed test_null_io
    timed test_user_copy
    timed test_buffer_modes
    timed test_batch_io
    timed test_inline_io
    timed test_queue_start_failure
    timed test_ext4
    timed test_discard
    timed test_large_discard
    timed test_null_reads_zero
    timed test_refused_commit
    timed test_error_filter
    timed test_rate_filter
    timed test_filter_stack
    timed test_deep_queue
    timed test_many_devices
    timed test_list_json
    timed test_nbd_export_kernel_client
    timed test_nbd_target_over_nbdkit
    timed test_recovery
    timed test_recovery_more
    timed test_qcow2
    timed test_qcow2_recovery
    timed test_del_safety
    timed test_unprivileged
    timed test_rbd
    timed test_names
    timed test_resize
    timed test_systemd_boot
    timed test_shmem
    timed test_stats
    timed test_stats_prometheus
    timed test_export_metrics
    timed test_bad_input
fi
"$UBLKD" del --all 2>/dev/null
check_clean "no device, daemon or state file left after the suite"

echo
if [ -s "$LOG_DIR/test-times.txt" ]; then echo "test times (slowest first):"; sort -rn "$LOG_DIR/test-times.txt" | head -40; fi
if [ -s "$LOG_DIR/recovery-times.txt" ]; then echo "recovery timings:"; cat "$LOG_DIR/recovery-times.txt"; fi
[ "$FAILED" -gt 0 ] && printf 'failed: %s\n' "${FAILED_NAMES[@]}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

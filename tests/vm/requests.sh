# shellcheck shell=bash
# What requests complete with, at the edges (sourced by run.sh after lib.sh; uses $UBLKD,
# $SCRATCH, $LOG_DIR, $BACK):
#   test_large_discard    discard and write-zeroes of 2 GiB and more (a result past i32 once
#                         failed them), then mkfs.ext4 on an 8 GiB device: no I/O error
#   test_null_reads_zero  a null device's reads are zeroes in every buffer mode, never what the
#                         reader's buffer or a page-cache page held
#   test_refused_commit   a commit the driver refuses fails that one request with EIO instead of
#                         leaving it hanging; the device goes on

# dmesg lines about I/O errors on ublk devices since MARK (a line count of dmesg).
ublk_io_errors_since() { dmesg | tail -n +$(($1 + 1)) | grep -iE 'ublkb.*(error|fail)|I/O error.*ublkb|critical.*ublkb' || true; }

# The range reads as zeroes, checked at its start, middle and end (1 MiB each).
spots_zero() { # DEV OFFSET LEN
    local o
    for o in "$2" $(($2 + $3 / 2)) $(($2 + $3 - (1 << 20))); do
        cmp -s -n $((1 << 20)) <(dd if="$1" bs=1M skip=$((o >> 20)) count=1 iflag=direct status=none) /dev/zero ||
            { echo "not zero at $o"; return 1; }
    done
}

# Put data at the start, middle and end of a range.
spots_data() { # DEV OFFSET LEN
    local o
    for o in "$2" $(($2 + $3 / 2)) $(($2 + $3 - (1 << 20))); do
        dd if=/dev/urandom of="$1" bs=1M seek=$((o >> 20)) count=1 oflag=direct status=none || return 1
    done
}

large_discards_succeed() { # DEV
    local dev=$1 mark out
    mark=$(dmesg | wc -l)
    spots_data "$dev" $((1 << 30)) $((3 << 30)) || return 1
    blkdiscard -o $((1 << 30)) -l $((3 << 30)) "$dev" || { echo "blkdiscard of 3 GiB failed"; return 1; }
    spots_zero "$dev" $((1 << 30)) $((3 << 30)) || return 1
    spots_data "$dev" $((4 << 30)) $((3 << 30)) || return 1
    blkdiscard -z -o $((4 << 30)) -l $((3 << 30)) "$dev" || { echo "blkdiscard -z of 3 GiB failed"; return 1; }
    spots_zero "$dev" $((4 << 30)) $((3 << 30)) || return 1
    blkdiscard "$dev" || { echo "blkdiscard of the whole device failed"; return 1; }
    mkfs.ext4 -q -F "$dev" || { echo "mkfs.ext4 failed"; return 1; }
    fsck.ext4 -fn "$dev" || return 1
    out=$(ublk_io_errors_since "$mark")
    [ -z "$out" ] || { echo "dmesg: $out"; return 1; }
}

test_large_discard() {
    local dev img=$SCRATCH/large-ext4.img mnt=$SCRATCH/large-ext4 loopdev
    # The file lives on ext4 (on a sparse loop image), which zeroes ranges as metadata: the
    # guest's small tmpfs could not hold 3 GiB of written zeroes.
    mkdir -p "$mnt"
    truncate -s 10G "$img"
    loopdev=$(losetup -f --show "$img") && mkfs.ext4 -q "$loopdev" && mount "$loopdev" "$mnt" ||
        { fail "large discard: ext4 scratch"; return; }
    truncate -s 8G "$mnt/large.img"
    dev=$("$UBLKD" add -t file --path "$mnt/large.img" -q 2)
    if [ -n "$dev" ]; then
        check "file 8 GiB: discard 3 GiB, write-zeroes 3 GiB, discard all, mkfs: no I/O error" \
            large_discards_succeed "$dev"
        "$UBLKD" del -n "${dev#/dev/ublkb}"
    else
        fail "large discard: add file"
    fi
    umount "$mnt"; losetup -d "$loopdev"; rm -f "$img"
    dev=$("$UBLKD" add -t mem --size 8G -q 2) || { fail "large discard: add mem"; return; }
    check "mem 8 GiB: discard 3 GiB, write-zeroes 3 GiB, discard all, mkfs: no I/O error" \
        large_discards_succeed "$dev"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

# Read DEV at 1 MiB into a buffer holding 0xa5 (O_DIRECT), and then through the page cache after
# dirtying memory with 0xa5: every byte must be zero.
null_reads_zero() { # DEV
    python3 - "$1" <<'PY'
import mmap, os, sys
dev = sys.argv[1]
fd = os.open(dev, os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
for _ in range(3):
    buf.write(b"\xa5" * (1 << 20)); buf.seek(0)
    os.pwritev(fd, [buf], 1 << 20)
    n = os.preadv(fd, [buf], 1 << 20)
    assert n == 1 << 20 and buf[:] == bytes(1 << 20), "O_DIRECT read returned non-zero bytes"
os.close(fd)
# Freed page-cache and anonymous pages that held 0xa5 are what a buffered read may be given.
junk = [b"\xa5" * (1 << 20) for _ in range(64)]
del junk
# Drop the device's cached pages only: a global drop_caches also emptied the cache of the
# guest's 9p root, and every command after it read its binary from the host again (this test
# took 100 s per device under TCG).
fd = os.open(dev, os.O_RDONLY)
os.fsync(fd)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
os.close(fd)
with open(dev, "rb") as f:
    data = f.read(16 << 20)
assert data == bytes(16 << 20), "buffered read returned non-zero bytes"
PY
}

test_null_reads_zero() {
    local dev args
    for args in "" "--buffers copy" "--buffers user-copy" "--buffers zero-copy" "--io-cmds per-tag" \
        "--buffers user-copy --io-cmds per-tag"; do
        if [[ $args == *zero-copy* ]] && ! kernel_has AUTO_BUF_REG; then continue; fi
        # shellcheck disable=SC2086
        dev=$("$UBLKD" add -t null --size 1G -q 2 $args) || { fail "null zeroes ${args:-auto}: add"; continue; }
        check "null ${args:-auto} ($(mode_of "${dev#/dev/ublkb}")): reads are zeroes, never old memory" \
            null_reads_zero "$dev"
        "$UBLKD" del -n "${dev#/dev/ublkb}"
    done
}

# The 20th commit of each queue names no buffer (copy mode), which the driver refuses: exactly
# one 4 KiB read fails with EIO (a second commit carried the error), the others succeed, and
# the device keeps working; without the retry the read hung.
refused_commit_fails_one_request() { # IO-CMDS
    local dev id i failed=0
    dev=$(UBLKD_FAULT_REFUSE_COMMIT=20 "$UBLKD" add -t mem --size 64M -q 1 -d 4 --buffers copy \
        --io-cmds "$1") || return 1
    id=${dev#/dev/ublkb}
    for i in $(seq 0 59); do
        timeout 20 dd if="$dev" of=/dev/null bs=4k skip="$i" count=1 iflag=direct status=none 2>>"$LOG_DIR/refused-$1.err" ||
            failed=$((failed + 1))
    done
    echo "failed reads: $failed"
    cat "$LOG_DIR/refused-$1.err"
    local ok=1
    [ "$failed" = 1 ] || ok=0
    grep -q "Input/output error" "$LOG_DIR/refused-$1.err" || ok=0
    grep -q "refused" "/run/ublkd/$id.log" || { echo "no log line"; ok=0; }
    "$UBLKD" list -n "$id" | grep -q live || ok=0
    "$UBLKD" del -n "$id" || ok=0
    [ "$ok" = 1 ]
}

test_refused_commit() {
    check "per-tag: a refused commit fails one request with EIO, the device goes on" \
        refused_commit_fails_one_request per-tag
    if kernel_has BATCH_IO; then
        check "batch: a refused commit fails one request with EIO, the device goes on" \
            refused_commit_fails_one_request batch
    fi
}

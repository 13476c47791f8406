#!/bin/bash
# The rbd target against a real cluster, on the host: `ublkd export -t rbd` under fio's nbd
# engine, qemu-io, nbdinfo and the rbd CLI (the broad data-path suite; the ublk device tests
# run in the VM, tests/vm/rbd.sh). Starts its own cluster with scripts/ceph.sh and removes it.
# Usage: tests/rbd/host.sh   (root; needs scripts/install-deps.sh's packages and a release build)
#   UBLKD_RBD_TESTS="t_a t_b": only these test functions.
# Ends with "N passed, N failed"; exits 1 on any failure.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
UBLKD=${UBLKD:-$ROOT/target/release/ublkd}
SCRATCH=$(mktemp -d /tmp/ublkd-rbd-host.XXXXXX)
LOG_DIR=$SCRATCH/logs
CLUSTER=$SCRATCH/cluster
mkdir -p "$LOG_DIR"
# shellcheck source=../vm/lib.sh
. "$ROOT/tests/vm/lib.sh"
# shellcheck source=common.sh
. "$HERE/common.sh"

cleanup() {
    stop_exports
    "$ROOT/scripts/ceph.sh" stop "$CLUSTER" >/dev/null 2>&1
}
trap cleanup EXIT

[ -x "$UBLKD" ] || { echo "no ublkd binary at $UBLKD (cargo build --release)"; echo "0 passed, 1 failed"; exit 1; }
t0=$(date +%s)
if ! "$ROOT/scripts/ceph.sh" start "$CLUSTER" >"$LOG_DIR/ceph-start.log" 2>&1; then
    cat "$LOG_DIR/ceph-start.log"
    echo "0 passed, 1 failed"
    exit 1
fi
tail -1 "$LOG_DIR/ceph-start.log"
CONF=$CLUSTER/ceph.conf

# The librbd-level tests of the crate (a dropped request future, completions routed between
# queues) need a cluster too: run them here.
t_crate_against_cluster() {
    check "rbd crate tests against the cluster (cargo test -p rbd -- --ignored)" \
        env UBLKD_TEST_CEPH_CONF="$CONF" cargo test -q --release -p rbd -- --ignored --test-threads 1
}

t_verify() {
    rbd -c "$CONF" create --size 512M rbd/verify || { fail "verify: create"; return; }
    start_export verify --image rbd/verify --connections 2 || { fail "verify: export"; return; }
    local u=$EXPORT_URI
    check "export rbd: verify 4k qd1" fio_nbd_verify "$u" v4k1 --bs=4k --iodepth=1 --size=8M
    check "export rbd: verify 4k qd128, 2 connections" fio_nbd_verify "$u" v4k128 --bs=4k \
        --iodepth=128 --numjobs=2 --offset_increment=128M --size=32M
    check "export rbd: verify 64k-512k qd1" fio_nbd_verify "$u" vbig1 --bsrange=64k-512k --iodepth=1 --size=32M
    check "export rbd: verify 64k-512k qd128, 2 connections" fio_nbd_verify "$u" vbig128 \
        --bsrange=64k-512k --iodepth=128 --numjobs=2 --offset_increment=128M --size=64M
    check "export rbd: the image holds what was written (rbd export vs NBD read)" \
        same_bytes_as_rbd "$u" rbd/verify
    stop_exports
}

# Writes, discards and write-zeroes through the export; `rbd export` must give exactly the
# expected bytes and `rbd diff` must no longer list the discarded object.
discard_zeroes_expected() {
    local u=$1 img=$2 exp=$SCRATCH/expected.img got=$SCRATCH/got.img m=$((1 << 20))
    qemu-io -f raw -c "write -P 0xa5 0 12M" -c "discard 4M 4M" -c "write -z 9M 1M" \
        -c "discard 1M 64k" -c "write -z 2052k 8k" -c flush "$u" >"$LOG_DIR/qemu-io.log" || return 1
    python3 - "$exp" <<'EOF' || return 1
import sys
m = 1 << 20
b = bytearray(b"\xa5" * (12 * m)) + bytearray(4 * m)
for off, ln in ((4 * m, 4 * m), (9 * m, m), (m, 64 << 10), (2052 << 10, 8 << 10)):
    b[off:off + ln] = bytes(ln)
open(sys.argv[1], "wb").write(b)
EOF
    rbd -c "$CONF" export --no-progress "$img" "$got" 2>/dev/null || return 1
    cmp -n $((16 * m)) "$exp" "$got" || return 1
    # The rest of the image was never written.
    cmp -i $((16 * m)) -n $((64 * m)) "$got" /dev/zero || return 1
    # Object 1 ([4M, 8M)) was discarded whole: rbd diff lists objects 0 and 2 only.
    rbd -c "$CONF" diff --whole-object --format json "$img" >"$SCRATCH/diff.json" || return 1
    python3 - "$SCRATCH/diff.json" <<'EOF'
import json, sys
m = 1 << 20
d = [(e["offset"], e["length"]) for e in json.load(open(sys.argv[1])) if e["exists"] == "true"]
print(d)
assert (4 * m, 4 * m) not in d, d
assert (0, 4 * m) in d and (8 * m, 4 * m) in d, d
EOF
}

# NBD BLOCK_STATUS from rbd_diff_iterate2 agrees with what was written and discarded.
block_status_map() {
    local u=$1
    nbdinfo --map "$u" >"$SCRATCH/map.txt" || return 1
    cat "$SCRATCH/map.txt"
    python3 - "$SCRATCH/map.txt" <<'EOF'
import sys
m = 1 << 20
ext = []
for line in open(sys.argv[1]):
    f = line.split()
    ext.append((int(f[0]), int(f[1]), int(f[2])))
def state(off):
    for o, l, t in ext:
        if o <= off < o + l:
            return t
    raise SystemExit(f"offset {off} not covered")
assert state(0) & 1 == 0, "written data reported as a hole"
assert state(5 * m) & 1 == 1, "discarded object reported as data"
assert state(100 * m) & 1 == 1, "never-written range reported as data"
EOF
}

t_discard_zeroes() {
    rbd -c "$CONF" create --size 256M rbd/dz || { fail "discard: create"; return; }
    start_export dz --image rbd/dz || { fail "discard: export"; return; }
    check "export rbd: discard/write-zeroes, then rbd export and rbd diff show the expected bytes" \
        discard_zeroes_expected "$EXPORT_URI" rbd/dz
    check "export rbd: BLOCK_STATUS (nbdinfo --map) from rbd_diff_iterate2" block_status_map "$EXPORT_URI"
    stop_exports
}

# ext4 through the export: nbdfuse makes it a file, a loop device a disk.
ext4_via_nbdfuse() {
    local u=$1 mnt=$SCRATCH/fuse loopdev rc=0
    mkdir -p "$mnt"
    nbdfuse "$mnt" "$u" &
    local fpid=$!
    for _ in $(seq 1 100); do [ -e "$mnt/nbd" ] && break; sleep 0.1; done
    loopdev=$(losetup -f --show --direct-io=on "$mnt/nbd") || { kill $fpid; return 1; }
    SCRATCH=$SCRATCH ext4_round_trip "$loopdev" rbdhost || rc=1
    losetup -d "$loopdev"
    fusermount3 -u "$mnt" 2>/dev/null || fusermount -u "$mnt" 2>/dev/null || umount "$mnt"
    wait $fpid
    return $rc
}

t_ext4() {
    if [ ! -e /dev/fuse ] || ! command -v nbdfuse >/dev/null || ! losetup -f >/dev/null 2>&1; then
        echo "SKIP: ext4 on the host needs /dev/fuse, nbdfuse and a loop device (the VM suite has it)"
        return
    fi
    rbd -c "$CONF" create --size 256M rbd/ext4 || { fail "ext4: create"; return; }
    start_export ext4 --image rbd/ext4 --connections 2 || { fail "ext4: export"; return; }
    check "export rbd: ext4 round trip (mkfs, write, fsck, checksums) through nbdfuse" \
        ext4_via_nbdfuse "$EXPORT_URI"
    stop_exports
}

snapshot_read_only() {
    local u=$1
    # Reads the snapshot's bytes, not the image's current ones.
    rbd -c "$CONF" export --no-progress rbd/snapimg@s1 "$SCRATCH/snap.want" 2>/dev/null || return 1
    nbdcopy "$u" "$SCRATCH/snap.got" || return 1
    cmp "$SCRATCH/snap.want" "$SCRATCH/snap.got" || return 1
    ! cmp -s "$SCRATCH/snap.got" <(rbd -c "$CONF" export --no-progress rbd/snapimg - 2>/dev/null) || return 1
    # A write is refused.
    ! qemu-io -f raw -c "write 0 4k" "$u" >"$LOG_DIR/snap-write.log" 2>&1
}

t_snapshot() {
    rbd -c "$CONF" create --size 64M rbd/snapimg || { fail "snapshot: create"; return; }
    start_export snapw --image rbd/snapimg || { fail "snapshot: export"; return; }
    qemu-io -f raw -c "write -P 0x11 0 8M" "$EXPORT_URI" >/dev/null
    stop_exports
    rbd -c "$CONF" snap create rbd/snapimg@s1 >/dev/null 2>&1 || { fail "snapshot: snap create"; return; }
    start_export snapw --image rbd/snapimg || { fail "snapshot: export"; return; }
    qemu-io -f raw -c "write -P 0x22 0 4M" "$EXPORT_URI" >/dev/null
    stop_exports
    start_export snapro --image rbd/snapimg@s1 --read-only || { fail "snapshot: export @s1"; return; }
    check "export rbd: a snapshot serves its own bytes read-only, writes refused" \
        snapshot_read_only "$EXPORT_URI"
    stop_exports
}

# Two exports (two librbd clients) write disjoint ranges of one exclusive-lock image at once:
# librbd hands the lock back and forth, every write lands, nothing is corrupted.
two_writers() {
    local a=$1 b=$2
    fio_nbd_verify "$a" w2a --bs=4k --iodepth=16 --size=8M --offset=0 &
    local p1=$!
    fio_nbd_verify "$b" w2b --bs=4k --iodepth=16 --size=8M --offset=64M &
    local p2=$!
    wait $p1 || return 1
    wait $p2 || return 1
    same_bytes_as_rbd "$a" rbd/shared
}

t_two_writers() {
    rbd -c "$CONF" create --size 128M rbd/shared || { fail "two writers: create"; return; }
    start_export sha --image rbd/shared || { fail "two writers: export a"; return; }
    local a=$EXPORT_URI
    start_export shb --image rbd/shared || { fail "two writers: export b"; return; }
    check "export rbd: two writers on one exclusive-lock image (lock handed over, no corruption)" \
        two_writers "$a" "$EXPORT_URI"
    stop_exports
}

t_per_queue_handles() {
    rbd -c "$CONF" create --size 256M --image-feature layering rbd/pq || { fail "per-queue: create"; return; }
    start_export pq --image rbd/pq --handles per-queue --connections 2 || { fail "per-queue: export"; return; }
    check "export rbd --handles per-queue: verify 4k-512k qd64, 2 connections" fio_nbd_verify "$EXPORT_URI" \
        pq --bsrange=4k-512k --iodepth=64 --numjobs=2 --offset_increment=64M --size=32M
    stop_exports
    rbd -c "$CONF" create --size 64M rbd/pqlock >/dev/null 2>&1
    expect_export_error "bad: per-queue handles on an exclusive-lock image" "without the exclusive-lock feature" \
        --image rbd/pqlock --handles per-queue
}

t_bad_input() {
    local wrong=$SCRATCH/wrong.keyring
    rbd -c "$CONF" create --size 16M rbd/bad >/dev/null 2>&1
    rbd -c "$CONF" snap create rbd/bad@s >/dev/null 2>&1
    expect_export_error "bad: missing pool" "pool 'nopool' does not exist" --image nopool/x
    expect_export_error "bad: missing image" "image rbd/nope does not exist" --image rbd/nope
    expect_export_error "bad: missing snapshot" "does not exist" --image rbd/bad@nosnap --read-only
    expect_export_error "bad: snapshot opened for writing" "is read-only: add --read-only" --image rbd/bad@s
    expect_export_error "bad: malformed image" "is not an image" --image rbd/a/b/c
    ceph-authtool --create-keyring "$wrong" --gen-key -n client.admin >/dev/null
    expect_export_error "bad: wrong key" "refused client.admin" --image rbd/bad --keyring "$wrong"
    expect_export_error "bad: unknown client id" "refused client.nobody" --image rbd/bad --id nobody
    expect_error "bad: missing conf file" "cannot read" \
        "$UBLKD" export -t rbd --image rbd/bad --conf "$SCRATCH/none.conf" --listen 127.0.0.1:10999
    local t1 t2
    t1=$(date +%s)
    expect_error "bad: unreachable monitors (bounded connect timeout)" "cannot reach 127.0.0.1:9" \
        "$UBLKD" export -t rbd --image rbd/bad --conf "$CONF" --mon-host 127.0.0.1:9 --connect-timeout 3 \
        --listen 127.0.0.1:10998
    t2=$(date +%s)
    echo "unreachable monitors: failed after $((t2 - t1)) s"
    check "bad: unreachable monitors gave up within 10 s" test $((t2 - t1)) -le 10
}

if [ -n "${UBLKD_RBD_TESTS:-}" ]; then
    for t in $UBLKD_RBD_TESTS; do "$t"; done
else
    t_crate_against_cluster
    t_verify
    t_discard_zeroes
    t_ext4
    t_snapshot
    t_two_writers
    t_per_queue_handles
    t_bad_input
fi
stop_exports
check "ceph.sh stop leaves nothing behind" ceph_gone
echo "rbd host suite: $(($(date +%s) - t0)) s"
[ "$FAILED" -gt 0 ] && printf 'failed: %s\n' "${FAILED_NAMES[@]}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]

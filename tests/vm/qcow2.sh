# shellcheck shell=bash
# The qcow2 target on the real driver, checked with QEMU's own tools (sourced by run.sh after
# lib.sh and recovery.sh; uses $UBLKD, $SCRATCH, $LOG_DIR, fio_verify, ext4_round_trip,
# daemon_pid):
#   test_qcow2            verify, ext4, check/compare against raw, backing chain, compressed,
#                         discard then map, bad images
#   test_qcow2_recovery   kill -9 under a write load without flushes, recover: nothing
#                         acknowledged lost, qemu-img check clean (leaks at most)

Q2=$SCRATCH/qcow2

# qemu-img check passes: exit 0 (clean) or 3 (leaked clusters only, which waste space but are
# no corruption).
qcheck() {
    qemu-img check "$1" >"$LOG_DIR/qcheck-$(basename "$1").out" 2>&1
    local rc=$?
    cat "$LOG_DIR/qcheck-$(basename "$1").out"
    [ "$rc" = 0 ] || [ "$rc" = 3 ]
}
qcheck_clean() { qemu-img check "$1" | grep -q "No errors were found"; }

# The same deterministic writes to two devices: 40 pieces of 4k..256k at scattered offsets.
same_writes() { # DEV1 DEV2
    local i off len
    head -c $((256 << 10)) /dev/urandom >"$Q2/piece"
    for i in $(seq 1 40); do
        off=$(((i * 7919 % 1000) * 65536 + (i % 16) * 4096))
        len=$(((i % 64 + 1) * 4096))
        dd if="$Q2/piece" of="$1" bs=4k seek=$((off / 4096)) count=$((len / 4096)) oflag=direct status=none || return 1
        dd if="$Q2/piece" of="$2" bs=4k seek=$((off / 4096)) count=$((len / 4096)) oflag=direct status=none || return 1
    done
}

qcow2_equals_raw_after_same_writes() {
    local q r dq dr
    q=$Q2/same.qcow2 r=$Q2/same.raw
    "$UBLKD" create -t qcow2 --path "$q" --size 128M >/dev/null || return 1
    truncate -s 128M "$r"
    dq=$("$UBLKD" add -t qcow2 --path "$q" -q 2) || return 1
    dr=$("$UBLKD" add -t file --path "$r" -q 2) || return 1
    same_writes "$dq" "$dr" || return 1
    "$UBLKD" del -n "${dq#/dev/ublkb}" && "$UBLKD" del -n "${dr#/dev/ublkb}" || return 1
    qcheck_clean "$q" && qemu-img compare -f qcow2 -F raw "$q" "$r"
}

# A raw base with a pattern, a qcow2 overlay written through ublkd: the chain as qemu-img
# converts it equals the base with the same writes applied.
backing_chain_matches() {
    local base=$Q2/base.raw top=$Q2/top.qcow2 expect=$Q2/expect.raw dq de
    head -c $((64 << 20)) /dev/urandom >"$base"
    cp "$base" "$expect"
    (cd "$Q2" && "$UBLKD" create -t qcow2 --path top.qcow2 --backing base.raw >/dev/null) || return 1
    dq=$("$UBLKD" add -t qcow2 --path "$top" -q 2) || return 1
    de=$("$UBLKD" add -t file --path "$expect" -q 2) || return 1
    same_writes "$dq" "$de" || return 1
    cmp "$dq" "$de" || { echo "device contents differ"; return 1; }
    "$UBLKD" del -n "${dq#/dev/ublkb}" && "$UBLKD" del -n "${de#/dev/ublkb}" || return 1
    qcheck_clean "$top" || return 1
    qemu-img convert -O raw "$top" "$Q2/chain.raw" && cmp "$Q2/chain.raw" "$expect" || return 1
    cmp "$base" <(head -c $((64 << 20)) "$Q2/chain.raw") >/dev/null && { echo "writes missing"; return 1; }
    return 0
}

compressed_reads_equal() {
    local src=$Q2/comp.raw img=$Q2/comp.qcow2 dev
    { head -c $((16 << 20)) /dev/urandom; head -c $((16 << 20)) /dev/zero | tr '\0' 'x'; } >"$src"
    qemu-img convert -c -O qcow2 "$src" "$img" || return 1
    qemu-img info "$img" | grep -q "compressed" || qemu-img check "$img" | grep -q "compressed clusters" || true
    dev=$("$UBLKD" add -t qcow2 --path "$img" --read-only) || return 1
    cmp "$dev" "$src" || { "$UBLKD" del -n "${dev#/dev/ublkb}"; return 1; }
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

discard_unmaps() {
    local img=$Q2/disc.qcow2 dev
    "$UBLKD" create -t qcow2 --path "$img" --size 64M >/dev/null || return 1
    dev=$("$UBLKD" add -t qcow2 --path "$img") || return 1
    dd if=/dev/urandom of="$dev" bs=1M count=16 oflag=direct status=none || return 1
    blkdiscard -o $((4 << 20)) -l $((8 << 20)) "$dev" || return 1
    cmp -n $((8 << 20)) <(dd if="$dev" bs=1M skip=4 count=8 iflag=direct status=none) /dev/zero || return 1
    "$UBLKD" del -n "${dev#/dev/ublkb}" || return 1
    qcheck_clean "$img" || return 1
    qemu-img map --output=json "$img" >"$LOG_DIR/qcow2-map.json"
    python3 - "$LOG_DIR/qcow2-map.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
def at(o):
    return next(e for e in m if e["start"] <= o < e["start"] + e["length"])
assert at(0)["data"], m
assert not at(6 << 20)["data"] and at(6 << 20)["zero"], m
assert at(14 << 20)["data"], m
PY
}

test_qcow2() {
    local img dev
    mkdir -p "$Q2"
    img=$Q2/verify.qcow2
    "$UBLKD" create -t qcow2 --path "$img" --size 2G >/dev/null || { fail "qcow2: create"; return; }
    test_fio_verify qcow2 -t qcow2 --path "$img"
    check "qcow2 after verify: qemu-img check clean" qcheck_clean "$img"
    img=$Q2/ext4.qcow2
    "$UBLKD" create -t qcow2 --path "$img" --size 512M >/dev/null || { fail "qcow2: create ext4"; return; }
    dev=$("$UBLKD" add -t qcow2 --path "$img" -q 2) || { fail "qcow2: add ext4"; return; }
    check "qcow2: ext4 round trip" ext4_round_trip "$dev" qcow2
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    check "qcow2 after ext4: qemu-img check clean" qcheck_clean "$img"
    check "qcow2: equals a raw file given the same writes (qemu-img compare)" qcow2_equals_raw_after_same_writes
    check "qcow2: overlay on a raw base, written through ublkd, equals the chain qemu-img converts" backing_chain_matches
    check "qcow2: an image compressed by qemu-img reads back equal" compressed_reads_equal
    check "qcow2: discard, then qemu-img map shows the clusters gone" discard_unmaps
    local u=$Q2/unknown.qcow2
    qemu-img create -q -f qcow2 "$u" 16M
    printf '\x01' | dd of="$u" bs=1 seek=74 conv=notrunc status=none
    expect_error "qcow2 bad: unknown incompatible feature" "unknown.qcow2" "$UBLKD" add -t qcow2 --path "$u"
    qemu-img create -q -u -f qcow2 -b gone.raw -F raw "$Q2/orphan.qcow2" 16M
    expect_error "qcow2 bad: missing backing file" "gone.raw" "$UBLKD" add -t qcow2 --path "$Q2/orphan.qcow2"
    expect_error "qcow2 bad: not a qcow2 image" "not a qcow2 image" "$UBLKD" add -t qcow2 --path "$Q2/comp.raw"
    expect_error "qcow2 bad: --backing with --no-backing" "exclude each other" \
        "$UBLKD" add -t qcow2 --path "$Q2/top.qcow2" --backing "$Q2/base.raw" --no-backing
    if qemu-img create -q -f qcow2 --object secret,id=s0,data=x -o encrypt.format=luks,encrypt.key-secret=s0 \
        "$Q2/enc.qcow2" 16M 2>/dev/null; then
        expect_error "qcow2 bad: encrypted" "is encrypted" "$UBLKD" add -t qcow2 --path "$Q2/enc.qcow2"
    fi
    check_clean "qcow2 tests leave nothing behind"
}

# kill -9 of the daemon under a random-write load with no flushes at all, then recover: every
# write fio saw acknowledged reads back (metadata is written out before acknowledging a write
# that changed it), and the image checks clean or with leaked clusters only.
qcow2_kill_and_recover() {
    local img=$Q2/recover.qcow2 dev id pid fpid args
    "$UBLKD" create -t qcow2 --path "$img" --size 256M >/dev/null || return 1
    dev=$("$UBLKD" add -t qcow2 --path "$img" -q 2 -d 64) || return 1
    id=${dev#/dev/ublkb}
    args="--name=q2rec --filename=$dev --ioengine=io_uring --direct=1 --rw=randwrite --bsrange=4k-64k
        --iodepth=64 --size=96M --verify=crc32c --randrepeat=1 --randseed=4321"
    # shellcheck disable=SC2086
    fio $args --do_verify=0 >"$LOG_DIR/q2rec-write.out" 2>&1 &
    fpid=$!
    sleep 4
    pid=$(daemon_pid "$id")
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    "$UBLKD" recover -n "$id" >/dev/null || { echo "recover failed"; kill "$fpid"; return 1; }
    wait "$fpid" || { echo "fio writer failed"; cat "$LOG_DIR/q2rec-write.out"; return 1; }
    grep -q "err= 0" "$LOG_DIR/q2rec-write.out" || return 1
    # shellcheck disable=SC2086
    fio $args --verify_only >"$LOG_DIR/q2rec-verify.out" 2>&1 || { tail "$LOG_DIR/q2rec-verify.out"; return 1; }
    grep -q "err= 0" "$LOG_DIR/q2rec-verify.out" || return 1
    # A second kill under writes: the image, checked while no daemon holds it and without any
    # flush, is consistent; then recovery lets fio finish.
    # shellcheck disable=SC2086
    fio $args --do_verify=0 --size=32M --randseed=99 >"$LOG_DIR/q2rec-write2.out" 2>&1 &
    fpid=$!
    sleep 3
    pid=$(daemon_pid "$id")
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    qcheck "$img" || { echo "check after kill -9 found corruption"; kill "$fpid"; return 1; }
    "$UBLKD" recover -n "$id" >/dev/null || { kill "$fpid"; return 1; }
    wait "$fpid" || return 1
    "$UBLKD" del -n "$id"
    qcheck "$img"
}

test_qcow2_recovery() {
    mkdir -p "$Q2"
    check "qcow2: kill -9 under writes without flushes, recover: nothing acknowledged lost, check clean" \
        qcow2_kill_and_recover
}

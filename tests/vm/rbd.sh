# The rbd target as a ublk device (sourced by run.sh; full suite only). A single-node cluster
# runs inside the guest on its loopback (scripts/ceph.sh; ~100 s to start under TCG, once for
# all these tests). Ceph itself does ~400 IOPS in the guest, so the sizes here are small; the
# broad data-path suite runs on the host through `ublkd export -t rbd` (tests/rbd/host.sh).

rbd_fio_verify() { # DEV NAME BS QD SIZE
    fio_verify "$1" "$2" "$3" "$4" --size="$5"
}

# kill -9 of the daemon under a fio writer, `ublkd recover`: nothing acknowledged is lost. The
# new daemon's first write waits for librbd to break the dead client's exclusive lock (the
# guest cluster's watch timeout is 15 s).
rbd_kill_and_recover() {
    local dev id pid fpid t0 t1 args
    dev=$("$UBLKD" add -t rbd --conf "$CONF" --image rbd/recover -q 2 -d 64) || return 1
    id=${dev#/dev/ublkb}
    args=(--name=rbdrec --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k
        --iodepth=64 --size=8M --verify=crc32c --fsync=64 --randrepeat=1 --randseed=4321)
    fio "${args[@]}" --do_verify=0 >"$LOG_DIR/rbd-recover-write.out" 2>&1 &
    fpid=$!
    sleep 4
    pid=$(daemon_pid "$id")
    t0=$(now_ms)
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    "$UBLKD" recover -n "$id" >/dev/null || { echo "recover failed"; kill "$fpid"; return 1; }
    dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none || return 1
    t1=$(now_ms)
    echo "rbd: kill -9 -> I/O flowing again: $((t1 - t0)) ms" | tee -a "$LOG_DIR/recovery-times.txt"
    wait "$fpid" || { echo "fio writer failed"; cat "$LOG_DIR/rbd-recover-write.out"; return 1; }
    grep -q "err= 0" "$LOG_DIR/rbd-recover-write.out" || return 1
    fio "${args[@]}" --verify_only >"$LOG_DIR/rbd-recover-verify.out" 2>&1 || return 1
    grep -q "err= 0" "$LOG_DIR/rbd-recover-verify.out" || return 1
    "$UBLKD" del -n "$id"
}

# What the device wrote is what the cluster holds.
rbd_device_matches_image() { # DEV IMAGE
    cmp <(dd if="$1" bs=1M iflag=direct status=none) \
        <(rbd -c "$CONF" export --no-progress "$2" - 2>/dev/null)
}

# The device follows its image: refused past the image's size, then `rbd resize` and
# `ublkd resize` (no size) grow it; the new end holds what is written there.
rbd_resize_follows() { # DEV IMAGE
    local dev=$1 id=${1#/dev/ublkb} err
    err=$("$UBLKD" resize -n "$id" --size 32M 2>&1) && { echo "grew past the image"; return 1; }
    [[ $err == *"fewer than"* ]] || { echo "unexpected refusal: $err"; return 1; }
    rbd -c "$CONF" resize --no-progress --size 32M "$2" || return 1
    "$UBLKD" resize -n "$id" | grep -qx "$dev: 32M" || return 1
    [ "$(blockdev --getsize64 "$dev")" = $((32 << 20)) ] || return 1
    head -c 1M /dev/urandom >"$SCRATCH/rbd-tail.bin"
    dd if="$SCRATCH/rbd-tail.bin" of="$dev" bs=1M seek=31 oflag=direct status=none || return 1
    cmp <(dd if="$dev" bs=1M skip=31 iflag=direct status=none) "$SCRATCH/rbd-tail.bin"
}

test_rbd() {
    local CLUSTER=$SCRATCH/ceph CONF t0 dev id
    ip link set lo up 2>/dev/null
    t0=$(date +%s)
    if ! "$ROOT/scripts/ceph.sh" start "$CLUSTER" --osd-mem 768M >"$LOG_DIR/ceph-start.log" 2>&1; then
        fail "rbd: cluster start in the guest" "$(tail -3 "$LOG_DIR/ceph-start.log" | tr '\n' ' ')"
        "$ROOT/scripts/ceph.sh" stop "$CLUSTER" >/dev/null 2>&1
        return
    fi
    echo "rbd: $(tail -1 "$LOG_DIR/ceph-start.log") ($(($(date +%s) - t0)) s)"
    CONF=$CLUSTER/ceph.conf
    # Small images: comparing a whole image with `rbd export` reads it twice under TCG.
    for i in verify:32M ext4:64M discard:16M recover:32M; do
        rbd -c "$CONF" create --size "${i#*:}" "rbd/${i%:*}" || fail "rbd: create ${i%:*}"
    done

    dev=$("$UBLKD" add -t rbd --conf "$CONF" --image rbd/verify -q 2 -d 128)
    if [ -n "$dev" ]; then
        id=${dev#/dev/ublkb}
        check "rbd: copy buffers (librbd needs addresses)" test "$(mode_of "$id")" = copy
        check "rbd verify 4k qd1" rbd_fio_verify "$dev" rbd-4k-qd1 --bs=4k 1 1M
        check "rbd verify 4k qd128" rbd_fio_verify "$dev" rbd-4k-qd128 --bs=4k 128 4M
        check "rbd verify 64k-512k qd1" rbd_fio_verify "$dev" rbd-big-qd1 --bsrange=64k-512k 1 8M
        check "rbd verify 64k-512k qd128" rbd_fio_verify "$dev" rbd-big-qd128 --bsrange=64k-512k 128 16M
        check "rbd: the image holds the device's bytes (rbd export)" rbd_device_matches_image "$dev" rbd/verify
        check "del rbd" "$UBLKD" del -n "$id"
    else
        fail "rbd: add"
    fi

    dev=$("$UBLKD" add -t rbd --conf "$CONF" --image rbd/ext4 -q 2)
    if [ -n "$dev" ]; then
        check "rbd: ext4 round trip (mkfs, write, fsck, checksums)" ext4_round_trip "$dev" rbd
        "$UBLKD" del -n "${dev#/dev/ublkb}"
    else
        fail "rbd ext4: add"
    fi

    dev=$("$UBLKD" add -t rbd --conf "$CONF" --image rbd/discard -q 2)
    if [ -n "$dev" ]; then
        check "rbd: discard and write-zeroes read back zeroes" discard_and_zeroes "$dev"
        check "rbd: ublkd resize follows rbd resize, the new range reads back what was written" \
            rbd_resize_follows "$dev" rbd/discard
        check "rbd: and the image holds the same bytes (rbd export)" rbd_device_matches_image "$dev" rbd/discard
        "$UBLKD" del -n "${dev#/dev/ublkb}"
    else
        fail "rbd discard: add"
    fi

    check "rbd: kill -9 under fio verify writer, recover, nothing lost" rbd_kill_and_recover

    rbd -c "$CONF" snap create rbd/ext4@s1 >/dev/null 2>&1
    dev=$("$UBLKD" add -t rbd --conf "$CONF" --image rbd/ext4@s1 --read-only)
    if [ -n "$dev" ]; then
        check "rbd: a snapshot is a read-only device" test "$(blockdev --getro "$dev")" = 1
        check "rbd: the snapshot's device fscks clean" fsck.ext4 -fn "$dev"
        "$UBLKD" del -n "${dev#/dev/ublkb}"
    else
        fail "rbd snapshot: add"
    fi
    expect_error "rbd bad: snapshot opened for writing" "is read-only: add --read-only" \
        "$UBLKD" add -t rbd --conf "$CONF" --image rbd/ext4@s1
    expect_error "rbd bad: missing image" "image rbd/nope does not exist" \
        "$UBLKD" add -t rbd --conf "$CONF" --image rbd/nope
    expect_error "rbd bad: unreachable monitors" "cannot reach 127.0.0.1:9" \
        "$UBLKD" add -t rbd --conf "$CONF" --image rbd/ext4 --mon-host 127.0.0.1:9 --connect-timeout 3
    check_clean "rbd tests leave no device behind"
    check "rbd: ceph.sh stop leaves nothing behind" bash -c \
        "'$ROOT/scripts/ceph.sh' stop '$CLUSTER' && [ ! -e '$CLUSTER' ] && ! pgrep -f 'ceph-(mon|osd) -c $CLUSTER/'"
    echo "rbd: in-guest tests took $(($(date +%s) - t0)) s"
}

# Unprivileged devices (UBLK_F_UNPRIVILEGED_DEV), sourced by run.sh: a real systemd-udevd runs
# the contrib/udev rules with this build of ublkd as their helper; user A (uid 1001) adds,
# serves, lists and deletes its own devices; user B (uid 1002) can neither open nor manage
# them; root lists and deletes them. The guest has no passwd entries for these uids: setpriv
# runs commands under bare numeric ids, each with its own XDG_RUNTIME_DIR under /run/user.

UNPRIV_A=1001
UNPRIV_B=1002
UNPRIV_RULES=/run/udev/rules.d/70-ublkd-unprivileged.rules

# as_user UID CMD...: run CMD as UID (its own group, no others) with its runtime directory.
as_user() {
    local uid=$1
    shift
    setpriv --reuid="$uid" --regid="$uid" --clear-groups env XDG_RUNTIME_DIR="/run/user/$uid" "$@"
}

# The contrib rules, naming this build as their helper, in a udevd of our own.
unpriv_setup() {
    local u
    for u in $UNPRIV_A $UNPRIV_B; do
        mkdir -p "/run/user/$u" && chown "$u:$u" "/run/user/$u" && chmod 700 "/run/user/$u" || return 1
    done
    mkdir -p "$(dirname "$UNPRIV_RULES")"
    sed "s#/usr/local/bin/ublkd#$UBLKD#g" contrib/udev/70-ublkd-unprivileged.rules >"$UNPRIV_RULES" || return 1
    grep -q "RUN+=\"$UBLKD udev-owner %k\"" "$UNPRIV_RULES" || { echo "helper path not substituted"; return 1; }
    pgrep -x systemd-udevd >/dev/null || /lib/systemd/systemd-udevd --daemon || return 1
    udevadm control --reload && udevadm trigger --action=add --sysname-match=ublk-control && udevadm settle \
        || return 1
    [ "$(stat -c %a /dev/ublk-control)" = 666 ] || { echo "/dev/ublk-control not opened to users"; return 1; }
}

# Back to the suite's world: no udevd (other tests expect none), a root-only control device.
unpriv_teardown() {
    rm -f "$UNPRIV_RULES"
    udevadm control --exit 2>/dev/null
    chmod 600 /dev/ublk-control
}

# User A's device works for A: nodes handed to A, fio verify as A, A's list shows it as A's.
unpriv_owner_serves() {
    local dev id
    dev=$(as_user $UNPRIV_A "$UBLKD" add --unprivileged -t mem --size 64M) || return 1
    id=${dev#/dev/ublkb}
    echo "$id" >"$SCRATCH/unpriv-id"
    [ "$(stat -c '%u:%g %a' "$dev")" = "$UNPRIV_A:$UNPRIV_A 600" ] || { stat "$dev"; return 1; }
    [ "$(stat -c '%u:%g %a' "/dev/ublkc$id")" = "$UNPRIV_A:$UNPRIV_A 600" ] || { stat "/dev/ublkc$id"; return 1; }
    as_user $UNPRIV_A fio --name=unpriv --filename="$dev" --rw=randwrite --bs=4k --size=32M \
        --direct=1 --ioengine=io_uring --iodepth=32 --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --verify_state_save=0 || return 1
    as_user $UNPRIV_A "$UBLKD" list | grep -E "^$id +/dev/ublkb$id +- +[0-9a-f]+ +live .* copy .* $UNPRIV_A +mem 64M" \
        || { as_user $UNPRIV_A "$UBLKD" list; return 1; }
    as_user $UNPRIV_A "$UBLKD" list -n "$id" --json | grep -q "\"owner\": $UNPRIV_A" || return 1
    [ -f "/run/user/$UNPRIV_A/ublkd/$id.json" ] || { echo "no state file in A's runtime dir"; return 1; }
}

# A's device with a shared-memory buffer of A's (SHMEM_ZC, 7.1+): fio as A verifies from that
# file, and A's daemon served requests in it. Where the kernel lacks it: nothing to check here.
unpriv_shmem() {
    local dev id shm=/run/user/$UNPRIV_A/shm.buf n
    as_user $UNPRIV_A truncate -s 16M "$shm" || return 1
    dev=$(as_user $UNPRIV_A "$UBLKD" add --unprivileged -t mem --size 64M -q 1 --shmem "$shm") || return 1
    id=${dev#/dev/ublkb}
    as_user $UNPRIV_A fio --name=unpriv-shm --filename="$dev" --rw=randwrite --bs=4k --size=16M \
        --direct=1 --ioengine=io_uring --iodepth=16 --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --verify_state_save=0 --iomem="mmapshared:$shm" || return 1
    as_user $UNPRIV_A "$UBLKD" del -n "$id" || return 1
    n=$(queue_count "/run/user/$UNPRIV_A/ublkd/$id.log" "in shared memory" 1)
    echo "served in shared memory: $n"
    rm -f "$shm"
    [ "$n" -gt 1000 ]
}

# User B cannot open A's disk (not even once A opens the node's mode: the driver checks the
# owner), nor manage the device; B's list does not show it.
unpriv_other_user_refused() {
    local id dev err
    id=$(cat "$SCRATCH/unpriv-id")
    dev=/dev/ublkb$id
    as_user $UNPRIV_B dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct && { echo "B read A's disk"; return 1; }
    as_user $UNPRIV_A chmod 666 "$dev" || return 1
    as_user $UNPRIV_B dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct && { echo "B opened A's disk"; return 1; }
    as_user $UNPRIV_A chmod 600 "$dev"
    err=$(as_user $UNPRIV_B "$UBLKD" del -n "$id" 2>&1 >/dev/null) && { echo "B deleted it"; return 1; }
    echo "$err"
    [[ "$err" == *"device $id is not yours"* ]] && [ "$(printf '%s\n' "$err" | wc -l)" = 1 ] || return 1
    err=$(as_user $UNPRIV_B "$UBLKD" list -n "$id" 2>&1 >/dev/null) && return 1
    [[ "$err" == *"device $id is not yours"* ]] || return 1
    as_user $UNPRIV_B "$UBLKD" list | grep -q "^$id " && { echo "B's list shows it"; return 1; }
    # Still A's and still live.
    as_user $UNPRIV_A "$UBLKD" list -n "$id" --json | grep -q '"state": "live"'
}

# Root sees A's device, with the target from A's state file, and deletes it.
unpriv_root_lists_and_deletes() {
    local id pid
    id=$(cat "$SCRATCH/unpriv-id")
    "$UBLKD" list | grep -E "^$id .* $UNPRIV_A +mem 64M" || { "$UBLKD" list; return 1; }
    pid=$("$UBLKD" list -n "$id" --json | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$')
    [ -n "$pid" ] && [ "$(stat -c %u "/proc/$pid")" = $UNPRIV_A ] || { echo "daemon $pid is not A's"; return 1; }
    "$UBLKD" del -n "$id" || return 1
    [ ! -e "/dev/ublkb$id" ] && [ ! -e "/dev/ublkc$id" ] || { echo "device left"; return 1; }
    ! kill -0 "$pid" 2>/dev/null || { echo "daemon $pid left"; return 1; }
    [ ! -e "/run/user/$UNPRIV_A/ublkd/$id.json" ] || { echo "state file left"; return 1; }
}

# A adds another device (null, batch or per-tag as the kernel offers) and deletes it itself.
unpriv_owner_deletes() {
    local dev id
    dev=$(as_user $UNPRIV_A "$UBLKD" add --unprivileged -t null --size 1G) || return 1
    id=${dev#/dev/ublkb}
    as_user $UNPRIV_A fio --name=r --filename="$dev" --rw=randread --bs=4k --size=64M --direct=1 \
        --ioengine=io_uring --iodepth=16 --runtime=2 --time_based || return 1
    as_user $UNPRIV_A "$UBLKD" del -n "$id" || return 1
    [ ! -e "/dev/ublkc$id" ] && [ ! -e "/run/user/$UNPRIV_A/ublkd/$id.json" ]
}

# The driver never recovers an unprivileged device: after kill -9 of A's daemon, recover is
# refused in one line and A deletes what is left.
unpriv_killed_daemon() {
    local dev id pid err
    dev=$(as_user $UNPRIV_A "$UBLKD" add --unprivileged -t mem --size 16M) || return 1
    id=${dev#/dev/ublkb}
    pid=$(as_user $UNPRIV_A "$UBLKD" list -n "$id" --json | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$')
    as_user $UNPRIV_A "$UBLKD" list -n "$id" --json | grep -q USER_RECOVERY && { echo "recovery flag granted"; return 1; }
    kill -9 "$pid" || return 1
    sleep 1
    err=$(as_user $UNPRIV_A "$UBLKD" recover -n "$id" 2>&1 >/dev/null) && { echo "recovered?"; return 1; }
    echo "$err"
    [[ "$err" == *"never lets such a device be recovered"* ]] && [ "$(printf '%s\n' "$err" | wc -l)" = 1 ] || return 1
    as_user $UNPRIV_A "$UBLKD" del -n "$id" || return 1
    [ ! -e "/dev/ublkc$id" ]
}

# Without the udev helper the device's nodes stay root's: add fails in one line naming the
# rules, and root deletes what the user could not.
unpriv_without_helper() {
    rm -f "$UNPRIV_RULES"
    udevadm control --reload
    expect_error "unprivileged: without the udev helper, add fails naming the rules" \
        "70-ublkd-unprivileged.rules" as_user $UNPRIV_A "$UBLKD" add --unprivileged -t null --size 1M
    "$UBLKD" del --all
    [ -z "$(ls /dev | grep '^ublk[bc]')" ]
}

test_unprivileged() {
    check "unprivileged: udevd with the contrib rules opens /dev/ublk-control" unpriv_setup
    check "unprivileged: user A adds a device, its nodes are A's, fio verify as A, A lists it" unpriv_owner_serves
    check "unprivileged: user B cannot open, list or delete A's device (one line)" unpriv_other_user_refused
    check "unprivileged: root lists A's device and deletes it" unpriv_root_lists_and_deletes
    check "unprivileged: A adds a null device, reads it, deletes it itself" unpriv_owner_deletes
    check "unprivileged: after kill -9, recover is refused in one line and A deletes it" unpriv_killed_daemon
    kernel_has SHMEM_ZC && check "unprivileged: --shmem: A's fio verifies from A's shared file, served in it" unpriv_shmem
    expect_error "unprivileged: --buffers zero-copy refused" "--buffers zero-copy is not allowed for an unprivileged device" \
        as_user $UNPRIV_A "$UBLKD" add --unprivileged -t null --size 1M --buffers zero-copy
    expect_error "unprivileged: --buffers user-copy refused" "--buffers user-copy is not allowed for an unprivileged device" \
        as_user $UNPRIV_A "$UBLKD" add --unprivileged -t null --size 1M --buffers user-copy
    expect_error "unprivileged: --recovery reissue refused" "an unprivileged device cannot be recovered" \
        as_user $UNPRIV_A "$UBLKD" add --unprivileged -t null --size 1M --recovery reissue
    expect_error "unprivileged: a user without --unprivileged is refused" "add --unprivileged" \
        as_user $UNPRIV_A "$UBLKD" add -t null --size 1M
    expect_error "unprivileged: no XDG_RUNTIME_DIR" "XDG_RUNTIME_DIR is not set" \
        setpriv --reuid=$UNPRIV_A --regid=$UNPRIV_A --clear-groups env -u XDG_RUNTIME_DIR "$UBLKD" add --unprivileged -t null --size 1M
    expect_error "unprivileged: root's --unprivileged refused" "--unprivileged is for non-root users" \
        "$UBLKD" add --unprivileged -t null --size 1M
    check "unprivileged: root deletes a device whose nodes udev never handed over" unpriv_without_helper
    unpriv_teardown
    check_clean "unprivileged: nothing left"
}

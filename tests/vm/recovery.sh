# Recovery tests (issue 4), sourced by run.sh: kill -9 of a daemon under load, then recover.

daemon_pid() { # ID
    "$UBLKD" list -n "$1" --json | grep -o '"pid": *[0-9]*' | grep -o '[0-9]*$'
}

now_ms() { date +%s%3N; }

# fio writer args shared by the write and the verify-only pass (same seed, same blocks).
rec_fio_args() { # DEV NAME
    echo --name="$2" --filename="$1" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
        --iodepth=128 --size=48M --verify=crc32c --fsync=64 --randrepeat=1 --randseed=1234
}

kill_and_recover_under_fio() {
    local dev id pid fpid t0 t1 img=$BACK/recover.img
    truncate -s 128M "$img"
    dev=$("$UBLKD" add -t file --path "$img" -q 2 -d 128) || return 1
    id=${dev#/dev/ublkb}
    # shellcheck disable=SC2046
    fio $(rec_fio_args "$dev" recw) --do_verify=0 >"$LOG_DIR/recover-fio-write.out" 2>&1 &
    fpid=$!
    sleep 3
    pid=$(daemon_pid "$id")
    t0=$(now_ms)
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    "$UBLKD" recover -n "$id" >/dev/null || { echo "recover failed"; kill "$fpid"; return 1; }
    dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none || return 1
    t1=$(now_ms)
    echo "kill -9 -> I/O flowing again: $((t1 - t0)) ms" | tee -a "$LOG_DIR/recovery-times.txt"
    wait "$fpid" || { echo "fio writer failed"; return 1; }
    grep -q "err= 0" "$LOG_DIR/recover-fio-write.out" || return 1
    # shellcheck disable=SC2046
    fio $(rec_fio_args "$dev" recw) --verify_only >"$LOG_DIR/recover-fio-verify.out" 2>&1 || return 1
    grep -q "err= 0" "$LOG_DIR/recover-fio-verify.out" || return 1
    "$UBLKD" list -n "$id" --json | grep -q '"state": "live"' || return 1
    "$UBLKD" del -n "$id"
}

recovery_off_fails_fast() {
    local dev id pid rc
    dev=$("$UBLKD" add -t mem --size 64M --recovery off) || return 1
    id=${dev#/dev/ublkb}
    pid=$(daemon_pid "$id")
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    sleep 0.5
    # I/O must fail (or the device be gone), never hang.
    timeout 30 dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null
    rc=$?
    [ "$rc" -ne 124 ] || { echo "I/O hung"; return 1; }
    [ "$rc" -ne 0 ] || [ ! -e "$dev" ] || { echo "I/O succeeded without a daemon"; return 1; }
    "$UBLKD" recover -n "$id" 2>"$LOG_DIR/recover-off.err" && return 1
    grep -q "cannot be recovered\|does not exist" "$LOG_DIR/recover-off.err" || return 1
    "$UBLKD" del -n "$id" 2>/dev/null
    [ ! -e "$dev" ]
}

del_after_daemon_death() {
    local dev id pid
    dev=$("$UBLKD" add -t mem --size 64M) || return 1
    id=${dev#/dev/ublkb}
    pid=$(daemon_pid "$id")
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    "$UBLKD" list -n "$id" --json | grep -q '"state": "quiesced"\|"state": "orphan"\|"state": "fail-io"' || return 1
    timeout 60 "$UBLKD" del -n "$id" || return 1
    [ ! -e "$dev" ] && [ ! -e "/run/ublkd/$id.json" ]
}

test_recovery() {
    check "recovery: kill -9 under fio verify writer, recover, zero errors and mismatches" kill_and_recover_under_fio
    check "recovery: --recovery off fails I/O instead of hanging, del removes it" recovery_off_fails_fast
    check "recovery: del works on a device whose daemon died" del_after_daemon_death
    check_clean "recovery tests leave nothing behind"
}

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

# Longest gap between successful 4k direct reads while $1 (a command) runs; prints ms.
probe_start() { # DEV OUT
    rm -f "$2.stop" "$2.done"
    ( while [ ! -e "$2.stop" ]; do
          timeout 60 dd if="$1" of=/dev/null bs=4k count=1 iflag=direct status=none && now_ms
      done >"$2" 2>/dev/null; touch "$2.done" ) &
    PROBE_PID=$!
}
probe_stop() { # OUT -> prints the longest gap in ms
    # Called in $(...): `wait` cannot wait for a sibling there, so watch for the loop's end
    # (otherwise the loop went on reading the device after the test, holding it open).
    local i
    touch "$1.stop"
    for i in $(seq 1 1400); do [ -e "$1.done" ] && break; sleep 0.05; done
    rm -f "$1.stop" "$1.done"
    awk '/^[0-9]+$/ { if (prev && $1 - prev > max) max = $1 - prev; prev = $1 } END { printf "%d\n", max }' "$1"
}

wait_live_new_pid() { # ID OLDPID: wait until a different daemon serves the device
    local i p
    for i in $(seq 1 600); do
        p=$(daemon_pid "$1" 2>/dev/null)
        if [ -n "$p" ] && [ "$p" != "$2" ] && kill -0 "$p" 2>/dev/null && \
           "$UBLKD" list -n "$1" --json | grep -q '"state": "live"'; then return 0; fi
        sleep 0.05
    done
    return 1
}

restart_survives_repeated_kills() {
    local dev id pid fpid i t0 img=$BACK/restart.img
    truncate -s 128M "$img"
    dev=$("$UBLKD" add -t file --path "$img" -q 2 -d 64 --restart) || return 1
    id=${dev#/dev/ublkb}
    fio --name=rst --filename="$dev" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k --iodepth=64 \
        --size=96M --time_based --runtime=45 --verify=crc32c --do_verify=1 >"$LOG_DIR/restart-fio.out" 2>&1 &
    fpid=$!
    for i in $(seq 1 5); do
        sleep "0.$((RANDOM % 9 + 1))"
        pid=$(daemon_pid "$id")
        t0=$(now_ms)
        kill -9 "$pid" || return 1
        wait_live_new_pid "$id" "$pid" || { echo "no recovery after kill $i"; kill "$fpid"; return 1; }
        echo "restart kill $i: daemon $pid replaced by $(daemon_pid "$id") in $(( $(now_ms) - t0 )) ms" \
            | tee -a "$LOG_DIR/recovery-times.txt"
    done
    wait "$fpid" || { echo "fio failed"; cat "$LOG_DIR/restart-fio.out"; return 1; }
    grep -q "err= 0" "$LOG_DIR/restart-fio.out" || return 1
    # Death to recovery as the supervisor saw it (its log timestamps), without our polling.
    awk '/supervisor: daemon .* died/ || /supervisor: device .* recovered/ {
            split($1, t, "T"); split(t[2], h, ":"); s = h[1] * 3600 + h[2] * 60 + h[3];
            if ($0 ~ /died/) d = s; else if (d) { printf "supervisor: death to recovered %d ms\n", (s - d) * 1000; d = 0 }
         }' "/run/ublkd/$id.log" | tee -a "$LOG_DIR/recovery-times.txt"
    "$UBLKD" del -n "$id" || return 1
    sleep 0.5
    ! pgrep -f "ublkd (serve|supervise)" >/dev/null
}

upgrade_under_fio() { # [EXTRA-ADD-ARGS...]
    local dev id fpid i gap maxgap=0 img=$BACK/upgrade.img
    "$UBLKD" features | grep -q QUIESCE || { echo "kernel without QUIESCE"; return 1; }
    truncate -s 128M "$img"
    dev=$("$UBLKD" add -t file --path "$img" -q 2 -d 128 "$@") || return 1
    id=${dev#/dev/ublkb}
    # shellcheck disable=SC2046
    fio $(rec_fio_args "$dev" upw) --size=64M --do_verify=0 >"$LOG_DIR/upgrade-fio-write.out" 2>&1 &
    fpid=$!
    sleep 1
    for i in $(seq 1 5); do
        probe_start "$dev" "$SCRATCH/probe"
        sleep 0.3
        if ! "$UBLKD" upgrade -n "$id" >/dev/null; then
            echo "upgrade $i failed"; tail -20 "/run/ublkd/$id.log"
            "$UBLKD" recover -n "$id"   # let the held I/O finish so nothing hangs
            probe_stop "$SCRATCH/probe"; kill "$fpid"; wait "$fpid"; return 1
        fi
        sleep 0.3
        gap=$(probe_stop "$SCRATCH/probe")
        echo "upgrade $i: longest read stall $gap ms" | tee -a "$LOG_DIR/recovery-times.txt"
        [ "$gap" -gt "$maxgap" ] && maxgap=$gap
    done
    wait "$fpid" || { echo "fio writer failed"; return 1; }
    grep -q "err= 0" "$LOG_DIR/upgrade-fio-write.out" || return 1
    # shellcheck disable=SC2046
    fio $(rec_fio_args "$dev" upw) --size=64M --verify_only >"$LOG_DIR/upgrade-fio-verify.out" 2>&1 || return 1
    grep -q "err= 0" "$LOG_DIR/upgrade-fio-verify.out" || return 1
    echo "longest stall over 5 upgrades: $maxgap ms" | tee -a "$LOG_DIR/recovery-times.txt"
    "$UBLKD" del -n "$id"
}

ext4_kill_and_recover() {
    local dev id pid wpid img=$BACK/ext4rec.img mnt=$SCRATCH/mnt-rec list=$SCRATCH/synced.txt
    truncate -s 256M "$img"; mkdir -p "$mnt"; : >"$list"; rm -f "$SCRATCH/writer.stop"
    dev=$("$UBLKD" add -t file --path "$img" -q 2) || return 1
    id=${dev#/dev/ublkb}
    mkfs.ext4 -q -F "$dev" && mount "$dev" "$mnt" || return 1
    # Writer: each file is fsynced before its checksum is recorded.
    ( i=0; while [ ! -e "$SCRATCH/writer.stop" ]; do
          i=$((i + 1)); head -c $(( (RANDOM % 64 + 1) * 4096 )) /dev/urandom >"$mnt/f$i" || exit 1
          sync "$mnt/f$i" || exit 1
          (cd "$mnt" && sha256sum "f$i") >>"$list"
      done ) &
    wpid=$!
    sleep 3
    pid=$(daemon_pid "$id"); kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
    "$UBLKD" recover -n "$id" >/dev/null || { touch "$SCRATCH/writer.stop"; return 1; }
    sleep 3
    touch "$SCRATCH/writer.stop"; wait "$wpid" || { echo "writer saw an error"; return 1; }
    echo "files fsynced: $(wc -l <"$list")"
    umount "$mnt" || return 1
    fsck.ext4 -fn "$dev" || return 1
    mount "$dev" "$mnt" || return 1
    (cd "$mnt" && sha256sum -c --quiet "$list") || { umount "$mnt"; return 1; }
    umount "$mnt"
    "$UBLKD" del -n "$id"
}

kill_during_add_and_del() {
    local i dev id pid apid dpid
    for i in 1 2 3 4 5; do
        timeout 60 "$UBLKD" add -t mem --size 64M >/dev/null 2>&1 &
        apid=$!
        sleep "0.0$((RANDOM % 9 + 1))"
        pkill -9 -f "ublkd serve" || true
        wait "$apid"
        echo "add $i: add exited $?"
    done
    for i in 1 2 3; do
        dev=$(timeout 60 "$UBLKD" add -t mem --size 64M) || { echo "add for del $i failed"; return 1; }
        id=${dev#/dev/ublkb}; pid=$(daemon_pid "$id")
        timeout 90 "$UBLKD" del -n "$id" >/dev/null 2>&1 &
        dpid=$!
        sleep "0.0$((RANDOM % 5 + 1))"
        kill -9 "$pid" 2>/dev/null
        wait "$dpid"
        echo "del $i: del exited $?"
    done
    "$UBLKD" list
    timeout 120 "$UBLKD" del --all || { echo "del --all failed"; "$UBLKD" list; return 1; }
    ls /dev | grep '^ublk[bc]' && { echo "devices left"; "$UBLKD" list; return 1; }
    ! pgrep -af "ublkd serve"
}

test_recovery_more() {
    check "recovery: ext4 + fsynced writer survive kill -9 and recover, fsck clean" ext4_kill_and_recover
    check "recovery: --restart survives 5 kill -9 under fio verify, no leaks" restart_survives_repeated_kills
    # Default I/O commands on 7.3 are batch (upgrade hands over without QUIESCE); per-tag
    # devices are quiesced.
    check "recovery: 5 live upgrades under fio verify writer, zero errors" upgrade_under_fio
    check "recovery: 5 live upgrades (per-tag, QUIESCE) under fio verify writer, zero errors" \
        upgrade_under_fio --io-cmds per-tag
    check "recovery: kill -9 during add and del, del --all cleans up" kill_during_add_and_del
    check_clean "recovery tests leave nothing behind (2)"
}

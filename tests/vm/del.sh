# `del` safety tests, sourced by run.sh: a device in use is refused with its user named, --force
# and stuck daemons end in bounded time, and a pid that names another process by now is never
# signalled. Uses daemon_pid and now_ms from recovery.sh.

# del_run ARGS...: run `ublkd del ARGS` (guarded by a timeout); sets DEL_RC, DEL_ERR, DEL_MS.
del_run() {
    local t0
    t0=$(now_ms)
    DEL_ERR=$(timeout 150 "$UBLKD" del "$@" 2>&1 >/dev/null)
    DEL_RC=$?
    DEL_MS=$(($(now_ms) - t0))
    echo "ublkd del $*: exit $DEL_RC after $DEL_MS ms: $DEL_ERR"
}

# del_refused ID WANT: del -n ID fails fast with one line containing WANT.
del_refused() {
    del_run -n "$1"
    [ "$DEL_RC" -ne 0 ] && [ "$DEL_RC" -ne 124 ] || { echo "not refused"; return 1; }
    [[ "$DEL_ERR" == *"$2"* ]] || { echo "message lacks '$2'"; return 1; }
    [ "$(printf '%s\n' "$DEL_ERR" | wc -l)" = 1 ] || { echo "not one line"; return 1; }
    [ "$DEL_MS" -lt 15000 ] || { echo "too slow"; return 1; }
}

# del_done ID [ARGS...]: del -n ID ARGS succeeds within LIMIT_MS (default 15 s), and the device
# and its daemon (DEL_PID, default: the pid list shows) are gone.
del_done() {
    local id=$1 pid=${DEL_PID:-}
    shift
    [ -n "$pid" ] || pid=$(daemon_pid "$id")
    del_run -n "$id" "$@"
    [ "$DEL_RC" = 0 ] || return 1
    [ "$DEL_MS" -lt "${LIMIT_MS:-15000}" ] || { echo "too slow"; return 1; }
    [ ! -e "/dev/ublkb$id" ] && [ ! -e "/dev/ublkc$id" ] && [ ! -e "/run/ublkd/$id.json" ] \
        || { echo "device $id left"; return 1; }
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "daemon $pid left"; return 1; fi
}

no_hung_tasks() { ! dmesg | grep -E "blocked for more than|hung_task"; }

del_refuses_mounted() {
    local img=$BACK/del-mnt.img mnt=$SCRATCH/del-mnt dev id
    truncate -s 128M "$img"; mkdir -p "$mnt"
    dev=$("$UBLKD" add -t file --path "$img" -q 2) || return 1
    id=${dev#/dev/ublkb}
    mkfs.ext4 -q -F "$dev" && mount "$dev" "$mnt" || return 1
    echo hello >"$mnt/before"
    del_refused "$id" "device $id is mounted on $mnt" || { umount "$mnt"; return 1; }
    # Nothing changed: the device is live and the file system works.
    "$UBLKD" list -n "$id" --json | grep -q '"state": "live"' || return 1
    head -c 1M /dev/urandom >"$mnt/after" && sync "$mnt/after" && [ "$(cat "$mnt/before")" = hello ] \
        || return 1
    umount "$mnt" || return 1
    del_done "$id"
}

del_refuses_open() {
    local dev id rpid
    dev=$("$UBLKD" add -t mem --size 64M) || return 1
    id=${dev#/dev/ublkb}
    sleep 60 <"$dev" &
    rpid=$!
    sleep 0.5
    del_refused "$id" "device $id is open by pid $rpid (sleep)" || { kill "$rpid"; return 1; }
    dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none || { kill "$rpid"; return 1; }
    kill "$rpid"; wait "$rpid" 2>/dev/null
    del_done "$id"
}

del_idle() {
    local dev id
    dev=$("$UBLKD" add -t file --path "$BACK/verify.img") || return 1
    id=${dev#/dev/ublkb}
    LIMIT_MS=10000 del_done "$id"
}

# --force on a mounted file system: ends in seconds, the device and its daemon are gone, and
# what was written (not synced) before del reached the backing file.
del_force_mounted() {
    local img=$BACK/del-force.img mnt=$SCRATCH/del-force dev id sum
    truncate -s 128M "$img"; mkdir -p "$mnt"
    dev=$("$UBLKD" add -t file --path "$img" -q 2) || return 1
    id=${dev#/dev/ublkb}
    mkfs.ext4 -q -F "$dev" && mount "$dev" "$mnt" || return 1
    head -c 8M /dev/urandom >"$mnt/data" || return 1
    sum=$(sha256sum <"$mnt/data")
    LIMIT_MS=30000 del_done "$id" --force || { umount "$mnt"; return 1; }
    "$UBLKD" list | grep -q "^$id " && { echo "list still shows it"; return 1; }
    umount "$mnt" || return 1
    no_hung_tasks || return 1
    # The file written before the forced del is on the backing file.
    dev=$("$UBLKD" add -t file --path "$img") || return 1
    mount "$dev" "$mnt" || return 1
    [ "$(sha256sum <"$mnt/data")" = "$sum" ] || { echo "data lost"; umount "$mnt"; return 1; }
    umount "$mnt"
    del_done "${dev#/dev/ublkb}"
}

# --all: the idle device goes, the busy one is refused (exit status 1, one line for it).
del_all_busy_and_idle() {
    local busy idle rpid
    busy=$("$UBLKD" add -t mem --size 64M) || return 1
    idle=$("$UBLKD" add -t mem --size 64M) || return 1
    sleep 60 <"$busy" &
    rpid=$!
    sleep 0.5
    del_run --all
    kill "$rpid"; wait "$rpid" 2>/dev/null
    local ok=0
    [ "$DEL_RC" = 1 ] \
        && [[ "$DEL_ERR" == *"device ${busy#/dev/ublkb} is open by pid $rpid (sleep)"* ]] \
        && [ "$(printf '%s\n' "$DEL_ERR" | wc -l)" = 1 ] \
        && [ ! -e "$idle" ] && [ -e "$busy" ] \
        && "$UBLKD" list -n "${busy#/dev/ublkb}" --json | grep -q '"state": "live"' \
        || ok=1
    del_done "${busy#/dev/ublkb}" || ok=1
    return $ok
}

# A supervised device: refused while mounted (the supervisor untouched), then --force: no
# daemon, no supervisor, no device left.
del_supervised() {
    local img=$BACK/del-sup.img mnt=$SCRATCH/del-sup dev id sup
    truncate -s 64M "$img"; mkdir -p "$mnt"
    dev=$("$UBLKD" add -t file --path "$img" --restart) || return 1
    id=${dev#/dev/ublkb}
    sup=$(python3 -c "import json; print(json.load(open('/run/ublkd/$id.json'))['supervisor_pid'])")
    mkfs.ext4 -q -F "$dev" && mount "$dev" "$mnt" || return 1
    del_refused "$id" "is mounted on $mnt" || { umount "$mnt"; return 1; }
    kill -0 "$sup" || { echo "supervisor gone"; return 1; }
    LIMIT_MS=30000 del_done "$id" --force || { umount "$mnt"; return 1; }
    umount "$mnt"
    sleep 0.5
    ! kill -0 "$sup" 2>/dev/null && ! pgrep -f "ublkd (serve|supervise)"
}

# A daemon that does not run (SIGSTOP): del still finishes, killing it after its bound.
del_stuck_daemon() {
    local dev id pid
    dev=$("$UBLKD" add -t mem --size 64M) || return 1
    id=${dev#/dev/ublkb}
    pid=$(daemon_pid "$id")
    kill -STOP "$pid"
    LIMIT_MS=90000 del_done "$id"
}

# A queue thread that never ends (fault injected): the daemon's teardown gives up on it after its
# bound and says so in one log line, the daemon exits, and del deletes the device it left.
del_stuck_queue() {
    local dev id
    dev=$(UBLKD_FAULT_QUEUE_STUCK=1 "$UBLKD" add -t mem --size 64M -q 2) || return 1
    id=${dev#/dev/ublkb}
    LIMIT_MS=60000 del_done "$id" || return 1
    grep "still busy" "/run/ublkd/$id.log" | tail -1 | grep -q "queue \[0\] still busy 10s after STOP_DEV"
}

# set_state ID KEY=PYEXPR...: rewrite fields of a state file ('del:' KEY deletes it).
set_state() {
    local f=/run/ublkd/$1.json
    shift
    python3 - "$f" "$@" <<'EOF'
import json, sys
f = sys.argv[1]; s = json.load(open(f))
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    if k == "del": s.pop(v, None)
    else: s[k] = json.loads(v)
json.dump(s, open(f, "w"))
EOF
}

# State files whose pids now name an unrelated live process (a daemon that crashed, its pid
# reused): del acts on the device and never signals that process.
del_never_signals_a_stranger() {
    local stranger dev id pid
    sleep 300 &
    stranger=$!
    # No device behind the state file at all.
    dev=$("$UBLKD" add -t mem --size 16M) || return 1
    id=${dev#/dev/ublkb}
    cp "/run/ublkd/$id.json" /run/ublkd/99.json
    "$UBLKD" del -n "$id" || return 1
    set_state 99 id=99 pid="$stranger" supervisor_pid="$stranger"
    del_run -n 99
    [[ "$DEL_ERR" == *"device 99 does not exist"* ]] || return 1
    kill -0 "$stranger" || { echo "stranger signalled (no device)"; return 1; }
    # A live device: the daemon is found through the driver (it holds the char device).
    dev=$("$UBLKD" add -t mem --size 16M) || return 1
    id=${dev#/dev/ublkb}
    pid=$(daemon_pid "$id")
    set_state "$id" pid="$stranger" supervisor_pid="$stranger"
    DEL_PID=$pid del_done "$id" || return 1
    kill -0 "$stranger" || { echo "stranger signalled (live device)"; return 1; }
    # The daemon died; its state file, with and without the identity fields, names the stranger.
    for fmt in current old; do
        dev=$("$UBLKD" add -t mem --size 16M) || return 1
        id=${dev#/dev/ublkb}
        pid=$(daemon_pid "$id")
        kill -9 "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        if [ "$fmt" = old ]; then
            set_state "$id" pid="$stranger" supervisor_pid="$stranger" del=identity del=supervisor_identity
        else
            set_state "$id" pid="$stranger" supervisor_pid="$stranger"
        fi
        DEL_PID=$pid del_done "$id" || return 1
        kill -0 "$stranger" || { echo "stranger signalled (dead daemon, $fmt state file)"; return 1; }
    done
    kill "$stranger"
}

test_del_safety() {
    check "del: a mounted device is refused naming the mount point, and keeps working" del_refuses_mounted
    check "del: a device open by a reader is refused naming its pid" del_refuses_open
    check "del: an idle device is deleted in seconds" del_idle
    check "del --force: a mounted device goes in seconds, its unsynced writes reach the file" del_force_mounted
    check "del --all: idle device deleted, busy one refused, exit 1" del_all_busy_and_idle
    check "del: supervised device refused while mounted; --force leaves no daemon or supervisor" del_supervised
    check "del: a stopped (SIGSTOP) daemon is killed after its bound, device deleted" del_stuck_daemon
    check "del: a queue thread that never ends: teardown says so and exits, del deletes the rest" del_stuck_queue
    check "del: state files naming an unrelated live process: never signalled" del_never_signals_a_stranger
    check_clean "del tests leave nothing behind"
}

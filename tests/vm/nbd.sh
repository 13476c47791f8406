# shellcheck shell=bash
# NBD checks for the VM suite (sourced by run.sh after lib.sh; uses $UBLKD, $SCRATCH, $LOG_DIR,
# $BACK and run.sh's fio_verify / ext4_round_trip):
#   test_nbd_export_kernel_client  the kernel's NBD client (nbd-client + nbd.ko) on `ublkd export`
#   test_nbd_target_over_nbdkit    a ublk device backed by nbdkit through `-t nbd`
# Each function kills every process it started and disconnects /dev/nbd0, pass or fail.

# wait_tcp PORT: until 127.0.0.1:PORT accepts connections (10 s).
wait_tcp() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# wait_sock PATH: until a Unix socket exists at PATH (10 s).
wait_sock() {
    for _ in $(seq 1 100); do
        [ -S "$1" ] && return 0
        sleep 0.1
    done
    return 1
}

# stop_pid PID [SECS]: SIGTERM, wait up to SECS (default 10) for it to exit, SIGKILL after.
# Returns the process's exit status, or 124 when it had to be killed.
stop_pid() {
    local pid=$1 secs=${2:-10}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 124
    fi
    wait "$pid"
}

nbd0_connected() { [ -e /sys/block/nbd0/pid ]; }

# nbd0_detached: /dev/nbd0 reports size 0 within 5 s.
nbd0_detached() {
    for _ in $(seq 50); do
        [ "$(cat /sys/block/nbd0/size)" = 0 ] && return 0
        sleep 0.1
    done
    return 1
}

# --- the kernel's nbd client on `ublkd export -t file` --------------------------------------

NBD_EXPORT_PID=
NBD_EXPORT_PORT=10809

_nbd_export_body() {
    local file=$BACK/nbd-export.img log=$LOG_DIR/nbd-export-daemon.log sum rc
    command -v nbd-client >/dev/null || { fail "nbd export: nbd-client is not installed"; return; }
    modprobe nbd 2>/dev/null
    [ -e /dev/nbd0 ] || { fail "nbd export: no /dev/nbd0 (modprobe nbd failed)"; return; }
    nbd0_connected && { fail "nbd export: /dev/nbd0 is already in use"; return; }
    rm -f "$file"
    truncate -s 256M "$file"
    "$UBLKD" export -t file --path "$file" --name vmdisk --listen "127.0.0.1:$NBD_EXPORT_PORT" 2>"$log" &
    NBD_EXPORT_PID=$!
    wait_tcp "$NBD_EXPORT_PORT" || { fail "nbd export: listening on $NBD_EXPORT_PORT" "$(tail -3 "$log")"; return; }
    check "nbd export: logs one line with address, name and size" \
        grep -q "listening on 127.0.0.1:$NBD_EXPORT_PORT: export \"vmdisk\" .*256M" "$log"
    # nbd-client 3.24: -N selects the export by name (newstyle; "" would select the default).
    check "nbd export: nbd-client attaches /dev/nbd0" \
        nbd-client -N vmdisk 127.0.0.1 "$NBD_EXPORT_PORT" /dev/nbd0
    nbd0_connected || return
    check "nbd export: /dev/nbd0 is 256M" test "$(blockdev --getsize64 /dev/nbd0)" = $((256 << 20))
    check "nbd export: kernel nbd client: ext4 mkfs, write, fsck, remount, checksums" \
        ext4_round_trip /dev/nbd0 nbd-export
    sum=$(sha256sum </dev/nbd0 | cut -d' ' -f1)
    check "nbd export: nbd-client -d detaches /dev/nbd0" nbd-client -d /dev/nbd0
    check "nbd export: /dev/nbd0 has size 0 after detach" nbd0_detached
    stop_pid "$NBD_EXPORT_PID" 10; rc=$?
    NBD_EXPORT_PID=
    check "nbd export: SIGTERM stops the export with status 0 (was $rc)" test "$rc" = 0
    check "nbd export: backing file holds what the kernel client wrote" \
        test "$sum" = "$(sha256sum <"$file" | cut -d' ' -f1)"
}

_nbd_export_cleanup() {
    local mnt=$SCRATCH/mnt-nbd-export
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
    nbd0_connected && nbd-client -d /dev/nbd0 >/dev/null 2>&1
    stop_pid "$NBD_EXPORT_PID" 5 >/dev/null 2>&1
    NBD_EXPORT_PID=
    rm -f "$BACK/nbd-export.img"
}

test_nbd_export_kernel_client() {
    _nbd_export_body
    _nbd_export_cleanup
    check "nbd export: /dev/nbd0 disconnected and export stopped afterwards" \
        bash -c "! [ -e /sys/block/nbd0/pid ] && ! pgrep -f 'ublkd [e]xport' >/dev/null"
}

# --- a ublk device backed by nbdkit (`-t nbd`) --------------------------------------------

NBDKIT_PIDS=()
NBD_TARGET_DEVS=()
NBDKIT_PORT=10810

# start_nbdkit LOG ARGS...: nbdkit in the foreground, in the background of this shell.
start_nbdkit() {
    local log=$1; shift
    nbdkit -f "$@" 2>"$log" &
    NBDKIT_PIDS+=($!)
}

_nbd_target_body() {
    local dev sock=$SCRATCH/nbdkit.sock id out
    command -v nbdkit >/dev/null || { fail "nbd target: nbdkit is not installed"; return; }
    # TCP, multi-conn allowed (the memory plugin advertises it): 2 queues, 2 connections.
    start_nbdkit "$LOG_DIR/nbdkit-tcp.log" -p "$NBDKIT_PORT" -i 127.0.0.1 memory 256M
    wait_tcp "$NBDKIT_PORT" || { fail "nbd target: nbdkit listening" "$(tail -3 "$LOG_DIR/nbdkit-tcp.log")"; return; }
    dev=$("$UBLKD" add -t nbd --uri "nbd://127.0.0.1:$NBDKIT_PORT" -q 2 -d 128) ||
        { fail "nbd target: add -t nbd over nbdkit (TCP)"; return; }
    NBD_TARGET_DEVS+=("${dev#/dev/ublkb}")
    check "nbd target: device is 256M" test "$(blockdev --getsize64 "$dev")" = $((256 << 20))
    check "nbd target: list shows the nbd target with 2 queues" \
        bash -c "'$UBLKD' list -n ${dev#/dev/ublkb} --json | grep -q 'nbd nbd://127.0.0.1:$NBDKIT_PORT' &&
                 '$UBLKD' list -n ${dev#/dev/ublkb} --json | grep -q '\"queues\": 2'"
    check "nbd target: nbdkit fio verify crc32c randwrite 4k qd32" fio_verify "$dev" nbd-nbdkit "--bs=4k" 32
    check "nbd target: del (TCP)" "$UBLKD" del -n "${dev#/dev/ublkb}"
    NBD_TARGET_DEVS=()

    # Unix socket, multi-conn hidden by nbdkit's filter: the device gets 1 queue and says why.
    start_nbdkit "$LOG_DIR/nbdkit-unix.log" --unix "$sock" --filter=multi-conn memory 64M multi-conn-mode=disable
    wait_sock "$sock" || { fail "nbd target: nbdkit on $sock" "$(tail -3 "$LOG_DIR/nbdkit-unix.log")"; return; }
    dev=$("$UBLKD" add -t nbd --uri "nbd+unix:///?socket=$sock" -q 2 -d 64) ||
        { fail "nbd target: add -t nbd over nbdkit (Unix socket)"; return; }
    id=${dev#/dev/ublkb}
    NBD_TARGET_DEVS+=("$id")
    out=$("$UBLKD" list -n "$id" --json)
    check "nbd target: no multi-conn: 1 queue" bash -c "echo '$out' | grep -q '\"queues\": 1'"
    check "nbd target: no multi-conn: the daemon log says so" \
        grep -q "server does not allow multi-conn: using 1 queue" "/run/ublkd/$id.log"
    check "nbd target: nbdkit (Unix, 1 queue) fio verify crc32c randwrite 4k qd32" \
        fio_verify "$dev" nbd-nbdkit-unix "--bs=4k" 32
    check "nbd target: del (Unix socket)" "$UBLKD" del -n "$id"
    NBD_TARGET_DEVS=()

    expect_error "nbd target: connection refused is one line, nothing left" "Connection refused" \
        "$UBLKD" add -t nbd --uri nbd://127.0.0.1:1
    expect_error "nbd target: bad URI is one line" "invalid NBD URI" \
        "$UBLKD" add -t nbd --uri "nbd+unix:///x"
}

_nbd_target_cleanup() {
    local id pid
    for id in "${NBD_TARGET_DEVS[@]}"; do "$UBLKD" del -n "$id" >/dev/null 2>&1; done
    NBD_TARGET_DEVS=()
    for pid in "${NBDKIT_PIDS[@]}"; do stop_pid "$pid" 5 >/dev/null 2>&1; done
    NBDKIT_PIDS=()
    rm -f "$SCRATCH/nbdkit.sock"
}

test_nbd_target_over_nbdkit() {
    _nbd_target_body
    _nbd_target_cleanup
    check_clean "nbd target: no device, daemon or state file left"
    check "nbd target: no nbdkit left running" bash -c "! pgrep -x nbdkit >/dev/null"
}

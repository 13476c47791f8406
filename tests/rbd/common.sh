# Helpers for the rbd suites (tests/rbd/host.sh on the host, tests/vm/rbd.sh in the guest).
# Needs UBLKD, CONF (the cluster's ceph.conf), CLUSTER, SCRATCH and LOG_DIR; sourced after
# tests/vm/lib.sh.

EXPORT_PIDS=()
EXPORT_PORT=${EXPORT_PORT:-10900}

# start_export NAME TARGET-ARGS...: `ublkd export -t rbd` in the background on the next port;
# sets EXPORT_URI once it listens.
start_export() {
    local name=$1; shift
    EXPORT_PORT=$((EXPORT_PORT + 1))
    "$UBLKD" export -t rbd --conf "$CONF" "$@" --listen "127.0.0.1:$EXPORT_PORT" \
        >"$LOG_DIR/export-$name.log" 2>&1 &
    EXPORT_PIDS+=($!)
    EXPORT_URI="nbd://127.0.0.1:$EXPORT_PORT/"
    local i
    for i in $(seq 1 300); do
        grep -q "listening on" "$LOG_DIR/export-$name.log" && return 0
        kill -0 "${EXPORT_PIDS[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    cat "$LOG_DIR/export-$name.log"
    return 1
}

# Stop every export started so far (SIGTERM: clients finish, exit 0).
stop_exports() {
    local p
    for p in "${EXPORT_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${EXPORT_PIDS[@]}"; do wait "$p" 2>/dev/null; done
    EXPORT_PIDS=()
}

# fio_nbd_verify URI NAME FIO-ARGS...: random writes with crc32c verify through fio's nbd engine.
fio_nbd_verify() {
    local uri=$1 name=$2; shift 2
    fio --name="$name" --ioengine=nbd --uri="$uri" --rw=randwrite --verify=crc32c --do_verify=1 \
        --verify_fatal=1 --randrepeat=0 --group_reporting "$@" >"$LOG_DIR/fio-$name.out" 2>&1 || return 1
    grep -q "err= 0" "$LOG_DIR/fio-$name.out" || return 1
    ! grep -qi "verify: bad\|verify failed\|crc32c: verify" "$LOG_DIR/fio-$name.out"
}

# The export's bytes equal the image's as `rbd export` reads them.
same_bytes_as_rbd() { # URI IMAGE
    nbdcopy "$1" "$SCRATCH/via-nbd.img" || return 1
    rbd -c "$CONF" export --no-progress "$2" "$SCRATCH/via-rbd.img" 2>/dev/null || return 1
    local a b
    a=$(sha256sum <"$SCRATCH/via-nbd.img"); b=$(sha256sum <"$SCRATCH/via-rbd.img")
    rm -f "$SCRATCH/via-nbd.img" "$SCRATCH/via-rbd.img"
    [ "$a" = "$b" ]
}

# expect_export_error NAME "substring" TARGET-ARGS...: the export fails in one line, listens on
# nothing and leaves nothing behind.
expect_export_error() {
    local name=$1 want=$2; shift 2
    expect_error "$name" "$want" "$UBLKD" export -t rbd --conf "$CONF" "$@" --listen 127.0.0.1:10999
}

# After scripts/ceph.sh stop: no daemon and no directory left.
ceph_gone() {
    "$ROOT/scripts/ceph.sh" stop "$CLUSTER" || return 1
    [ ! -e "$CLUSTER" ] || { echo "$CLUSTER still exists"; return 1; }
    ! pgrep -af "ceph-(mon|osd) -c $CLUSTER/"
}

#!/bin/bash
# The vhost-user-blk suite: backends (ublkd vhost) on this host, one QEMU guest (TCG, booted by
# scripts/vm.sh with shared memfd RAM) whose four vhost-user-blk disks they serve, and
# tests/vhost/guest.sh inside it. No ublk driver is needed on the host.
#
#   file0  -t file on a 1 GiB host file, 2 queues: fio verify, ext4, discard, write-zeroes;
#          its Prometheus metrics (--metrics-listen) are read here after the guest suite
#   mem0   -t mem behind --filter delay (bounce buffers, a filter on the data path)
#   ro0    -t file --read-only, its backend started only after QEMU (QEMU waits for it)
#   null0  -t null, 1 queue
#   slow0  -t file behind --filter delay:ms=20, 2 queues: kill -9 + restart under fio verify
#          (this script does the kill when the guest asks; the delay makes sure requests are
#          in flight in the backend when it dies)
#
# Host checks: each backend stops cleanly on SIGTERM (exit 0), the restarted one resubmitted
# what was in flight, bad options give one-line errors. Ends with "N passed, N failed".
# Options: --kernel 7.3|6.12 (default 7.3). Needs target/release/ublkd (or $UBLKD).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
UBLKD=${UBLKD:-$repo/target/release/ublkd}
kernel=7.3
[[ "${1:-}" == --kernel ]] && kernel=$2
passed=0 failed=0
pass() { passed=$((passed + 1)); echo "PASS: $1"; }
fail() { failed=$((failed + 1)); echo "FAIL: $1${2:+ -- $2}"; }

mkdir -p /tmp/ublkd-vm
ctl=$(mktemp -d /tmp/ublkd-vm/vhost.XXXXXX)
truncate -s 1G "$ctl/file0.img"
truncate -s 256M "$ctl/slow0.img"
yes ublkd-ro | head -c 64M >"$ctl/ro0.img"

declare -A args
args[file0]="-t file --path $ctl/file0.img --num-queues 2 --metrics-listen 127.0.0.1:19433"
args[mem0]="-t mem --size 256M --filter delay:us=100 --num-queues 2"
args[ro0]="-t file --path $ctl/ro0.img --read-only --num-queues 1"
args[null0]="-t null --size 1G --num-queues 1"
args[slow0]="-t file --path $ctl/slow0.img --filter delay:ms=20 --num-queues 2"

start() { # name
    rm -f "$ctl/$1.sock"
    # shellcheck disable=SC2086
    UBLKD_LOG=${UBLKD_LOG:-info} "$UBLKD" vhost ${args[$1]} --socket "$ctl/$1.sock" --serial "$1" \
        >>"$ctl/$1.log" 2>&1 &
    echo $! >"$ctl/$1.pid"
    for _ in $(seq 100); do [[ -S "$ctl/$1.sock" ]] && return 0; sleep 0.05; done
    echo "backend $1 did not create its socket" >&2
}
for d in file0 mem0 null0 slow0; do start "$d"; done

qopts=""
for d in file0 mem0 ro0 null0 slow0; do
    n=$(sed -n 's/.*--num-queues \([0-9]*\).*/\1/p' <<<"${args[$d]}")
    qopts+=" -chardev socket,id=$d,path=$ctl/$d.sock,reconnect=1"
    qopts+=" -device vhost-user-blk-pci,chardev=$d,num-queues=$n"
done

# The guest asks for a kill -9 + restart of file0's backend through $ctl.
(
    while [[ ! -e "$ctl/done" ]]; do
        if [[ -e "$ctl/kill-slow0" ]]; then
            pid=$(cat "$ctl/slow0.pid")
            kill -9 "$pid"
            while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
            echo "host: killed the backend (pid $pid) with -9; the guest saw $(cat "$ctl/kill-slow0") requests in flight" >>"$ctl/slow0.log"
            rm -f "$ctl/kill-slow0"
            start slow0
            touch "$ctl/restarted-slow0"
        fi
        sleep 0.05
    done
) &
ctl_loop=$!

# ro0's backend comes up only after QEMU started (and waits for it).
( sleep 8; start ro0; sleep infinity ) &
late=$!

"$repo/scripts/vm.sh" --kernel "$kernel" --shared-mem --timeout 900 --env "VHOST_CTL=$ctl" \
    --env "VHOST_ONLY=${VHOST_ONLY:-}" \
    --qemu-opts "$qopts" -- tests/vhost/guest.sh 2>&1 | tee "$ctl/guest.out"
line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$ctl/guest.out" | tail -1)
if [[ -n "$line" ]]; then
    passed=$((passed + ${line%% passed*})); f=${line#*, }; failed=$((failed + ${f%% failed*}))
else
    fail "guest suite ran" "no result line (see $ctl/guest.out)"
fi
touch "$ctl/done"
wait "$ctl_loop" 2>/dev/null
kill "$late" 2>/dev/null

# file0's Prometheus metrics after the guest's verify, ext4 and discard tests: valid text
# format, reads and writes counted on both virtqueues, discards counted with their bytes.
metric() { # NAME QUEUE OP
    awk -v k="$1{device=\"file0\",queue=\"$2\",op=\"$3\"}" \
        '$1 == k {print $2; f = 1} END {if (!f) print 0}' "$ctl/file0.prom"
}
if [[ -n ${VHOST_ONLY:-} ]]; then
    echo "file0 metrics: not checked (VHOST_ONLY run)"
elif curl -fsS --max-time 10 http://127.0.0.1:19433/metrics >"$ctl/file0.prom"; then
    if promtool check metrics <"$ctl/file0.prom" >"$ctl/promtool.out" 2>&1; then
        pass "file0 metrics: promtool check metrics"
    else
        fail "file0 metrics: promtool check metrics" "$(head -3 "$ctl/promtool.out")"
    fi
    for q in 0 1; do
        r=$(metric ublkd_requests_total "$q" read) w=$(metric ublkd_requests_total "$q" write)
        if [[ ${r:-0} -gt 0 && ${w:-0} -gt 0 ]]; then
            pass "file0 metrics: queue $q counted $r reads and $w writes"
        else
            fail "file0 metrics: queue $q counted reads and writes" "read=${r:-none} write=${w:-none}"
        fi
    done
    d=$(($(metric ublkd_bytes_total 0 discard) + $(metric ublkd_bytes_total 1 discard)))
    if [[ $d -gt 0 ]]; then pass "file0 metrics: $d bytes discarded counted"; else fail "file0 metrics: discards counted"; fi
else
    fail "file0 metrics: http://127.0.0.1:19433/metrics answers"
fi

# Every backend stops cleanly on SIGTERM.
for d in file0 mem0 ro0 null0 slow0; do
    pid=$(cat "$ctl/$d.pid" 2>/dev/null)
    if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then fail "$d: backend still running at the end" "see $ctl/$d.log"; continue; fi
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        fail "$d: stops on SIGTERM" "still running"; kill -9 "$pid"
    elif grep -q 'stopped;' "$ctl/$d.log" && [[ ! -e "$ctl/$d.sock" ]]; then
        pass "$d: stops cleanly on SIGTERM (socket removed)"
    else
        fail "$d: stops cleanly on SIGTERM" "see $ctl/$d.log"
    fi
done
if grep -q 'resubmitting' "$ctl/slow0.log"; then
    pass "slow0: the restarted backend resubmitted what was in flight ($(grep -o 'resubmitting [0-9]* request' "$ctl/slow0.log" | tr '\n' ' '))"
else
    fail "slow0: the restarted backend resubmitted what was in flight" "see $ctl/slow0.log"
fi
for d in file0 mem0; do grep -h 'requests;' "$ctl/$d.log" | tail -1 | sed "s/^/$d: /"; done

# Bad options: one line, non-zero exit.
one_line_error() { # name want args...
    local name=$1 want=$2 err; shift 2
    err=$("$UBLKD" vhost "$@" 2>&1 >/dev/null) && { fail "$name" "exited 0"; return; }
    if [[ "$err" == *"$want"* && $(wc -l <<<"$err") -eq 1 ]]; then pass "$name"; else fail "$name" "$err"; fi
}
one_line_error "error: missing file" "cannot open" -t file --path "$ctl/nope.img" --socket "$ctl/x.sock"
one_line_error "error: queue size not a power of two" "power of two" -t null --size 1G --socket "$ctl/x.sock" --queue-size 300
one_line_error "error: serial too long" "at most 20" -t null --size 1G --socket "$ctl/x.sock" --serial 0123456789012345678901
one_line_error "error: socket in a missing directory" "cannot listen" -t null --size 1G --socket "$ctl/no/x.sock"
one_line_error "error: metrics beyond loopback" "not a loopback address" -t null --size 1G --socket "$ctl/x.sock" --metrics-listen 0.0.0.0:19434

echo "logs: $ctl"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]

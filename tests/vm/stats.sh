# Statistics tests, sourced by run.sh: `ublkd stats` counts exactly what fio issued (direct I/O),
# percentiles are present and ordered, `top` works over a pipe, `metrics` passes promtool, and
# a real Prometheus server scrapes it and computes the rate fio drove.

# stat_of ID OP FIELD: one number of `ublkd stats -n ID --json --interval 0` (device totals).
stat_of() {
    "$UBLKD" stats -n "$1" --json --interval 0 | jq -r ".devices[0].ops.$2.$3"
}

# fio_ios DEV FIO-ARGS...: run fio (direct I/O, 4k unless given), print "READS WRITES" it issued.
fio_ios() {
    local dev=$1; shift
    fio --name=stats --filename="$dev" --ioengine=io_uring --direct=1 --bs=4k "$@" \
        --output-format=json 2>/dev/null | jq -r '"\(.jobs[0].read.total_ios) \(.jobs[0].write.total_ios)"'
}

# counts_match ID DEV FIO-ARGS...: the device's read and write counts and bytes grow by exactly
# what fio issued (4k each), and no request failed.
counts_match() {
    local id=$1 dev=$2; shift 2
    udevadm settle 2>/dev/null
    local r0 w0 rb0 wb0 r1 w1 rb1 wb1 fr fw
    r0=$(stat_of "$id" read requests); w0=$(stat_of "$id" write requests)
    rb0=$(stat_of "$id" read bytes); wb0=$(stat_of "$id" write bytes)
    read -r fr fw < <(fio_ios "$dev" "$@")
    r1=$(stat_of "$id" read requests); w1=$(stat_of "$id" write requests)
    rb1=$(stat_of "$id" read bytes); wb1=$(stat_of "$id" write bytes)
    echo "fio: $fr reads $fw writes; ublkd: $((r1 - r0)) reads $((w1 - w0)) writes"
    [ "$fr" -gt 0 ] || [ "$fw" -gt 0 ] || { echo "fio did nothing"; return 1; }
    [ $((r1 - r0)) = "$fr" ] && [ $((w1 - w0)) = "$fw" ] || return 1
    [ $((rb1 - rb0)) = $((fr * 4096)) ] && [ $((wb1 - wb0)) = $((fw * 4096)) ] || return 1
    [ "$(stat_of "$id" read errors)" = 0 ] && [ "$(stat_of "$id" write errors)" = 0 ]
}

# percentiles_ordered ID OP: p50 <= p99 <= p99.9, all present and positive.
percentiles_ordered() {
    local j
    j=$("$UBLKD" stats -n "$1" --json --interval 0) || return 1
    echo "$j" | jq ".devices[0].ops.$2"
    echo "$j" | jq -e ".devices[0].ops.$2 | .p50_us > 0 and .p50_us <= .p99_us and .p99_us <= .p999_us" >/dev/null
}

# queues_add_up ID: per-queue requests sum to the device's, and every queue is listed.
queues_add_up() {
    local j
    j=$("$UBLKD" stats -n "$1" --json --interval 0) || return 1
    echo "$j" | jq -e '.devices[0] | (.queues | length) == 2
        and ([.queues[].ops.read.requests] | add) == .ops.read.requests
        and ([.queues[].ops.read.requests] | all(. > 0))' >/dev/null
}

# rates_over_interval ID DEV: `stats --interval 3` in the middle of a rate-limited fio run
# reports a read rate within 25% of fio's own average.
rates_over_interval() {
    local id=$1 dev=$2 iops fio_iops r0 out
    out=$(mktemp)
    r0=$(stat_of "$id" read requests)
    fio --name=rate --filename="$dev" --ioengine=io_uring --direct=1 --bs=4k --rw=randread \
        --rate_iops=100 --time_based --runtime=30 --output-format=json >"$out" 2>/dev/null &
    local fpid=$!
    # Measure once fio is issuing (a slow guest can take seconds to start it), well inside its
    # 30 s (each `stat_of` can take a second on a loaded TCG guest).
    for _ in $(seq 50); do [ "$(stat_of "$id" read requests)" -gt "$r0" ] && break; sleep 0.2; done
    sleep 1
    iops=$("$UBLKD" stats -n "$id" --json --interval 3 | jq -r '.devices[0].ops.read.iops')
    wait "$fpid"
    fio_iops=$(jq '.jobs[0].read.iops' "$out")
    rm -f "$out"
    echo "read iops over 3 s: $iops (fio: $fio_iops on average, limited to 100)"
    awk -v v="$iops" -v f="$fio_iops" 'BEGIN { exit !(f > 50 && v > 0.75 * f && v < 1.25 * f) }'
}

# top_over_pipe: `top --iterations 2 | cat` prints a header and a line per device per interval.
top_over_pipe() {
    local out n
    out=$(timeout 20 "$UBLKD" top --iterations 2 | cat) || return 1
    echo "$out"
    n=$(echo "$out" | grep -c '/dev/ublkb')
    [ "$(echo "$out" | head -1 | grep -c 'R-IOPS')" = 1 ] && [ "$n" = $((2 * $1)) ]
}

# top_on_terminal: on a terminal (script(1)'s pty) top redraws the screen, quits on q, and puts
# the terminal back (stty's settings after it equal those before).
top_on_terminal() {
    local out
    out=$( (sleep 6; printf q) | timeout 30 script -qec \
        "stty -a > $SCRATCH/stty-before; $UBLKD top; rc=\$?; stty -a > $SCRATCH/stty-after; exit \$rc" /dev/null) ||
        return 1
    echo "$out" | tr '\033' '^' | tail -5
    [[ "$out" == *$'\033[2J'* ]] && [[ "$out" == *"ublkd top:"* ]] && [[ "$out" == *R-IOPS* ]] &&
        cmp "$SCRATCH/stty-before" "$SCRATCH/stty-after"
}

# stats_text ID: the human table names the device and its ops with percentiles.
stats_text() {
    local out
    out=$("$UBLKD" stats -n "$1" --interval 0) || return 1
    echo "$out"
    echo "$out" | grep -q "^device $1 (/dev/ublkb$1" && echo "$out" | grep -q 'p99.9 us' &&
        echo "$out" | grep -qE '^  read +[0-9]+' && echo "$out" | grep -qE '^  q1 read +[0-9]+'
}

# control_socket_private ID: the socket is root's alone (0600) and goes with the device.
control_socket_private() {
    local s=/run/ublkd/$1.sock
    [ -S "$s" ] && [ "$(stat -c %a "$s")" = 600 ]
}

# METRICS_PID: the `ublkd metrics` server of the test.
start_metrics() {
    "$UBLKD" metrics --listen 127.0.0.1:9433 >"$LOG_DIR/metrics-server.log" 2>&1 &
    METRICS_PID=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:9433/metrics >/dev/null && return 0; sleep 0.1; done
    return 1
}

# metrics_valid ID: the exposition passes promtool and carries the device's samples.
metrics_valid() {
    local m
    m=$(curl -sf http://127.0.0.1:9433/metrics) || return 1
    echo "$m" | promtool check metrics || return 1
    echo "$m" | grep -E "^ublkd_requests_total\{device=\"$1\",queue=\"0\",op=\"read\"\} [1-9]" &&
        echo "$m" | grep -q "^ublkd_request_duration_seconds_bucket{device=\"$1\",queue=\"0\",op=\"read\",le=\"+Inf\"}" &&
        echo "$m" | grep -q '^# TYPE ublkd_request_duration_seconds histogram' &&
        [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9433/nope)" = 404 ]
}

test_stats() {
    local null file nid fid
    truncate -s 64M "$BACK/stats.img"
    null=$("$UBLKD" add -t null --size 1G -q 2 -d 64) || { fail "stats: add null"; return; }
    file=$("$UBLKD" add -t file --path "$BACK/stats.img" -q 1 -d 32) || { fail "stats: add file"; return; }
    nid=${null#/dev/ublkb}; fid=${file#/dev/ublkb}
    check "stats: control socket is 0600" control_socket_private "$nid"
    # Every 4k block once, random order (fio's random map): exact counts, no merges at qd1.
    check "stats: null randread counts = fio's" counts_match "$nid" "$null" --rw=randread --size=8M --iodepth=1
    check "stats: null randwrite counts = fio's" counts_match "$nid" "$null" --rw=randwrite --size=4M --iodepth=1
    # Two jobs spread over both queues.
    check "stats: null reads from two queues add up" counts_match "$nid" "$null" --rw=randread --size=4M \
        --iodepth=1 --numjobs=2 --group_reporting --cpus_allowed_policy=split
    check "stats: per-queue counts add up to the device's" queues_add_up "$nid"
    check "stats: file 70/30 randrw counts = fio's" counts_match "$fid" "$file" --rw=randrw --rwmixread=70 \
        --size=4M --iodepth=1
    check "stats: read percentiles ordered" percentiles_ordered "$fid" read
    check "stats: write percentiles ordered" percentiles_ordered "$fid" write
    check "stats: --interval rate matches fio's rate" rates_over_interval "$nid" "$null"
    check "stats: text table" stats_text "$nid"
    check "top: over a pipe, --iterations 2" top_over_pipe 2
    check "top: on a terminal, q quits and the terminal is restored" top_on_terminal
    expect_error "stats: unknown device is one line" "device 99" "$UBLKD" stats -n 99
    expect_error "metrics: non-loopback refused" "--allow-remote" "$UBLKD" metrics --listen 0.0.0.0:9434
    if check "metrics: server starts" start_metrics; then
        check "metrics: promtool check metrics passes, samples present" metrics_valid "$nid"
    fi
    [ -n "${METRICS_PID:-}" ] && kill "$METRICS_PID" 2>/dev/null && wait "$METRICS_PID" 2>/dev/null
    METRICS_PID=
    check "stats: del null" "$UBLKD" del -n "$nid"
    check "stats: del file" "$UBLKD" del -n "$fid"
    check "stats: control sockets removed with their devices" \
        test -z "$(ls /run/ublkd/"$nid".sock /run/ublkd/"$fid".sock 2>/dev/null)"
    rm -f "$BACK/stats.img"
}

# prom_rate ID TIME: Prometheus's read rate of the device over the 10 s before TIME (unix s).
prom_rate() {
    curl -sf http://127.0.0.1:9090/api/v1/query --data-urlencode "time=$2" --data-urlencode \
        "query=sum(rate(ublkd_requests_total{device=\"$1\",op=\"read\"}[10s]))" |
        jq -r '.data.result[0].value[1] // empty'
}

# prometheus_scrapes ID DEV: a real Prometheus scrapes `ublkd metrics` every second; its PromQL
# read rate over 10 s inside a 24 s fio run is within 25% of fio's own average. (The
# query names its time, so a slow guest answering late does not move the window.)
prometheus_scrapes() {
    local id=$1 dev=$2 dir rate="" pp t0 fio_iops
    dir=$(mktemp -d)
    cat >"$dir/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: ublkd
    static_configs:
      - targets: ['127.0.0.1:9433']
YML
    prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/tsdb" \
        --web.listen-address=127.0.0.1:9090 >"$LOG_DIR/prometheus.log" 2>&1 &
    pp=$!
    for _ in $(seq 120); do curl -sf http://127.0.0.1:9090/-/ready >/dev/null && break; sleep 0.5; done
    sleep 3 # a few scrapes before the load
    local r0 fpid
    r0=$(stat_of "$id" read requests)
    fio --name=prom --filename="$dev" --ioengine=io_uring --direct=1 --bs=4k --rw=randread \
        --rate_iops=200 --time_based --runtime=24 --output-format=json >"$dir/fio.json" 2>/dev/null &
    fpid=$!
    # t0: when reads began (a loaded guest can take seconds to start fio).
    for _ in $(seq 100); do [ "$(stat_of "$id" read requests)" -gt "$r0" ] && break; sleep 0.2; done
    t0=$(date +%s)
    wait "$fpid"
    fio_iops=$(jq '.jobs[0].read.iops' "$dir/fio.json")
    sleep 2 # the last scrapes
    rate=$(prom_rate "$id" $((t0 + 15)))
    curl -sf http://127.0.0.1:9090/api/v1/query --data-urlencode "time=$((t0 + 15))" --data-urlencode \
        "query=ublkd_requests_total{device=\"$id\",op=\"read\"}[10s]" | jq -c '.data.result[].values'
    kill "$pp" 2>/dev/null
    wait "$pp" 2>/dev/null
    rm -rf "$dir"
    echo "prometheus: rate(reads) over [t0+5, t0+15] = ${rate:-none}; fio: $fio_iops IOPS"
    [ -n "$rate" ] && awk -v v="$rate" -v f="$fio_iops" 'BEGIN { exit !(f > 100 && v > 0.75 * f && v < 1.25 * f) }'
}

test_stats_prometheus() {
    local dev id
    command -v prometheus >/dev/null || { fail "prometheus: not installed (scripts/install-deps.sh)"; return; }
    dev=$("$UBLKD" add -t null --size 1G -q 2) || { fail "prometheus: add"; return; }
    id=${dev#/dev/ublkb}
    if check "prometheus: metrics server starts" start_metrics; then
        check "prometheus: scrapes ublkd metrics, PromQL rate within 25% of fio's" prometheus_scrapes "$id" "$dev"
    fi
    [ -n "${METRICS_PID:-}" ] && kill "$METRICS_PID" 2>/dev/null && wait "$METRICS_PID" 2>/dev/null
    METRICS_PID=
    check "prometheus: del" "$UBLKD" del -n "$id"
}

# export_metrics_count: `ublkd export --metrics-listen` counts what an NBD client did: 8 MiB
# written and read back by nbdcopy are 8 MiB of write and read bytes, and promtool accepts it.
export_metrics_count() {
    local pid m rc=1 data=$SCRATCH/export-metrics.bin
    head -c 8M /dev/urandom >"$data"
    "$UBLKD" export -t mem --size 64M --name disk --listen 127.0.0.1:10899 \
        --metrics-listen 127.0.0.1:9499 >"$LOG_DIR/export-metrics.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:9499/metrics >/dev/null && break; sleep 0.1; done
    if nbdcopy "$data" nbd://127.0.0.1:10899/disk && nbdcopy nbd://127.0.0.1:10899/disk "$data.back" &&
        cmp "$data" <(head -c 8M "$data.back"); then
        m=$(curl -sf http://127.0.0.1:9499/metrics)
        sum() { echo "$m" | awk -v p="^ublkd_bytes_total\\\\{device=\"disk\",queue=\"[0-9]+\",op=\"$1\"\\\\}" \
            '$0 ~ p { s += $2 } END { print s + 0 }'; }
        echo "write bytes $(sum write), read bytes $(sum read)"
        echo "$m" | promtool check metrics && [ "$(sum write)" = $((8 << 20)) ] &&
            [ "$(sum read)" -ge $((8 << 20)) ] && rc=0
    fi
    kill "$pid"; wait "$pid"
    rm -f "$data" "$data.back"
    return $rc
}

test_export_metrics() {
    check "export --metrics-listen: counts an NBD client's bytes, promtool passes" export_metrics_count
    expect_error "export --metrics-listen: non-loopback refused" "--allow-remote" \
        "$UBLKD" export -t null --size 1M --listen 127.0.0.1:10898 --metrics-listen 0.0.0.0:9498
}

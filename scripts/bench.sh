#!/usr/bin/env bash
# ublk benchmark: ublkd against the kernel's own devices, in one VM boot.
#
#   scripts/bench.sh [--kernel 7.3|6.12] [--quick] [--smoke] [--runs N] [--runtime S]
#                    [--out DIR] [--ublkd PATH] [--build] [--no-qd] [--no-load-wait]
#                    [--ublkd-args "..."] [--cells REGEX] [--groups "null file mem qcow2 qcow2-empty"]
#                    [--baseline PATH] [--peers rublk] [--variant NAME=ARGS]...
#
# Boots the VM once (scripts/vm.sh, TCG, 2 vCPUs, 4 GiB) and runs bench/guest.sh in it: fio
# (io_uring, direct=1, 4k, randread/randwrite, iodepth 1 and 64, numjobs 1 and 2, time-based,
# JSON) against
#   ublkd -t null (2 queues, depth 64)  vs  null_blk (queue_mode=2 submit_queues=2 irqmode=0)
#   ublkd -t file (2 queues, depth 64)  vs  loop --direct-io=on, the same 1 GiB file on tmpfs
#   ublkd -t mem  (2 queues, depth 64), reported beside them (ratio to null_blk)
# repeated --runs times (default 3) with the devices interleaved within every repetition. Each
# ublkd run gets a fresh device, so every run also gives the device creation time (`add` to a
# completed 4k O_DIRECT read), the daemon's RSS idle and under load (max, sampled every 0.2 s),
# its CPU time per I/O (utime+stime delta from /proc/PID/stat over fio's I/Os) and its batching
# factor (completions per io_uring_enter, from the daemon's shutdown log lines). Then, unless
# --no-qd, the queue-depth sweep: ublkd -t null --filter delay:ms=5 -q 1 -d 4096, randread,
# iodepth 1..4096, one job, against the ideal in_flight / 5 ms.
#
# Results (raw fio JSON, runs.csv, summary.csv, table.md, ratios.png, qd.png, notes.txt) go to
# --out (default /tmp/ublkd-vm/bench-<kernel>-<date>); the table is printed at the end.
#   --runtime S   seconds per fio run (default 5; --quick: 1)
#   --quick       1 s runs, 1 repetition unless --runs is given
#   --smoke       CI smoke run: no load wait; exit 0 only if the table was produced and printed
#   --ublkd-args  extra `ublkd add` arguments for every ublkd device (lever experiments, e.g.
#                 "--buffers copy" or "--busy-poll-us 50")
#   --cells REGEX only the matrix cells matching REGEX ("randread-qd64-j1", "qd64", ...)
#   --groups G    only these device groups (default "null file mem"; also qcow2: a fully
#                 allocated 256 MiB qcow2 image as ublkd serves it, qemu-nbd through the kernel nbd
#                 client, and ublkd -t file on the raw copy; qcow2-empty: first writes)
#   --baseline PATH  a second ublkd binary (an older build) measured in the same boot: every
#                 ublkd device of the matrix is measured with it too, interleaved, and the
#                 table adds its IOPS and our change against it (before/after claims made in
#                 one boot, whatever else the machine is doing). Same visibility rule as --ublkd.
#   --peers rublk another ublk server measured in the same boot: rublk (crates.io, pinned
#                 0.2.15, built once with `cargo install --no-default-features` into
#                 target/peers/; libclang-dev, which its libublk needs, is installed if missing), its null and loop targets in copy and
#                 zero-copy (-z) modes, interleaved with ours and the kernel's in every cell of the
#                 null and file groups; the table adds their IOPS, ratio and CPU per I/O.
#   --variant NAME=ARGS  a lever measured in the same boot: ublk-null~NAME and ublk-file~NAME
#                 are our null and file devices with ARGS added to `ublkd add` (e.g.
#                 --variant "zc=--buffers zero-copy"); repeatable; shown beside the peers.
#   --ublkd PATH  binary to run in the guest (must be visible there: not under the host's /tmp);
#                 default: this tree, built now (cargo does nothing when it is fresh) and copied
#                 to target/bench/ublkd so rebuilding target/release mid-run changes nothing.
#                 (--build is accepted and is the default.) notes.txt records the commit.
# The machine may be busy (other VMs): unless --no-load-wait/--smoke, wait up to 15 min for the
# 1-minute load average to drop below 1.0 before booting, and record it in notes.txt.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kernel=7.3
runtime=""
runs=""
quick=0
smoke=0
out=""
ublkd=""
baseline=""
qd=1
load_wait=1
add_args=""
cells=.
groups="null file mem"
peers=""
variants=""
RUBLK_VERSION=0.2.15

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "bench.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
    case "$1" in
    --kernel) kernel=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --smoke) smoke=1; load_wait=0; shift ;;
    --out) out=$2; shift 2 ;;
    --ublkd) ublkd=$2; shift 2 ;;
    --baseline) baseline=$2; shift 2 ;;
    --build) shift ;; # the default now; accepted for old command lines
    --no-qd) qd=0; shift ;;
    --no-load-wait) load_wait=0; shift ;;
    --ublkd-args) add_args=$2; shift 2 ;;
    --cells) cells=$2; shift 2 ;;
    --groups) groups=$2; shift 2 ;;
    --peers) peers=$2; shift 2 ;;
    --variant)
        [[ $2 =~ ^[a-z0-9-]+=.+$ && $2 != *";"* ]] || die "--variant wants NAME=ARGS (NAME of a-z 0-9 -, no ';')"
        variants+="${variants:+;}$2"
        shift 2
        ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ -n $runtime ]] || runtime=$((quick ? 1 : 5))
[[ -n $runs ]] || runs=$((quick ? 1 : 3))
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer"
[[ $runtime =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive integer"

# ---- the binary -----------------------------------------------------------------------------
if [[ -z $ublkd ]]; then
    # Always build: a stale binary once measured an older tree without saying so.
    ublkd=$repo/target/bench/ublkd
    tdir=${CARGO_TARGET_DIR:-$repo/target}
    (cd "$repo" && cargo build --release -p ublkd)
    mkdir -p "$repo/target/bench"
    cp "$tdir/release/ublkd" "$ublkd.tmp" && mv "$ublkd.tmp" "$ublkd"
fi
rev=$(cd "$repo" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z $(cd "$repo" && git status --porcelain --untracked-files=no 2>/dev/null) ]] || rev+="+changes"
[[ $ublkd == "$repo/target/bench/ublkd" ]] || rev="$ublkd (given)"
[[ -x $ublkd ]] || die "no ublkd binary at $ublkd"
ublkd=$(realpath "$ublkd")
if [[ -n $baseline ]]; then
    [[ -x $baseline ]] || die "no baseline binary at $baseline"
    baseline=$(realpath "$baseline")
    case $baseline in "$(realpath "$repo")"/target/*) ;; /tmp/*) die "--baseline $baseline: the guest does not see the host's /tmp" ;; esac
fi
# The peer server, built once per pinned version (the guest sees target/).
rublk=""
for p in $peers; do
    case $p in
    rublk)
        rublk=$repo/target/peers/rublk-$RUBLK_VERSION/bin/rublk
        if [[ ! -x $rublk ]]; then
            echo "bench.sh: building rublk $RUBLK_VERSION (once; cached in target/peers/)" >&2
            # libublk's build runs bindgen, which loads libclang.
            if ! compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null; then
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends libclang-dev >&2 ||
                    die "rublk needs libclang-dev, and installing it failed"
            fi
            cargo install --quiet --locked --no-default-features --version "$RUBLK_VERSION" \
                --root "$repo/target/peers/rublk-$RUBLK_VERSION" rublk ||
                die "could not build rublk $RUBLK_VERSION (its libublk needs libclang-dev)"
        fi
        ;;
    *) die "unknown peer '$p' (known: rublk)" ;;
    esac
done
# The guest sees the host's files except /tmp; vm.sh shares the repo's target/ though.
case $ublkd in "$(realpath "$repo")"/target/*) ;; /tmp/*) die "--ublkd $ublkd: the guest does not see the host's /tmp" ;; esac

# ---- results dir (guest-writable: under /tmp/ublkd-vm) --------------------------------------
stamp=$(date +%Y%m%d-%H%M%S)
gout=/tmp/ublkd-vm/bench-$kernel-$stamp
mkdir -p "$gout"
[[ -n $out ]] || out=$gout

# ---- wait for a quiet machine ---------------------------------------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
if [[ $load_wait == 1 ]]; then
    deadline=$(($(date +%s) + 900))
    while awk -v l="$(load1)" 'BEGIN { exit !(l >= 1.0) }' && (($(date +%s) < deadline)); do
        echo "bench.sh: load average $(load1) >= 1.0, waiting (until $(date -d @$deadline +%T))" >&2
        sleep 30
    done
fi
l1=$(load1)
echo "bench.sh: kernel $kernel, $runs run(s) x ${runtime}s per cell, load1 $l1, results in $out" >&2

# ---- one VM boot ----------------------------------------------------------------------------
set +e
"$repo/scripts/vm.sh" --kernel "$kernel" --mem 4G --cpus 2 --timeout 7200 \
    --env "UBLKD=$ublkd" --env "OUT=$gout" --env "RUNTIME=$runtime" --env "RUNS=$runs" \
    --env "QD_SWEEP=$qd" --env "LOAD1=$l1" --env "UBLKD_ADD_ARGS=$add_args" \
    --env "CELLS=$cells" --env "GROUPS_=$groups" --env "UBLKD_BASE=$baseline" --env "RUBLK=$rublk" --env "VARIANTS=$variants" \
    -- bench/guest.sh
rc=$?
set -e
echo "host load1 after the run: $(load1)" >>"$gout/notes.txt"
echo "ublkd: $rev" >>"$gout/notes.txt"
[[ -z $baseline ]] || echo "baseline ublkd: $baseline" >>"$gout/notes.txt"
[[ -z $rublk ]] || echo "peer: rublk $RUBLK_VERSION (crates.io, --no-default-features)" >>"$gout/notes.txt"
[[ $rc == 0 ]] || { echo "bench.sh: guest benchmark failed (exit $rc); partial results in $gout" >&2; exit 1; }

# ---- summary, table, plots on the host ------------------------------------------------------
python3 "$repo/bench/summarize.py" "$gout" || { echo "bench.sh: summarize failed" >&2; exit 1; }
if (cd "$repo" && cargo run -q --release -p bench-plot -- "$gout/summary.csv" "$gout"); then
    :
else
    echo "bench.sh: plotting failed (table and CSVs are still in $gout)" >&2
    [[ $smoke == 1 ]] || exit 1
fi
if [[ $out != "$gout" ]]; then
    mkdir -p "$out"
    cp -r "$gout"/. "$out"/
fi

cat "$out/table.md"
if [[ $smoke == 1 ]]; then
    # The smoke check: the table exists and has at least one measured ublkd row per group.
    for g in $groups; do
        grep -q "^| $g |" "$out/table.md" || { echo "bench.sh: smoke: no '$g' rows in the table" >&2; exit 1; }
    done
    echo "bench.sh: smoke OK" >&2
fi

#!/usr/bin/env bash
# Run every test: host unit/integration tests (cargo test), then the VM suite against the real
# ublk driver: the full suite on Linux 7.3 and the compatibility subset on 6.12, each in one VM
# boot. On a host whose own kernel has /dev/ublk-control the suite runs directly instead.
#
# The host part also runs tests/rbd/host.sh: the rbd target against a throwaway Ceph cluster
# (scripts/ceph.sh) through `ublkd export -t rbd`; beside the benchmark smoke run when that
# follows the VM suites, else right after cargo test.
#
# Ends with one line "N passed, N failed" summing everything; exits non-zero on any failure.
# In CI (CI=true) a VM that cannot boot or lacks ublk_drv is a failure. Only a developer's
# local run may skip the VM part, and it says so loudly.
#
# After the suites, the benchmark's CI smoke run (scripts/bench.sh --quick --smoke on one cell,
# ~2 min): it must complete and print its table; its numbers are not judged.
#
# The vhost-user-blk suite (tests/vhost/run.sh: backends on this host, one QEMU guest on the
# first kernel with five vhost-user-blk disks, about 4 min) runs beside the last kernel's VM
# suite when there are two, else after the suites.
#
# Options: --host-only (skip the VM suites), --vm-only, --kernel 7.3|6.12 (just that one),
# --no-bench (skip the benchmark smoke run), --no-vhost (skip the vhost-user-blk suite).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

host=1 vm=1 bench=1 vhost=1 kernels=(7.3 6.12)
while [[ $# -gt 0 ]]; do
    case "$1" in
    --host-only) vm=0 ;;
    --vm-only) host=0 ;;
    --kernel) kernels=("$2"); shift ;;
    --no-bench) bench=0 ;;
    --no-vhost) vhost=0 ;;
    *) echo "test-all.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

passed=0 failed=0
out=$(mktemp -d /tmp/ublkd-test-all.XXXXXX)

# Add the counts of a "N passed, N failed" line (the last one in $1).
count_plain() {
    local line p f
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -1)
    if [[ -z "$line" ]]; then
        failed=$((failed + 1))
        echo "test-all.sh: no result line in $1 (counted as one failure)"
        return
    fi
    p=${line%% passed*}
    f=${line#*, }; f=${f%% failed*}
    passed=$((passed + p)) failed=$((failed + f))
}

# The rbd target against a real single-node Ceph cluster (tests/rbd/host.sh).
rbd_host=no
run_rbd_host() {
    echo "=== host: rbd suite (tests/rbd/host.sh)"
    if cargo build --release --workspace --bins; then
        tests/rbd/host.sh >"$out/rbd-host.log" 2>&1
        cat "$out/rbd-host.log"
        count_plain "$out/rbd-host.log"
    else
        echo "test-all.sh: release build failed"
        failed=$((failed + 1))
    fi
    rbd_host=done
}

if [[ $host -eq 1 ]]; then
    echo "=== host: cargo test --workspace"
    cargo test --workspace 2>&1 | tee "$out/cargo.log"
    rc=${PIPESTATUS[0]}
    while read -r p f; do
        passed=$((passed + p)) failed=$((failed + f))
    done < <(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$out/cargo.log")
    if [[ $rc -ne 0 ]] && ! grep -q '^test result: FAILED' "$out/cargo.log"; then
        echo "test-all.sh: cargo test failed before running tests (build error?)"
        failed=$((failed + 1))
    fi
    # The rbd target against a real single-node Ceph cluster on this host's loopback, through
    # `ublkd export -t rbd` (the in-guest part is in the VM suite). When the benchmark smoke run
    # follows the VM suites, it runs beside that instead (CI must stay under an hour; the smoke
    # run checks that the table is produced, not its numbers).
    if [[ $vm -eq 1 && $bench -eq 1 ]] && { command -v vng >/dev/null 2>&1 || [[ "${CI:-}" == true ]]; } \
        && [[ ! -e /dev/ublk-control ]]; then
        rbd_host=deferred
    else
        run_rbd_host
    fi
fi

if [[ $vm -eq 1 ]]; then
    echo "=== building release binaries for the VM suite"
    if ! cargo build --release --workspace --bins; then
        echo "test-all.sh: release build failed"
        failed=$((failed + 1))
    elif [[ -e /dev/ublk-control ]]; then
        echo "=== this host has ublk_drv: running the VM suite directly on $(uname -r)"
        tests/vm/run.sh 2>&1 | tee "$out/vm-host.log"
        count_plain "$out/vm-host.log"
    elif ! command -v vng >/dev/null 2>&1 && [[ "${CI:-}" != true ]]; then
        echo "!!!!!!!! SKIPPING THE VM SUITE: no ublk driver here and virtme-ng is not installed."
        echo "!!!!!!!! Run scripts/install-deps.sh to test against the real driver."
    else
        # The vhost-user-blk suite runs beside the last kernel's suite (the 6.12 subset): each
        # of the two VMs leaves much of its CPU idle, and CI must stay under an hour.
        vhost_pid=""
        for k in "${kernels[@]}"; do
            args=()
            [[ $k == 6.12 ]] && args=(--compat)
            if [[ $k == "${kernels[-1]}" && $vhost -eq 1 && ${#kernels[@]} -gt 1 ]]; then
                echo "=== vhost-user-blk suite (QEMU guest on Linux ${kernels[0]}, backends on this host), in the background"
                start_vhost=$(date +%s)
                { tests/vhost/run.sh --kernel "${kernels[0]}" >"$out/vhost.log" 2>&1
                  echo "vhost-user-blk suite: $(($(date +%s) - start_vhost)) s" >>"$out/vhost.log"; } &
                vhost_pid=$!
            fi
            echo "=== VM suite on Linux $k ${args[*]:-}"
            scripts/vm.sh --kernel "$k" --timeout 3300 -- tests/vm/run.sh "${args[@]}" 2>&1 | tee "$out/vm-$k.log"
            count_plain "$out/vm-$k.log"
        done
        if [[ -n $vhost_pid ]]; then
            wait "$vhost_pid"
            echo "=== vhost-user-blk suite (ran beside the last VM suite)"
            cat "$out/vhost.log"
            count_plain "$out/vhost.log"
            vhost=0 # done
        fi
        if [[ $bench -eq 1 ]]; then
            rbd_pid=""
            if [[ $rbd_host == deferred ]]; then
                echo "=== host: rbd suite (tests/rbd/host.sh), in the background beside the benchmark smoke run"
                tests/rbd/host.sh >"$out/rbd-host.log" 2>&1 &
                rbd_pid=$!
            fi
            echo "=== benchmark smoke run (Linux ${kernels[0]})"
            if scripts/bench.sh --kernel "${kernels[0]}" --quick --smoke --no-qd --cells 'randread-qd64-j1' \
                --ublkd target/release/ublkd --out "$out/bench" 2>&1 | tee "$out/bench.log"; then
                passed=$((passed + 1))
            else
                echo "test-all.sh: the benchmark smoke run failed (log: $out/bench.log)"
                failed=$((failed + 1))
            fi
            if [[ -n $rbd_pid ]]; then
                wait "$rbd_pid" || true
                echo "=== host: rbd suite (ran beside the benchmark smoke run)"
                cat "$out/rbd-host.log"
                count_plain "$out/rbd-host.log"
                rbd_host=done
            fi
        fi
    fi
    if [[ $vhost -eq 1 && -x target/release/ublkd ]] && { command -v vng >/dev/null 2>&1 || [[ "${CI:-}" == true ]]; }; then
        echo "=== vhost-user-blk suite (QEMU guest on Linux ${kernels[0]}, backends on this host)"
        start_vhost=$(date +%s)
        tests/vhost/run.sh --kernel "${kernels[0]}" 2>&1 | tee "$out/vhost.log"
        count_plain "$out/vhost.log"
        echo "vhost-user-blk suite: $(($(date +%s) - start_vhost)) s"
    fi
fi

# Deferred but never started (the release build for the VM suites failed): run it now.
[[ $rbd_host == deferred ]] && run_rbd_host

echo
echo "logs: $out"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]

# Test helpers for the VM suite: counters, assertions, cleanup checks. Sourced by run.sh.
# Every check prints PASS/FAIL with its name; run.sh ends with "N passed, N failed".

PASSED=0
FAILED=0
FAILED_NAMES=()

pass() { PASSED=$((PASSED + 1)); echo "PASS: $1"; }
fail() { FAILED=$((FAILED + 1)); FAILED_NAMES+=("$1"); echo "FAIL: $1${2:+ -- $2}"; }

# check NAME CMD...: passes when CMD exits 0. Output goes to $LOG_DIR/NAME.log.
check() {
    local name=$1; shift
    local log="$LOG_DIR/$(echo "$name" | tr -c 'A-Za-z0-9._-' '_').log"
    if "$@" >"$log" 2>&1; then pass "$name"; else fail "$name" "exit $?, see $log: $(tail -3 "$log" | tr '\n' ' ')"; fi
}

# expect_error NAME "substring" CMD...: CMD must exit non-zero, print exactly one stderr line
# that contains the substring, and leave no new device, daemon or state file behind.
expect_error() {
    local name=$1 want=$2; shift 2
    local before_devs before_state err rc
    before_devs=$(ls /dev | grep -c '^ublkb' || true)
    before_state=$(ls /run/ublkd 2>/dev/null | grep -c 'json$' || true)
    err=$("$@" 2>&1 >/dev/null); rc=$?
    sleep 0.2
    local after_devs after_state
    after_devs=$(ls /dev | grep -c '^ublkb' || true)
    after_state=$(ls /run/ublkd 2>/dev/null | grep -c 'json$' || true)
    if [ "$rc" -eq 0 ]; then fail "$name" "exited 0"; return; fi
    if [[ "$err" != *"$want"* ]]; then fail "$name" "stderr '$err' lacks '$want'"; return; fi
    if [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then fail "$name" "error is not one line: $err"; return; fi
    if [ "$after_devs" -ne "$before_devs" ] || [ "$after_state" -ne "$before_state" ]; then
        fail "$name" "left something behind (devices $before_devs->$after_devs, state files $before_state->$after_state)"; return
    fi
    if pgrep -f "ublkd serve" >/dev/null && [ "$after_devs" -eq 0 ]; then fail "$name" "a daemon is still running"; return; fi
    pass "$name"
}

# No device, daemon or state file may remain.
check_clean() {
    local left
    left="$(ls /dev | grep '^ublk[bc]' || true)$(pgrep -af 'ublkd serve' || true)$(ls /run/ublkd 2>/dev/null | grep 'json$' || true)"
    if [ -z "$left" ]; then pass "$1"; else fail "$1" "left behind: $left"; fi
}

# add_dev ARGS...: create a device and print its /dev path (the test fails on error).
add_dev() { "$UBLKD" add "$@"; }

# ext4 helpers, shared by the VM suite and the rbd suites (they use $SCRATCH).
make_tree() { # DIR: a tree of files with varied sizes
    local d=$1 i
    mkdir -p "$d/a/b/c" "$d/x"
    for i in $(seq 1 40); do head -c $((i * 3797)) /dev/urandom >"$d/a/f$i"; done
    for i in $(seq 1 10); do head -c $((i * 65536 + 17)) /dev/urandom >"$d/a/b/c/g$i"; done
    head -c $((3 << 20)) /dev/urandom >"$d/x/big"
    cp -r /etc/ssl "$d/x/" 2>/dev/null || true
}

ext4_round_trip() { # DEV LABEL
    local dev=$1 label=$2 mnt=$SCRATCH/mnt-$2 src=$SCRATCH/tree-$2
    mkdir -p "$mnt"
    rm -rf "$src"; make_tree "$src"
    (cd "$src" && find . -type f -exec sha256sum {} + | sort -k2) >"$SCRATCH/sums-$label"
    mkfs.ext4 -q -F "$dev" || return 1
    mount "$dev" "$mnt" || return 1
    cp -a "$src/." "$mnt/" || { umount "$mnt"; return 1; }
    umount "$mnt" || return 1
    fsck.ext4 -fn "$dev" || return 1
    mount "$dev" "$mnt" || return 1
    (cd "$mnt" && find . -type f ! -path './lost+found/*' -exec sha256sum {} + | sort -k2) >"$SCRATCH/sums2-$label"
    umount "$mnt" || return 1
    diff "$SCRATCH/sums-$label" "$SCRATCH/sums2-$label"
}

#!/usr/bin/env bash
# Boot a Debian kernel under QEMU (TCG, via virtme-ng) and run a command in it
# as root, with ublk_drv loaded and cwd = the repo root. The guest's root fs is
# the host's, read-only; see "Guest environment" below for what is writable.
#
# Usage:
#   scripts/vm.sh [--kernel 7.3|6.12|KVER|PATH] [--mem 2G] [--cpus 2]
#                 [--timeout SECS] [--env NAME=VALUE]... [--keep] [--verbose]
#                 [--shared-mem] [--qemu-opts 'QEMU ARGS']...
#                 -- COMMAND [ARGS...]
#   scripts/vm.sh --kernel-path 7.3      # print the vmlinuz path and exit
#
# A single COMMAND word is run with `bash -c` (so `-- 'a; b'` works); several
# words are run as an argv. The exit status is COMMAND's; 125 means vm.sh
# failed (bad usage, no kernel) or the VM did not boot (3 tries), crashed (oops
# or panic: trace in the kept run dir's console.log) or timed out (default
# 3600 s, or $VM_TIMEOUT); 97 means ublk_drv could not be loaded.
#
# Guest environment (exported to COMMAND):
#   UBLKD_IN_VM=1, UBLKD_VM_KERNEL=<uname -r>
#   UBLKD_VM_OUT   per-run dir shared with the host (kept on failure/--keep)
#   TMPDIR=/tmp/ublkd-scratch, a guest-only tmpfs for backing files
#   PATH = host PATH + system dirs (cargo, pyenv... resolve as on the host)
#   Host-writable from the guest: /tmp/ublkd-vm and <repo>/target only.
#   Host variables UBLKD_*, RUST_*, CI and --env NAME=VALUE are passed in.
#
# --shared-mem backs guest RAM with a shared memfd (memory-backend-memfd,share=on, through
# vng's --numa), as vhost-user devices need; --qemu-opts adds QEMU arguments (e.g. a
# vhost-user-blk-pci device on a backend's socket).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache=/var/cache/ublkd
vmroot=/tmp/ublkd-vm

kernel=7.3
mem=2G
cpus=2
timeout_s="${VM_TIMEOUT:-3600}"
keep=0
verbose=0
print_path=0
extra_env=()
shared_mem=0
qemu_extra=()

die() {
    echo "vm.sh: $*" >&2
    exit 125
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --kernel) kernel="$2"; shift 2 ;;
    --kernel-path) kernel="$2"; print_path=1; shift 2 ;;
    --mem | --memory) mem="$2"; shift 2 ;;
    --cpus) cpus="$2"; shift 2 ;;
    --timeout) timeout_s="$2"; shift 2 ;;
    --env) extra_env+=("$2"); shift 2 ;;
    --keep) keep=1; shift ;;
    --shared-mem) shared_mem=1; shift ;;
    --qemu-opts) qemu_extra+=("--qemu-opts=$2"); shift 2 ;;
    --verbose | -v) verbose=1; shift ;;
    --) shift; break ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (commands go after --)" ;;
    esac
done

# Map 7.3 / 6.12 / a full kernel release / a file path to a vmlinuz.
resolve_kernel() {
    local k="$1" kver=""
    if [[ -f "$k" ]]; then
        echo "$k"
        return
    fi
    case "$k" in
    7.3 | 6.12) kver="$(cat "$cache/kver-$k" 2>/dev/null || true)" ;;
    *) kver="$k" ;;
    esac
    if [[ -n "$kver" && -s "/usr/lib/modules/$kver/vmlinuz" ]]; then
        echo "/usr/lib/modules/$kver/vmlinuz"
    fi
}

vmlinuz="$(resolve_kernel "$kernel")"
if [[ -z "$vmlinuz" && ( "$kernel" == 7.3 || "$kernel" == 6.12 ) ]]; then
    # Known kernels are fetched on demand (idempotent, needs root).
    echo "vm.sh: kernel $kernel not installed; running scripts/kernels.sh" >&2
    "$repo/scripts/kernels.sh" >&2
    vmlinuz="$(resolve_kernel "$kernel")"
fi
[[ -n "$vmlinuz" ]] || die "no kernel '$kernel' (try scripts/kernels.sh)"

if [[ $print_path -eq 1 ]]; then
    echo "$vmlinuz"
    exit 0
fi
[[ $# -gt 0 ]] || die "no command given (usage: vm.sh [opts] -- COMMAND...)"

# vng comes from pip; fall back to the module when the script isn't on PATH.
if command -v vng >/dev/null 2>&1; then
    vng=(vng)
elif python3 -c 'import virtme_ng' 2>/dev/null; then
    vng=(python3 -c 'import sys; from virtme_ng.run import main; sys.argv[0] = "vng"; sys.exit(main())')
else
    die "virtme-ng not installed (run scripts/install-deps.sh)"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (run scripts/install-deps.sh)"

mkdir -p "$vmroot" "$repo/target"
run="$(mktemp -d "$vmroot/run.XXXXXX")"

# ---- guest-side script --------------------------------------------------
# Written to the shared dir so the host can read back rc and logs.
{
    echo '#!/bin/bash'
    echo 'set -u'
    # Host PATH first (cargo), then system dirs; duplicates dropped. Not pyenv's: its shims are
    # shell scripts that took 43 s per `python3` start in a TCG guest (every file they touch
    # is a 9p round trip), and the guests' Python is stdlib-only, which the system's serves.
    guest_path="$(printf '%s' "$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" |
        awk -v RS=: -v ORS=: '$0 != "" && $0 !~ /\/\.pyenv\// && !seen[$0]++' | sed 's/:$//')"
    printf 'export PATH=%q\n' "$guest_path"
    printf 'export HOME=%q\n' "${HOME:-/root}"
    # Pass through the variables tests care about, quoted safely.
    while IFS= read -r name; do
        printf 'export %s=%q\n' "$name" "${!name}"
    done < <(compgen -e | grep -E '^(UBLKD_|RUST_|CI$)' || true)
    for kv in "${extra_env[@]+"${extra_env[@]}"}"; do
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
    printf 'run=%q\n' "$run"
    printf 'repo=%q\n' "$repo"
    if [[ $# -eq 1 ]]; then
        printf 'cmd=(bash -c %q)\n' "$1"
    else
        printf 'cmd=(%s)\n' "$(printf '%q ' "$@")"
    fi
    cat <<'GUEST'
export UBLKD_IN_VM=1 UBLKD_VM_KERNEL="$(uname -r)" UBLKD_VM_OUT="$run"
# The host retries a boot that dies before this line, never one after it.
: >"$run/started"

# Kernel log to the host, so an oops is visible even if the guest hangs.
dmesg --follow >"$run/dmesg.log" 2>&1 &

# The guest's /tmp is an in-RAM overlay; give tests their own tmpfs too.
mkdir -p /tmp/ublkd-scratch
mount -t tmpfs -o mode=1777 tmpfs /tmp/ublkd-scratch
export TMPDIR=/tmp/ublkd-scratch

if ! modprobe ublk_drv || [[ ! -e /dev/ublk-control ]]; then
    echo "vm.sh(guest): cannot load ublk_drv on $(uname -r)" >&2
    echo 97 >"$run/rc"
    exit 97
fi
# Best effort: reference devices (null_blk gives /dev/nullb0 with defaults;
# rmmod and reload it to change parameters).
for m in null_blk nbd loop; do
    modprobe "$m" 2>/dev/null || echo "vm.sh(guest): note: modprobe $m failed" >&2
done

cd "$repo" || exit 1
"${cmd[@]}"
rc=$?
echo "$rc" >"$run/rc"
exit "$rc"
GUEST
} >"$run/guest.sh"
chmod +x "$run/guest.sh"

vng_args=(
    --run "$vmlinuz"
    --disable-kvm          # no usable /dev/kvm here: pure TCG
    --force-9p             # no virtiofsd: share the host root over 9p
    --cpus "$cpus" --memory "$mem"
    --rwdir "$vmroot"      # shared scratch (holds this run's dir)
    --rwdir "$repo/target" # build outputs and test artifacts
    --cwd "$repo"
    --exec "$run/guest.sh"
    # vng sends the kernel console (ttyS0) to /dev/null; add a virtio console
    # logging to a file so oops/panic traces survive a crashed guest.
    --qemu-opts="-chardev file,id=ublkdcon,path=$run/console.log -device virtio-serial-pci -device virtconsole,chardev=ublkdcon"
    --append "console=hvc0"
    # A kernel oops (e.g. in ublk_drv) stops the guest at once with its trace
    # in console.log, instead of leaving a half-dead guest to hit the timeout.
    --append "oops=panic"
)
[[ $verbose -eq 1 ]] && vng_args+=(--verbose)
# One NUMA node holding all guest RAM: vng backs it with memory-backend-memfd,share=on.
[[ $shared_mem -eq 1 ]] && vng_args+=(--numa "$mem")
vng_args+=("${qemu_extra[@]+"${qemu_extra[@]}"}")

start=$(date +%s)
# Under TCG the guest kernel very rarely dies while booting, before any of our
# code runs (seen: an int3 oops from text patching racing a timer interrupt in
# kernel_init). That says nothing about ublkd, so such a boot is retried; a
# guest that reached guest.sh is never retried, whatever happened to it.
boots=3
for ((boot = 1; ; boot++)); do
    rm -f "$run/started" "$run/rc"
    set +e
    # stdin from /dev/null and stdout/stderr through pipes: QEMU reopens
    # /proc/self/fd/{0,1,2}, which truncates a regular-file stdout (eating
    # earlier output) and breaks when a descriptor is closed. timeout(1)
    # signals the whole process group, so a hung guest takes its qemu down.
    timeout -k 15 "$timeout_s" "${vng[@]}" "${vng_args[@]}" \
        </dev/null > >(cat) 2> >(cat >&2)
    vng_rc=$?
    wait # let the output relays drain
    set -e
    rc="$(cat "$run/rc" 2>/dev/null || true)"
    [[ -n "$rc" || -e "$run/started" || $boot -ge $boots ]] && break
    [[ $vng_rc -eq 124 || $vng_rc -eq 137 ]] && break
    echo "vm.sh: the guest kernel died while booting (vng exit $vng_rc, boot $boot of $boots);" \
        "its console: $run/console.boot$boot.log; booting again" >&2
    mv "$run/console.log" "$run/console.boot$boot.log" 2>/dev/null || true
done

if [[ -z "$rc" ]]; then
    if [[ $vng_rc -eq 124 || $vng_rc -eq 137 ]]; then
        echo "vm.sh: guest timed out after ${timeout_s}s (kernel $kernel)" >&2
    elif [[ -e "$run/started" ]]; then
        echo "vm.sh: VM crashed (kernel $kernel, vng exit $vng_rc)" >&2
    else
        echo "vm.sh: VM failed to boot $boot times (kernel $kernel, vng exit $vng_rc)" >&2
    fi
    # The console log has panic traces; dmesg.log has everything before them.
    for log in "$run/console.log" "$run/dmesg.log"; do
        if [[ -s "$log" ]]; then
            echo "vm.sh: last lines of $log:" >&2
            tail -n 40 "$log" >&2
            break
        fi
    done
    echo "vm.sh: run dir kept: $run" >&2
    exit 125
fi

# Kernel warnings don't fail the run, but must not go unnoticed.
warnings="$(grep -E 'WARNING: |BUG: |INFO: task .* blocked' "$run/dmesg.log" 2>/dev/null || true)"
if [[ -n "$warnings" ]]; then
    echo "vm.sh: the guest kernel logged warnings (see $run/dmesg.log):" >&2
    head -n 20 <<<"$warnings" >&2
    keep=1
fi

if [[ $rc -ne 0 || $keep -eq 1 ]]; then
    echo "vm.sh: exit $rc after $(($(date +%s) - start))s; run dir kept: $run" >&2
else
    rm -rf "$run"
fi
exit "$rc"

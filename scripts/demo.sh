#!/usr/bin/env bash
# The main job, end to end on a fresh Debian/Ubuntu machine (as root): install what is needed,
# build ublkd, then serve a real block device from a file with ublkd, put ext4 on it, mount it,
# write files, unmount, check the file system, mount again and read everything back.
# When this kernel has no ublk driver, the demo runs inside a VM (Linux 7.3 under QEMU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${1:-}" != --inside ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "demo.sh: run as root (it installs packages and creates devices)" >&2; exit 1; }
    bash scripts/install-deps.sh
    [[ -f "$HOME/.cargo/env" ]] && source "$HOME/.cargo/env"
    cargo build --release -p ublkd
    modprobe ublk_drv 2>/dev/null || true
    if [[ -e /dev/ublk-control ]]; then
        exec "$0" --inside
    fi
    echo "demo.sh: this kernel has no ublk driver; booting Linux 7.3 in a VM for the demo"
    exec scripts/vm.sh --kernel 7.3 -- scripts/demo.sh --inside
fi

ublkd=$PWD/target/release/ublkd
work=$(mktemp -d "${TMPDIR:-/tmp}/ublkd-demo.XXXXXX")
img=$work/disk.img mnt=$work/mnt
mkdir -p "$mnt"
cleanup() {
    umount "$mnt" 2>/dev/null || true
    [[ -n "${dev:-}" ]] && "$ublkd" del -n "${dev#/dev/ublkb}" 2>/dev/null || true
}
trap cleanup EXIT

truncate -s 512M "$img"
dev=$("$ublkd" add -t file --path "$img")
echo "== served $img as $dev"
"$ublkd" list
mkfs.ext4 -q -F "$dev"
mount "$dev" "$mnt"
mkdir -p "$mnt/data"
for i in $(seq 1 50); do head -c $((i * 20000)) /dev/urandom >"$mnt/data/file$i"; done
(cd "$mnt" && find data -type f -exec sha256sum {} + | sort -k2) >"$work/before"
umount "$mnt"
fsck.ext4 -fn "$dev"
mount "$dev" "$mnt"
(cd "$mnt" && find data -type f -exec sha256sum {} + | sort -k2) >"$work/after"
umount "$mnt"
"$ublkd" del -n "${dev#/dev/ublkb}"
dev=
if diff -q "$work/before" "$work/after"; then
    echo "== OK: 50 files written through $img, checked by fsck, read back with equal checksums"
else
    echo "== FAILED: checksums differ"
    exit 1
fi

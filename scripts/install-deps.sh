#!/usr/bin/env bash
# Install everything the VM test harness needs on a Debian bookworm host (as root).
# Idempotent: re-running only re-checks what is already there.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps.sh: must run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

apt-get update -q

# qemu-system-x86 from bookworm Breaks the newer qemu-utils some images ship
# (from bookworm-backports), so pin both to the same candidate version in one
# transaction; apt then downgrades qemu-utils instead of refusing or removing it.
qemu_ver="$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')"
if [[ -z "$qemu_ver" || "$qemu_ver" == "(none)" ]]; then
    echo "install-deps.sh: no qemu-system-x86 candidate in apt sources" >&2
    exit 1
fi

# busybox-static: vng builds its guest initramfs from it.
# kmod: modprobe/depmod, used on the host (depmod) and inside the guest.
# udev: gives the guest udevd so /dev/disk/* links and uevents behave normally, and the udevd that
# tests/vm/unpriv.sh runs with contrib/udev rules (setpriv, from util-linux, runs its users).
# systemd: PID 1 of tests/vm/systemd.sh's namespace, with systemctl and journalctl.
# fio/nbdkit/libnbd-bin/nbd-client/e2fsprogs/util-linux: test workloads; fdisk: sfdisk, which
# puts a partition table on a named device (tests/vm/names.sh).
# qemu-system-common: qemu-storage-daemon (scripts/bench-vhost.sh compares against it).
# ceph-mon/ceph-osd/ceph-common: scripts/ceph.sh's throwaway cluster for the rbd target's tests
# (host and guest); librbd-dev/librados-dev: the rbd target loads librbd at run time, and a
# test checks our declarations against their headers; rbd-nbd and qemu-block-extra (QEMU's
# rbd driver, for qemu-nbd): benchmark baselines (scripts/bench-rbd.sh).
# prometheus: promtool and a real server for the statistics tests (tests/vm/stats.sh).
# jq: bench/guest.sh reads fio's JSON. python3: the system one, for the guests' scripts
# (scripts/vm.sh keeps pyenv's shims out of the guest PATH). fonts-dejavu-core: the TTF crates/bench-plot renders
# text with (plotters' ab_glyph; no fontconfig/freetype needed).
apt-get install -y -q --allow-downgrades --no-install-recommends \
    "qemu-system-x86=$qemu_ver" "qemu-utils=$qemu_ver" "qemu-system-common=$qemu_ver" \
    "qemu-block-extra=$qemu_ver" \
    busybox-static kmod udev systemd \
    fio nbdkit libnbd-bin nbd-client e2fsprogs util-linux fdisk \
    xz-utils jq fonts-dejavu-core prometheus curl python3 \
    ceph-mon ceph-osd ceph-common librbd-dev librados-dev rbd-nbd

# The downgrade must leave a working qemu-img behind.
qemu-img --version >/dev/null
qemu-system-x86_64 --version >/dev/null
# The vhost-user-blk benchmark's reference backend (qemu-system-common).
qemu-storage-daemon --version >/dev/null

# virtme-ng (vng) boots a kernel with the host's root fs as the guest's root.
if ! python3 -c 'import virtme_ng' 2>/dev/null; then
    # A bare Debian python3 has no pip module.
    python3 -m pip --version >/dev/null 2>&1 ||
        apt-get install -y -q --no-install-recommends python3-pip
    # Debian's own python3 refuses system-wide pip installs (PEP 668).
    python3 -m pip install -q virtme-ng ||
        python3 -m pip install -q --break-system-packages virtme-ng
fi
# pyenv only exposes new console scripts after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi

"$here/kernels.sh"

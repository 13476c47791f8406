#!/bin/sh
# Install ublkd: the binary, shell completions, man pages, the udev rule for
# /dev/disk/by-id/ublk-NAME and the systemd unit ublkd@.service.
#
# Usage: scripts/install.sh [--prefix /usr/local] [--destdir DIR] [--no-build] [--bin PATH]
#   --prefix   where the binary (PREFIX/bin), man pages (PREFIX/share/man) and completions
#              (PREFIX/share/...) go; default /usr/local
#   --destdir  stage everything under DIR (packaging; nothing runs from there)
#   --no-build use target/release/ublkd as it is instead of running cargo build --release
#   --bin PATH install this ublkd binary (implies --no-build)
# udev rules go to DESTDIR/etc/udev/rules.d, units to DESTDIR/etc/systemd/system, both
# naming the installed binary's path. Run as root for a real install; afterwards
# `udevadm control --reload` and `systemctl daemon-reload` pick up the new files.
set -eu

prefix=/usr/local
destdir=
build=1
bin=
while [ $# -gt 0 ]; do
    case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --bin) bin=$2; build=0; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

repo=$(cd "$(dirname "$0")/.." && pwd)
bin=${bin:-$repo/target/release/ublkd}
if [ "$build" = 1 ]; then
    (cd "$repo" && cargo build --release -p ublkd)
fi
[ -x "$bin" ] || { echo "install.sh: no $bin (build it, or drop --no-build)" >&2; exit 1; }

root="$destdir"
exe="$prefix/bin/ublkd"
install -D -m 0755 "$bin" "$root$exe"

# Completions where each shell looks for them by default.
mkdir -p "$root$prefix/share/bash-completion/completions" \
    "$root$prefix/share/zsh/site-functions" \
    "$root$prefix/share/fish/vendor_completions.d"
"$bin" completions bash >"$root$prefix/share/bash-completion/completions/ublkd"
"$bin" completions zsh >"$root$prefix/share/zsh/site-functions/_ublkd"
"$bin" completions fish >"$root$prefix/share/fish/vendor_completions.d/ublkd.fish"

"$bin" man "$root$prefix/share/man/man1" >/dev/null

# The udev rule and the unit run the binary by absolute path: the installed one.
install -d "$root/etc/udev/rules.d" "$root/etc/systemd/system" "$root/etc/ublkd"
sed "s#/usr/local/bin/ublkd#$exe#g" "$repo/contrib/udev/60-ublkd.rules" \
    >"$root/etc/udev/rules.d/60-ublkd.rules"
sed "s#/usr/local/bin/ublkd#$exe#g" "$repo/contrib/systemd/ublkd@.service" \
    >"$root/etc/systemd/system/ublkd@.service"

echo "installed $exe ($("$bin" --version)), completions, man pages, udev rule, ublkd@.service under ${root:-/}"

#!/usr/bin/env bash
# Provide the guest kernels for scripts/vm.sh, without touching apt's config:
#   - Linux 7.3 from Debian trixie-backports (fetched through a private,
#     throw-away apt sources list) plus its UAPI headers (linux-libc-dev);
#   - Linux 6.12 from the host's own bookworm(-security) sources.
# Kernels land in /usr/lib/modules/<kver>/{vmlinuz,kernel/...} because the
# guest shares the host's root fs and modprobe looks there. Debs are kept in
# /var/cache/ublkd/debs. A second run is a no-op (stamp files).
#
# Usage: scripts/kernels.sh [--refresh]   (--refresh re-resolves versions)
set -euo pipefail

cache=/var/cache/ublkd
debs="$cache/debs"
uapi="$cache/uapi-7.3"
refresh=0
[[ "${1:-}" == "--refresh" ]] && refresh=1

if [[ $(id -u) -ne 0 ]]; then
    echo "kernels.sh: must run as root" >&2
    exit 1
fi
mkdir -p "$debs"
# Leftovers of an interrupted run.
rm -rf "$cache"/stage.*

# A kernel is ready when its image, modules and depmod output all exist.
kernel_ready() {
    local kver="$1"
    [[ -n "$kver" && -s "/usr/lib/modules/$kver/vmlinuz" &&
        -s "/usr/lib/modules/$kver/modules.dep" &&
        -d "/usr/lib/modules/$kver/kernel/drivers/block" ]]
}

stamp_ok() {
    local kver
    kver="$(cat "$cache/kver-$1" 2>/dev/null || true)"
    kernel_ready "$kver"
}

# Unpack kernel debs into a staging dir, then copy only the kernel image and
# modules into /usr/lib/modules/<kver>. Never `dpkg -x` straight into /:
# bookworm-era debs ship ./lib/modules, and unpacking those would replace the
# merged-/usr /lib symlink with a real directory and break the host.
install_kernel() {
    local kver="$1"
    shift
    local stage
    stage="$(mktemp -d "$cache/stage.XXXXXX")"
    local deb
    for deb in "$@"; do dpkg-deb -x "$deb" "$stage"; done

    local dest="/usr/lib/modules/$kver"
    mkdir -p "$dest"
    local d
    # No-clobber: files are per-kver, and a running guest may be reading them.
    for d in "$stage/lib/modules/$kver" "$stage/usr/lib/modules/$kver"; do
        if [[ -d "$d" ]]; then cp -an "$d/." "$dest/"; fi
    done
    if [[ -f "$stage/boot/vmlinuz-$kver" ]]; then
        cp -n "$stage/boot/vmlinuz-$kver" "$dest/vmlinuz"
    fi
    rm -rf "$stage"

    if [[ ! -s "$dest/vmlinuz" ]]; then
        echo "kernels.sh: no vmlinuz for $kver in $*" >&2
        exit 1
    fi
    depmod -a "$kver"
}

# ---- Linux 7.3 from trixie-backports --------------------------------------

# The plain Debian mirror (not -security) the host already uses.
debian_mirror() {
    local f uri=""
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        # deb822 stanzas are separated by blank lines.
        uri="$(awk -v RS= '
            /(^|\n)Types:[^\n]*deb/ && !/(^|\n)Suites:[^\n]*-security/ {
                if (match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) {
                    s = substr($0, RSTART, RLENGTH); sub(/^\n?URIs:[ \t]*/, "", s)
                    if (s !~ /security/) { print s; exit }
                }
            }' "$f")"
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ {
            for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
            /etc/apt/sources.list)"
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

fetch_73() {
    if [[ $refresh -eq 0 ]] && stamp_ok 7.3 &&
        [[ -f "$uapi/usr/include/linux/ublk_cmd.h" ]]; then
        return
    fi

    local tmp
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" RETURN
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"

    # bookworm's debian-archive-keyring already carries the trixie archive
    # keys, so the suite is verified normally (no [trusted=yes]).
    local mirror
    mirror="$(debian_mirror)"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie-backports main" \
        >"$tmp/sources.list"

    # Point apt at the private list/state only; the system's stay untouched.
    local -a o=(
        -o "Dir::Etc::SourceList=$tmp/sources.list"
        -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$tmp/lists"
        -o "Dir::Cache=$tmp/cache"
        -o APT::Get::List-Cleanup=0
        -o APT::Sandbox::User=root
    )
    apt-get "${o[@]}" -q update

    # Newest 7.3.x generic amd64 image; Debian splits it into linux-binary
    # (vmlinuz), linux-modules and linux-base (modules.builtin, config).
    local bin kver
    bin="$(apt-cache "${o[@]}" pkgnames linux-binary-7.3. |
        grep -E '^linux-binary-7\.3\.[0-9]+\+deb[0-9]+-amd64$' | sort -V | tail -n1 || true)"
    if [[ -z "$bin" ]]; then
        echo "kernels.sh: no linux-binary-7.3.*-amd64 in trixie-backports" >&2
        exit 1
    fi
    kver="${bin#linux-binary-}"
    local ver
    ver="$(apt-cache "${o[@]}" show "$bin" | awk '/^Version:/ {print $2; exit}')"

    # Fetch only what the deb cache lacks (file names use %3a for ':').
    local v="${ver//:/%3a}" want=() p f
    for p in "$bin" "linux-modules-$kver" "linux-base-$kver" linux-libc-dev; do
        f="$debs/${p}_${v}_amd64.deb"
        [[ $p == linux-libc-dev ]] && f="$debs/${p}_${v}_all.deb"
        [[ -s "$f" ]] || want+=("$p=$ver")
    done
    if [[ ${#want[@]} -gt 0 ]]; then
        (cd "$debs" && apt-get "${o[@]}" -q download "${want[@]}")
    fi

    install_kernel "$kver" \
        "$debs/${bin}_${v}_amd64.deb" \
        "$debs/linux-modules-${kver}_${v}_amd64.deb" \
        "$debs/linux-base-${kver}_${v}_amd64.deb"

    # UAPI headers go to a private prefix, never over /usr/include; swap the
    # directory in whole so a concurrent build never sees it half-written.
    rm -rf "$uapi.new" "$uapi.old"
    mkdir -p "$uapi.new"
    dpkg-deb -x "$debs/linux-libc-dev_${v}_all.deb" "$uapi.new"
    if [[ -d "$uapi" ]]; then mv "$uapi" "$uapi.old"; fi
    mv "$uapi.new" "$uapi"
    rm -rf "$uapi.old"
    echo "$ver" >"$cache/uapi-7.3.version"

    echo "$kver" >"$cache/kver-7.3"
}

# ---- Linux 6.12 from bookworm(-security) ----------------------------------

fetch_612() {
    if [[ $refresh -eq 0 ]] && stamp_ok 6.12; then
        return
    fi
    # Resolve the versioned image behind the meta package from the host lists;
    # refresh them once if they are missing or stale.
    local img
    img="$(apt-cache depends linux-image-6.12-amd64 2>/dev/null |
        awk '/Depends: linux-image-6\.12\./ {print $2; exit}')"
    if [[ -z "$img" ]] || ! apt-cache show "$img" >/dev/null 2>&1; then
        apt-get -q update
        img="$(apt-cache depends linux-image-6.12-amd64 |
            awk '/Depends: linux-image-6\.12\./ {print $2; exit}')"
    fi
    if [[ -z "$img" ]]; then
        echo "kernels.sh: linux-image-6.12-amd64 not found in apt sources" >&2
        exit 1
    fi
    local kver="${img#linux-image-}"
    local ver
    ver="$(apt-cache show "$img" | awk '/^Version:/ {print $2; exit}')"
    local deb="$debs/${img}_${ver//:/%3a}_amd64.deb"
    if [[ ! -s "$deb" ]]; then
        (cd "$debs" && apt-get -o APT::Sandbox::User=root -q download "$img=$ver")
    fi
    install_kernel "$kver" "$deb"
    echo "$kver" >"$cache/kver-6.12"
}

fetch_73
fetch_612

for k in 7.3 6.12; do
    kver="$(cat "$cache/kver-$k")"
    echo "$k: $kver /usr/lib/modules/$kver/vmlinuz"
done
echo "uapi-7.3: $uapi/usr/include (linux-libc-dev $(cat "$cache/uapi-7.3.version"))"

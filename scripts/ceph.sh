#!/usr/bin/env bash
# A throwaway single-node Ceph cluster for tests and benchmarks, from Debian's packages
# (ceph-mon, ceph-osd, ceph-common). Everything it creates lives in DIR; nothing is installed,
# registered with systemd or written elsewhere, and `stop` removes DIR whole.
#
#   scripts/ceph.sh start DIR [--auth cephx|none] [--osd-mem SIZE] [--pool NAME]
#   scripts/ceph.sh stop DIR
#   scripts/ceph.sh status DIR
#
# The cluster: one monitor and one OSD on memstore (data in RAM, --osd-mem, default 1G), no
# manager (block I/O does not need one), bound to 127.0.0.1 on a free port, pool size 1, and
# one pool (default "rbd") initialised for RBD. `start` returns once an image round-trips
# through `rbd import` / `rbd export` (~10 s on a host, ~100 s under QEMU TCG).
#
# What clients use: DIR/ceph.conf (it names the monitor and, with cephx, DIR/keyring, which
# holds client.admin's key):
#   rbd -c DIR/ceph.conf create --size 1G rbd/disk
#   ublkd add -t rbd --conf DIR/ceph.conf --image rbd/disk
# With --auth none (no keys at all) every client is trusted. The default is cephx, so a wrong
# key is refused as on a real cluster.
#
# The OSD's watch timeout is 15 s instead of 30 s: a client that dies holding an image's
# exclusive lock (kill -9 of a daemon) is noticed sooner, so recovery tests wait less for
# librbd to break the dead client's lock. (5 s was too short under TCG: live clients' watches
# lapsed and were re-established over and over.)
set -euo pipefail

die() { echo "ceph.sh: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

[[ $# -ge 2 ]] || usage 2
cmd=$1 dir=$2
shift 2
auth=cephx osd_mem=1G pool=rbd
while [[ $# -gt 0 ]]; do
    case "$1" in
    --auth) auth=$2; shift 2 ;;
    --osd-mem) osd_mem=$2; shift 2 ;;
    --pool) pool=$2; shift 2 ;;
    -h | --help) usage ;;
    *) die "unknown option '$1'" ;;
    esac
done
[[ $auth == cephx || $auth == none ]] || die "--auth takes cephx or none"

bytes() { # SIZE with K/M/G suffix -> bytes
    numfmt --from=iec "${1^^}" 2>/dev/null || die "bad size '$1'"
}

free_port() { # a TCP port on 127.0.0.1 that no socket uses, below the ephemeral range
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 12000))
        if [[ -z $(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null) ]]; then
            echo "$p"
            return
        fi
    done
    die "no free port found"
}

pids_of() { # the daemons' pids, from their pid files
    cat "$dir"/run/*.pid 2>/dev/null || true
}

stop() {
    [[ -d $dir ]] || return 0
    [[ -e $dir/ceph.conf ]] || die "$dir holds no cluster (no ceph.conf): not removing it"
    local p alive
    for p in $(pids_of); do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 100); do
        alive=0
        for p in $(pids_of); do kill -0 "$p" 2>/dev/null && alive=1; done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for p in $(pids_of); do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}

start() {
    [[ -e $dir/ceph.conf ]] && die "$dir already holds a cluster (scripts/ceph.sh stop $dir first)"
    command -v ceph-mon >/dev/null && command -v ceph-osd >/dev/null && command -v rbd >/dev/null ||
        die "ceph-mon, ceph-osd and rbd are needed (apt-get install ceph-mon ceph-osd ceph-common)"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local conf=$dir/ceph.conf fsid port t0 osd_uuid
    t0=$(date +%s)
    # A failed start leaves nothing running and nothing behind.
    trap 'echo "ceph.sh: start failed; logs were in $dir/log:" >&2; tail -n 20 "$dir"/log/*.log >&2 2>/dev/null; stop' ERR
    mkdir -p "$dir"/{run,log,mon.a,osd.0,crash}
    fsid=$(cat /proc/sys/kernel/random/uuid)
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    port=$(free_port)
    local authline keyline=""
    if [[ $auth == cephx ]]; then
        authline=cephx
        keyline="keyring = $dir/keyring"
    else
        authline=none
    fi
    cat >"$conf" <<EOF
# Written by scripts/ceph.sh: a throwaway single-node cluster on 127.0.0.1.
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = $authline
auth service required = $authline
auth client required = $authline
$keyline
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$cluster-\$name.\$pid.asok
log file = $dir/log/\$name.log
crash dir = $dir/crash
mon cluster log file = $dir/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd client watch timeout = 15

[mon]
mon data = $dir/mon.\$id

[osd]
osd data = $dir/osd.\$id
osd objectstore = memstore
memstore device bytes = $(bytes "$osd_mem")
osd memory target = 939524096
osd max object name len = 460
osd max object namespace len = 64
EOF
    if [[ $auth == cephx ]]; then
        ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
        ceph-authtool "$dir/keyring" --gen-key -n client.admin \
            --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
        ceph-authtool "$dir/keyring" --gen-key -n osd.0 \
            --cap mon 'allow profile osd' --cap osd 'allow *' >/dev/null
    fi
    monmaptool --create --clobber --fsid "$fsid" --addv a "[v1:127.0.0.1:$port]" "$dir/monmap" >/dev/null
    local kr=()
    [[ $auth == cephx ]] && kr=(--keyring "$dir/keyring")
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" "${kr[@]}" >/dev/null
    ceph-mon -c "$conf" -i a 2>>"$dir/log/start.log"
    # The OSD: registered with the monitor, its store made, started.
    local id
    id=$(ceph -c "$conf" --connect-timeout 60 osd new "$osd_uuid")
    [[ $id == 0 ]] || die "the monitor gave the OSD id '$id', expected 0"
    ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>&1
    ceph-osd -c "$conf" -i 0 2>>"$dir/log/start.log"
    # The pool, once the OSD is up.
    local up=0
    for _ in $(seq 1 600); do
        if ceph -c "$conf" osd stat 2>/dev/null | grep -q '1 up.*1 in'; then up=1; break; fi
        sleep 0.5
    done
    [[ $up -eq 1 ]] || false
    ceph -c "$conf" osd pool create "$pool" 8 8 >/dev/null 2>&1
    ceph -c "$conf" osd pool set "$pool" size 1 --yes-i-really-mean-it >/dev/null 2>&1
    rbd -c "$conf" pool init "$pool"
    # Ready when an image round-trips.
    local probe=$dir/probe.bin
    head -c 1M /dev/urandom >"$probe"
    rbd -c "$conf" import --no-progress "$probe" "$pool/ceph-sh-probe"
    rbd -c "$conf" export --no-progress "$pool/ceph-sh-probe" "$probe.back"
    cmp -s "$probe" "$probe.back" || false
    rbd -c "$conf" rm --no-progress "$pool/ceph-sh-probe"
    rm -f "$probe" "$probe.back"
    trap - ERR
    echo "ceph.sh: cluster up in $(($(date +%s) - t0)) s: mon 127.0.0.1:$port, auth $auth, pool $pool; clients: -c $conf"
}

case "$cmd" in
start) start ;;
stop) stop ;;
status) ceph -c "$dir/ceph.conf" --connect-timeout 10 -s ;;
*) usage 2 ;;
esac

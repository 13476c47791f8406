# contrib/systemd/ublkd@.service under a real systemd, sourced by run.sh. The guest's init is
# virtme-ng's, so systemd runs as PID 1 of its own PID and mount namespace, chrooted into an
# overlay of the guest's root (the host's, read-only) where scripts/install.sh installed ublkd,
# the udev rule and the unit, with a device declared in /etc/ublkd, the unit enabled and the
# documented fstab line. systemd boots to a target that needs only local-fs.target (the host's
# enabled services are not ours to start), starts its own systemd-udevd, and must: bring the
# device up during boot before the mount that needs it, restart a killed daemon with `recover`
# under the mounted file system (with x-systemd.requires it unmounted first and hung: see
# docs/design.md), unmount then delete on `systemctl stop` of both, bring both back, and at
# poweroff unmount and delete the device. It takes itself for a container (it finds the host's
# /.dockerenv); the unit and fstab logic it runs are the same as on a boot.

SD_ID=61

sd() { nsenter -t "$SD_PID" -m -p -r -w "$@"; } # run in systemd's namespaces and root

sd_wait() { # SECS CMD...: retry CMD every second until it succeeds
    local n=$1 i; shift
    for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    "$@"
}

sd_booted() { case "$(sd systemctl is-system-running 2>/dev/null)" in running | degraded) return 0 ;; esac; return 1; }

sd_main_pid() { sd systemctl show -P MainPID ublkd@disk1.service; }

sd_source_is_ours() { [ "$(sd findmnt -n -o SOURCE /data)" = "/dev/ublkb$SD_ID" ]; }

sd_mount_after_unit() { sd systemctl show -P After data.mount | grep -qw 'ublkd@disk1.service'; }

sd_restarted() { # OLD-PID: the unit is active again, under a new main process
    local pid
    pid=$(sd_main_pid)
    [ "$pid" -gt 0 ] && [ "$pid" != "$1" ] && sd systemctl is-active -q ublkd@disk1.service
}

sd_restarts_with_recover() {
    local old new
    old=$(sd_main_pid)
    [ "$old" -gt 0 ] || { echo "no MainPID"; return 1; }
    sd kill -9 "$old"
    sd_wait 60 sd_restarted "$old" || return 1
    new=$(sd_main_pid)
    echo "daemon $old killed, $new serves"
    sd journalctl -b -u ublkd@disk1.service --no-pager | tail -20
    sd journalctl -b -u ublkd@disk1.service --no-pager | grep -q "recovered device $SD_ID " || { echo "the restart did not recover"; return 1; }
    sd_source_is_ours || { echo "the mount moved"; return 1; }
    sd sh -c 'head -c 8M /dev/urandom >/data/after-restart && sync && sha256sum /data/after-restart >>/srv/sums' || return 1
    sd sh -c 'cd / && sha256sum -c /srv/sums'
}

sd_stop_unmounts_and_deletes() {
    sd systemctl stop data.mount ublkd@disk1.service || return 1
    sd systemctl is-active -q data.mount && { echo "data.mount still active"; return 1; }
    sd findmnt /data && { echo "/data still mounted"; return 1; }
    [ -e "/dev/ublkb$SD_ID" ] && { echo "/dev/ublkb$SD_ID still there"; return 1; }
    "$UBLKD" list -n "$SD_ID" 2>/dev/null | grep -q "^$SD_ID " && { echo "device still listed"; return 1; }
    return 0
}

sd_both_come_back() {
    sd systemctl start ublkd@disk1.service data.mount || return 1
    sd_source_is_ours || return 1
    sd sh -c 'cd / && sha256sum -c /srv/sums'
}

test_systemd_boot() {
    local s=${TMPDIR:-/tmp}/ublkd-systemd upid i # the overlay's upper dir needs a local file system (tmpfs)
    SD_ROOT=$s/root
    mkdir -p "$s/upper" "$s/work" "$SD_ROOT"
    if ! mount -t overlay overlay -o "lowerdir=/,upperdir=$s/upper,workdir=$s/work" "$SD_ROOT"; then
        fail "systemd: overlay of the root for systemd"
        return
    fi
    bash "$ROOT/scripts/install.sh" --destdir "$SD_ROOT" --no-build --bin "$UBLKD" >"$LOG_DIR/systemd-install.log" 2>&1 \
        || { fail "systemd: install.sh into the overlay" "$(tail -2 "$LOG_DIR/systemd-install.log")"; umount "$SD_ROOT"; return; }
    mkdir -p "$SD_ROOT/srv" "$SD_ROOT/data"
    rm -f "$SD_ROOT/srv/disk1.img"
    truncate -s 64M "$SD_ROOT/srv/disk1.img"
    mkfs.ext4 -q -F "$SD_ROOT/srv/disk1.img"
    : >"$SD_ROOT/srv/sums"
    # The declared device and the documented fstab line, as a user would write them.
    echo "UBLKD_ARGS=\"-t file --path /srv/disk1.img -n $SD_ID -q 2\"" >"$SD_ROOT/etc/ublkd/disk1.conf"
    echo '/dev/disk/by-id/ublk-disk1 /data ext4 defaults,x-systemd.after=ublkd@disk1.service 0 2' >"$SD_ROOT/etc/fstab"
    rm -rf "$SD_ROOT"/etc/systemd/system/*.wants
    systemctl --root="$SD_ROOT" enable ublkd@disk1.service >"$LOG_DIR/systemd-enable.log" 2>&1 \
        || { fail "systemd: systemctl enable ublkd@disk1" "$(tail -2 "$LOG_DIR/systemd-enable.log")"; umount "$SD_ROOT"; return; }
    cat >"$SD_ROOT/etc/systemd/system/ublkd-boot-test.target" <<'EOF'
[Unit]
Description=ublkd boot test: the local file systems, one of them on a ublk device
Requires=local-fs.target
Wants=systemd-journald.service systemd-udevd.service systemd-udev-trigger.service
After=local-fs.target
EOF
    unshare --pid --fork --mount --propagation private -- \
        chroot "$SD_ROOT" /lib/systemd/systemd --unit=ublkd-boot-test.target --show-status=no \
        >"$LOG_DIR/systemd-pid1.log" 2>&1 &
    upid=$!
    SD_PID=
    for ((i = 0; i < 20; i++)); do
        sleep 0.5
        SD_PID=$(pgrep -P "$upid") && break
    done
    if [ -z "$SD_PID" ]; then
        fail "systemd: start systemd as PID 1 of a namespace"
        umount "$SD_ROOT"
        return
    fi
    check "systemd: boots to local-fs.target with the ublk device mounted by its fstab line" sd_wait 180 sd_booted
    sd systemctl --no-pager --failed >"$LOG_DIR/systemd-failed.log" 2>&1
    check "systemd: ublkd@disk1 is active (Type=notify: ready once the device is live)" sd systemctl is-active -q ublkd@disk1.service
    check "systemd: /data is mounted from /dev/disk/by-id/ublk-disk1 = /dev/ublkb$SD_ID" sd_source_is_ours
    check "systemd: x-systemd.after ordered the mount after the unit" sd_mount_after_unit
    check "systemd: data written to the mounted device" \
        sd sh -c 'head -c 8M /dev/urandom >/data/at-boot && sync && sha256sum /data/at-boot >>/srv/sums'
    check "systemd: a killed daemon is restarted with recover, the mount stays, data intact" sd_restarts_with_recover
    check "systemd: systemctl stop unmounts /data, then deletes the device" sd_stop_unmounts_and_deletes
    check "systemd: starting both brings the device and the mount back, data intact" sd_both_come_back
    sd journalctl -b --no-pager -o short-monotonic >"$LOG_DIR/systemd-journal.log" 2>&1
    sd systemctl poweroff >/dev/null 2>&1
    for ((i = 0; i < 120; i++)); do
        [ -e "/proc/$upid" ] || break
        sleep 0.5
    done
    check "systemd: poweroff unmounts, stops the unit and deletes the device" bash -c "! [ -e /proc/$upid ] && ! [ -e /dev/ublkb$SD_ID ]"
    # Unmounted before the disk went away: the file system was left clean.
    check "systemd: after poweroff the file system on the backing file is clean" \
        bash -c "dumpe2fs -h '$SD_ROOT/srv/disk1.img' 2>/dev/null | grep -q '^Filesystem state: *clean$'"
    # Whatever failed above: nothing of this test survives it.
    [ -e "/proc/$upid" ] && { kill -9 "$SD_PID" 2>/dev/null; sleep 1; }
    "$UBLKD" del -n "$SD_ID" >/dev/null 2>&1
    umount -l "$SD_ROOT"
    rm -rf "$s"
}

# Names, serials and online resize, sourced by run.sh: `add --name` and the serial in list and
# in /dev/disk/by-id through a real systemd-udevd running contrib/udev/60-ublkd.rules (with
# partitions), both kept across recover; `ublkd resize` growing a mounted ext4 online (7.3), and
# its one-line refusal where the kernel lacks UPDATE_SIZE (6.12).

json_field() { # ID FIELD: a field of the device in `list --json`
    "$UBLKD" list -n "$1" --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['$2'])"
}

# Start systemd-udevd with our rule (its helper pointed at the binary under test) unless one
# runs; sets UDEVD_PID when we started it, so udev_stop ends only ours.
udev_start() {
    UDEVD_PID=
    mkdir -p /run/udev/rules.d
    sed "s#/usr/local/bin/ublkd#$UBLKD#g" "$ROOT/contrib/udev/60-ublkd.rules" >/run/udev/rules.d/60-ublkd.rules
    if ! pgrep -x systemd-udevd >/dev/null; then
        /lib/systemd/systemd-udevd --daemon || return 1
        UDEVD_PID=$(pgrep -x systemd-udevd | head -1)
    fi
    udevadm control --reload
    udevadm trigger --subsystem-match=block
    udevadm settle -t 30
}

udev_stop() {
    rm -f /run/udev/rules.d/60-ublkd.rules
    if [ -n "${UDEVD_PID:-}" ]; then
        udevadm control --exit 2>/dev/null || kill "$UDEVD_PID"
        UDEVD_PID=
    else
        udevadm control --reload
    fi
}

link_is() { # LINK TARGET: /dev/disk/by-id/LINK resolves to /dev/TARGET
    local got
    got=$(readlink -f "/dev/disk/by-id/$1" 2>/dev/null)
    [ "$got" = "/dev/$2" ] || { echo "by-id/$1 -> '${got}', want /dev/$2"; ls -l /dev/disk/by-id/ 2>&1 | grep ublk; return 1; }
}

names_and_links() {
    local dev id serial n
    rm -f "$BACK/names.img"; truncate -s 64M "$BACK/names.img"
    dev=$("$UBLKD" add -t file --path "$BACK/names.img" -q 1 --name db-1.x_y) || return 1
    id=${dev#/dev/ublkb}
    serial=$(json_field "$id" serial)
    [ "$(json_field "$id" name)" = db-1.x_y ] || { echo "list --json lacks the name"; return 1; }
    [[ "$serial" =~ ^[0-9a-f]{16}$ ]] || { echo "bad serial '$serial'"; return 1; }
    "$UBLKD" list -n "$id" | grep -E "^$id +$dev +db-1.x_y +$serial " || { echo "table lacks name/serial"; "$UBLKD" list; return 1; }
    [ "$("$UBLKD" udev-id "ublkb${id}p2")" = "$(printf 'UBLKD_ID=%s\nUBLKD_NAME=db-1.x_y\nUBLKD_SERIAL=%s\nID_SERIAL=%s' "$id" "$serial" "$serial")" ] \
        || { echo "udev-id output wrong"; "$UBLKD" udev-id "ublkb$id"; return 1; }
    udevadm settle -t 30
    udevadm info "$dev"
    link_is ublk-db-1.x_y "ublkb$id" || return 1
    link_is "ublk-$serial" "ublkb$id" || return 1
    # A partition table: the kernel scans it, udev links the partitions.
    printf 'label: gpt\n,16M\n,\n' | sfdisk -q "$dev" || return 1
    udevadm settle -t 30
    for n in 1 2; do
        [ -b "${dev}p$n" ] || { echo "no ${dev}p$n"; return 1; }
        link_is "ublk-db-1.x_y-part$n" "ublkb${id}p$n" || return 1
        link_is "ublk-$serial-part$n" "ublkb${id}p$n" || return 1
    done
    # Name and serial survive the daemon's death and a recovery (the links stay right too).
    kill -9 "$(daemon_pid "$id")"
    sleep 0.5
    "$UBLKD" recover -n "$id" >/dev/null || return 1
    [ "$(json_field "$id" serial)" = "$serial" ] || { echo "serial changed on recover"; return 1; }
    [ "$(json_field "$id" name)" = db-1.x_y ] || { echo "name lost on recover"; return 1; }
    udevadm settle -t 30
    link_is ublk-db-1.x_y-part1 "ublkb${id}p1" || return 1
    "$UBLKD" del -n "$id" || return 1
    udevadm settle -t 30
    for l in ublk-db-1.x_y ublk-db-1.x_y-part1 ublk-db-1.x_y-part2 "ublk-$serial"; do
        [ ! -e "/dev/disk/by-id/$l" ] && [ ! -L "/dev/disk/by-id/$l" ] || { echo "$l still there after del"; return 1; }
    done
    rm -f "$BACK/names.img"
}

test_names() {
    local dev id
    if udev_start >"$LOG_DIR/udev-start.log" 2>&1; then
        check "names: --name and serial in list, by-id links for disk and partitions, kept across recover, gone after del" names_and_links
    else
        fail "names: cannot start systemd-udevd" "$(tail -3 "$LOG_DIR/udev-start.log")"
    fi
    udev_stop
    dev=$("$UBLKD" add -t null --size 16M -q 1 --name taken) || { fail "names: add"; return; }
    id=${dev#/dev/ublkb}
    expect_error "names: a duplicate name is refused in one line, nothing created" \
        "the name 'taken' is taken by device $id" "$UBLKD" add -t null --size 16M --name taken
    expect_error "names: a bad name is refused in one line" \
        "contains '/'" "$UBLKD" add -t null --size 16M --name a/b
    "$UBLKD" del -n "$id"
    # Free again once its device is gone.
    dev=$("$UBLKD" add -t null --size 16M -q 1 --name taken)
    check "names: a name is free again after del" test -b "$dev"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
}

# ext4 on a file-target device, mounted; the device doubles under it and resize2fs grows the
# file system online; data intact, fsck clean.
resize_mounted_ext4() {
    local img=$BACK/resize.img mnt=$SCRATCH/mnt-resize src=$SCRATCH/tree-resize dev id before after
    rm -f "$img"; truncate -s 64M "$img"
    dev=$("$UBLKD" add -t file --path "$img" -q 2) || return 1
    id=${dev#/dev/ublkb}
    mkfs.ext4 -q -F "$dev" || return 1
    mkdir -p "$mnt"; mount "$dev" "$mnt" || return 1
    rm -rf "$src"; make_tree "$src"
    cp -a "$src/." "$mnt/" && sync
    (cd "$src" && find . -type f -exec sha256sum {} + | sort -k2) >"$SCRATCH/sums-resize"
    before=$(df -k --output=size "$mnt" | tail -1)
    "$UBLKD" resize -n "$id" --size 128M || { umount "$mnt"; return 1; }
    [ "$(blockdev --getsize64 "$dev")" = $((128 << 20)) ] || { echo "disk is $(blockdev --getsize64 "$dev")"; umount "$mnt"; return 1; }
    [ "$(stat -c %s "$img")" = $((128 << 20)) ] || { echo "file not grown"; umount "$mnt"; return 1; }
    [ "$(json_field "$id" size)" = $((128 << 20)) ] || { echo "state size not updated"; umount "$mnt"; return 1; }
    resize2fs "$dev" || { umount "$mnt"; return 1; }
    after=$(df -k --output=size "$mnt" | tail -1)
    echo "df size before $before KiB, after $after KiB"
    [ "$after" -gt $((before * 18 / 10)) ] || { echo "df did not grow"; umount "$mnt"; return 1; }
    # Use the new space: allocate more than the old file system held, and write a file after the
    # resize whose contents must survive a new daemon.
    fallocate -l 80M "$mnt/allocated-after-resize" || { echo "cannot allocate 80M"; umount "$mnt"; return 1; }
    head -c $((4 << 20)) /dev/urandom >"$mnt/new-space" || { umount "$mnt"; return 1; }
    (cd "$mnt" && find . -type f ! -path './lost+found/*' ! -name new-space ! -name allocated-after-resize -exec sha256sum {} + | sort -k2) >"$SCRATCH/sums2-resize"
    local new_sum; new_sum=$(sha256sum <"$mnt/new-space")
    umount "$mnt" || return 1
    diff "$SCRATCH/sums-resize" "$SCRATCH/sums2-resize" || return 1
    fsck.ext4 -fn "$dev" || return 1
    # A new daemon (kill -9, recover) serves the new size from the state file.
    kill -9 "$(daemon_pid "$id")"; sleep 0.5
    "$UBLKD" recover -n "$id" >/dev/null || return 1
    mount "$dev" "$mnt" || return 1
    [ "$(sha256sum <"$mnt/new-space")" = "$new_sum" ] || { echo "new-space changed"; umount "$mnt"; return 1; }
    umount "$mnt"
    "$UBLKD" del -n "$id"
}

# -t nbd follows its server: nbdkit's file plugin serves a file the test grows; `ublkd resize`
# without a size grows the device to the export's new size under a mounted ext4 (resize2fs
# online), and writes beyond the old end go out on connections negotiated after the growth.
resize_nbd_follows_server() {
    local img=$BACK/nbd-resize.img sock=$SCRATCH/nbdkit-resize.sock mnt=$SCRATCH/mnt-nbd-resize
    local src=$SCRATCH/tree-nbd-resize dev id before after pid rc=1
    command -v nbdkit >/dev/null || { echo "nbdkit is not installed"; return 1; }
    rm -f "$img" "$sock"; truncate -s 64M "$img"
    nbdkit -f --unix "$sock" file "$img" 2>"$LOG_DIR/nbdkit-resize.log" &
    pid=$!
    wait_sock "$sock" || { stop_pid "$pid" 5; return 1; }
    dev=$("$UBLKD" add -t nbd --uri "nbd+unix:///?socket=$sock" -q 2) || { stop_pid "$pid" 5; return 1; }
    id=${dev#/dev/ublkb}
    mkdir -p "$mnt"
    (
        set -e
        mkfs.ext4 -q -F "$dev"
        mount "$dev" "$mnt"
        trap 'umount "$mnt" 2>/dev/null' EXIT
        rm -rf "$src"; make_tree "$src"
        cp -a "$src/." "$mnt/"; sync
        (cd "$src" && find . -type f -exec sha256sum {} + | sort -k2) >"$SCRATCH/sums-nbd-resize"
        before=$(df -k --output=size "$mnt" | tail -1)
        # The server has not grown: a bigger --size is refused, the device keeps its size.
        if "$UBLKD" resize -n "$id" --size 128M 2>"$SCRATCH/nbd-resize.err"; then echo "grew past the server"; exit 1; fi
        grep -q "fewer than" "$SCRATCH/nbd-resize.err"
        [ "$(blockdev --getsize64 "$dev")" = $((64 << 20)) ]
        truncate -s 128M "$img"
        # A new daemon finds the export grown: it serves the device's size until told.
        kill -9 "$(daemon_pid "$id")"; sleep 0.5
        "$UBLKD" recover -n "$id" >/dev/null
        [ "$(blockdev --getsize64 "$dev")" = $((64 << 20)) ]
        [ "$(json_field "$id" size)" = $((64 << 20)) ]
        "$UBLKD" resize -n "$id" | grep -qx "$dev: 128M"
        [ "$(blockdev --getsize64 "$dev")" = $((128 << 20)) ]
        [ "$(json_field "$id" size)" = $((128 << 20)) ]
        resize2fs "$dev"
        after=$(df -k --output=size "$mnt" | tail -1)
        echo "df size before $before KiB, after $after KiB"
        [ "$after" -gt $((before * 18 / 10)) ]
        fallocate -l 80M "$mnt/allocated-after-resize"
        head -c $((4 << 20)) /dev/urandom >"$mnt/new-space"; sync
        (cd "$mnt" && find . -type f ! -path './lost+found/*' ! -name new-space ! -name allocated-after-resize -exec sha256sum {} + | sort -k2) >"$SCRATCH/sums2-nbd-resize"
        diff "$SCRATCH/sums-nbd-resize" "$SCRATCH/sums2-nbd-resize"
        umount "$mnt"
        trap - EXIT
        fsck.ext4 -fn "$dev"
    ) && rc=0
    "$UBLKD" del -n "$id" || rc=1
    stop_pid "$pid" 5
    rm -f "$img" "$sock"
    return $rc
}

# Without --size the device follows its backing: a file grown elsewhere.
resize_file_follows_length() {
    local img=$BACK/follow.img dev id
    rm -f "$img"; truncate -s 32M "$img"
    dev=$("$UBLKD" add -t file --path "$img" -q 1) || return 1
    id=${dev#/dev/ublkb}
    truncate -s 48M "$img"
    "$UBLKD" resize -n "$id" | grep -qx "$dev: 48M" || { "$UBLKD" del -n "$id"; return 1; }
    [ "$(blockdev --getsize64 "$dev")" = $((48 << 20)) ] || { "$UBLKD" del -n "$id"; return 1; }
    "$UBLKD" del -n "$id"
    rm -f "$img"
}

resize_mem() {
    local dev id
    dev=$("$UBLKD" add -t mem --size 32M -q 1) || return 1
    id=${dev#/dev/ublkb}
    "$UBLKD" resize -n "$id" --size 96M | grep -qx "$dev: 96M" || return 1
    [ "$(blockdev --getsize64 "$dev")" = $((96 << 20)) ] || return 1
    head -c 1M /dev/urandom >"$SCRATCH/tail.bin"
    dd if="$SCRATCH/tail.bin" of="$dev" bs=1M seek=95 oflag=direct status=none || return 1
    cmp <(dd if="$dev" bs=1M skip=95 iflag=direct status=none) "$SCRATCH/tail.bin" || return 1
    "$UBLKD" del -n "$id"
}

test_resize() {
    check "resize: mounted ext4 on -t file doubles online (resize2fs), data intact, fsck clean, size kept across recover" resize_mounted_ext4
    check "resize: -t mem grows, the new range reads back what was written" resize_mem
    check "resize: -t file without --size follows the file's length" resize_file_follows_length
    check "resize: -t nbd follows nbdkit's grown export under a mounted ext4 (resize2fs), data intact, fsck clean" \
        resize_nbd_follows_server
    local dev id
    dev=$("$UBLKD" add -t mem --size 32M -q 1) || { fail "resize: add"; return; }
    id=${dev#/dev/ublkb}
    expect_error "resize: shrinking is refused in one line" "shrinking is not supported" \
        "$UBLKD" resize -n "$id" --size 16M
    expect_error "resize: a missing device is one line" "device 77 does not exist" \
        "$UBLKD" resize -n 77 --size 16M
    expect_error "resize: -t mem without --size has nothing to follow, one line" "has no backing to follow" \
        "$UBLKD" resize -n "$id"
    check "resize: a refused resize left the size alone" test "$(blockdev --getsize64 "$dev")" = $((32 << 20))
    "$UBLKD" del -n "$id"
    "$UBLKD" create -t qcow2 --path "$BACK/resize.qcow2" --size 32M >/dev/null
    dev=$("$UBLKD" add -t qcow2 --path "$BACK/resize.qcow2" -q 1) || { fail "resize: add qcow2"; return; }
    expect_error "resize: a target that cannot grow is refused in one line" "-t qcow2 cannot be resized online" \
        "$UBLKD" resize -n "${dev#/dev/ublkb}" --size 64M
    expect_error "resize: following is refused as well for it" "-t qcow2 cannot be resized online" \
        "$UBLKD" resize -n "${dev#/dev/ublkb}"
    "$UBLKD" del -n "${dev#/dev/ublkb}"
    rm -f "$BACK/resize.qcow2" "$BACK/resize.img"
}

# 6.12: no UPDATE_SIZE: one clear line, the device untouched.
test_resize_refused() {
    local dev id
    dev=$("$UBLKD" add -t mem --size 32M -q 1) || { fail "resize: add"; return; }
    id=${dev#/dev/ublkb}
    expect_error "resize: refused in one line on a kernel without UPDATE_SIZE" "lacks UPDATE_SIZE (Linux 6.16+)" \
        "$UBLKD" resize -n "$id" --size 64M
    check "resize: the refused device keeps its size" test "$(blockdev --getsize64 "$dev")" = $((32 << 20))
    "$UBLKD" del -n "$id"
}

#!/bin/bash
# Guest half of scripts/bench-vhost.sh: fio on three disks backed by the same host file, found
# by serial (ublkd's vhost-user-blk "ublkd-bench", QEMU's built-in virtio-blk "qemu-builtin",
# qemu-storage-daemon's vhost-user-blk: the other vd disk). Runs are interleaved: every round
# goes through every cell, and within a cell through every disk, in a rotated order. Before and
# after each run it drops a marker in $VHOST_CTL so the host can read the backends' CPU time.
set -u
modprobe virtio_blk 2>/dev/null
sleep 1
declare -A dev
for s in /sys/block/vd*/serial; do
    b=$(basename "$(dirname "$s")")
    case "$(cat "$s")" in
    ublkd-bench) dev[ublkd]=/dev/$b ;;
    qemu-builtin) dev[builtin]=/dev/$b ;;
    *) dev[qsd]=/dev/$b ;;
    esac
done
echo "disks: ublkd=${dev[ublkd]:-} qsd=${dev[qsd]:-} builtin=${dev[builtin]:-}"
[[ -n "${dev[ublkd]:-}" && -n "${dev[qsd]:-}" && -n "${dev[builtin]:-}" ]] || exit 1
rounds=${BENCH_ROUNDS:-2} runtime=${BENCH_RUNTIME:-8}
cells=(${BENCH_CELLS:-randread-qd1-j1 randread-qd64-j1 randread-qd64-j2 randwrite-qd1-j1 randwrite-qd64-j1 randwrite-qd64-j2 randread-qd1-j2 randwrite-qd1-j2})
disks=(ublkd qsd builtin)
for ((r = 1; r <= rounds; r++)); do
    for ((c = 0; c < ${#cells[@]}; c++)); do
        cell=${cells[c]}
        IFS=- read -r rw qd j <<<"$cell"
        for ((k = 0; k < 3; k++)); do
            d=${disks[(k + r + c) % 3]}
            tag="$r-$cell-$d"
            touch "$VHOST_CTL/start-$tag"
            fio --name=b --filename="${dev[$d]}" --direct=1 --ioengine=libaio --rw="$rw" --bs=4k \
                --iodepth="${qd#qd}" --numjobs="${j#j}" --offset_increment=256M --size=256M \
                --time_based --runtime="$runtime" --ramp_time=1 --group_reporting \
                --output-format=json --output="$VHOST_CTL/fio-$tag.json" >/dev/null 2>&1
            touch "$VHOST_CTL/end-$tag"
            echo "$tag done"
        done
    done
done

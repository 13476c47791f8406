# Shared-memory zero copy (UBLK_F_SHMEM_ZC, Linux 7.1+), sourced by run.sh: `add --shmem FILE`
# registers a file that fio maps too (--iomem=mmapshared:FILE); its O_DIRECT requests then
# arrive by reference and are served in those pages. Verified for a target that does I/O by
# address (file) and one that touches bytes (mem); the daemon's count says they went that way.
# Where the kernel lacks SHMEM_ZC (6.12), one line refuses it.

served_shared() { # ID QUEUES: requests the last daemon of this id served in shared memory
    queue_count "/run/ublkd/$1.log" "in shared memory" "$2"
}

shm_verify() { # DEV NAME BS-ARGS QD SHM
    fio_verify "$1" "$2" "$3" "$4" --iomem="mmapshared:$5"
}

test_shmem() {
    local shm=$TMPDIR/ublkd-shm.buf dev id
    rm -f "$shm"; truncate -s 16M "$shm"
    truncate -s 256M "$BACK/shm.img"
    if ! kernel_has SHMEM_ZC; then
        check "shmem: refused in one line without SHMEM_ZC, nothing left" \
            refused_cleanly "lacks SHMEM_ZC" -t mem --size 64M --shmem "$shm" --recovery off
        rm -f "$shm"
        return
    fi
    for t in "file --path $BACK/shm.img" "mem --size 256M"; do
        # shellcheck disable=SC2086 # the target's words
        dev=$("$UBLKD" add -t $t -q 2 --shmem "$shm" --recovery off) || { fail "shmem: add -t ${t%% *}"; continue; }
        id=${dev#/dev/ublkb}
        check "shmem ${t%% *}: verify 4k qd32 from the shared buffer" shm_verify "$dev" "shm-${t%% *}-4k" "--bs=4k" 32 "$shm"
        check "shmem ${t%% *}: verify 4k-128k qd16 from the shared buffer" shm_verify "$dev" "shm-${t%% *}-mixed" "--bsrange=4k-128k" 16 "$shm"
        check "shmem ${t%% *}: verify 4k-128k qd16 from private memory (copied as usual)" fio_verify "$dev" "shm-${t%% *}-private" "--bsrange=4k-128k" 16
        "$UBLKD" del -n "$id"
        check "shmem ${t%% *}: requests were served in the shared buffer" test "$(served_shared "$id" 2)" -gt 1000
    done
    check "shmem: refused in one line with recovery, nothing left" \
        refused_cleanly "needs --recovery off" -t mem --size 64M --shmem "$shm"
    check "shmem: refused in one line with zero-copy buffers, nothing left" \
        refused_cleanly "not zero-copy" -t null --size 64M --shmem "$shm" --recovery off --buffers zero-copy
    truncate -s 12345 "$TMPDIR/ublkd-shm.odd"
    check "shmem: a size that is not a page multiple is refused in one line, nothing left" \
        refused_cleanly "must be a non-zero multiple" -t null --size 64M --shmem "$TMPDIR/ublkd-shm.odd" --recovery off
    truncate -s 1M "$BACK/shm-on-disk.buf"
    check "shmem: a file outside tmpfs/hugetlbfs is refused in one line, nothing left" \
        refused_cleanly "not on tmpfs or hugetlbfs" -t null --size 64M --shmem "$BACK/shm-on-disk.buf" --recovery off
    rm -f "$BACK/shm-on-disk.buf"
    check "shmem: a missing file is refused in one line, nothing left" \
        refused_cleanly "No such file" -t null --size 64M --shmem "$TMPDIR/ublkd-shm.none" --recovery off
    rm -f "$shm" "$TMPDIR/ublkd-shm.odd" "$BACK/shm.img"
}

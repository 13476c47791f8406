#!/usr/bin/env python3
"""Zeroing flood against a running `ublkd export` (or any NBD server whose pid you give).

    bench/nbd-flood.py HOST PORT PID [CLIENTS [REQUESTS [LEN [SIZE]]]]

CLIENTS connections (default 64) each pipeline REQUESTS requests (default 32), alternating
WRITE_ZEROES with NO_HOLE and TRIM of LEN bytes (default 2 MiB) at offsets spread over SIZE
(default 1 GiB), without reading a reply; then each reads all its replies. Prints the server's
VmRSS before the flood and its VmHWM after it (the peak is reset first through clear_refs, so
run as the server's owner or root). Used for docs/bench-nbd.md ("Memory under a zeroing flood").
"""
import socket
import struct
import sys
import threading

args = sys.argv[1:]
if len(args) < 3:
    sys.exit(__doc__)
host, port, pid = args[0], int(args[1]), int(args[2])
rest = [int(a) for a in args[3:]] + [64, 32, 2 << 20, 1 << 30][len(args) - 3:]
clients, per, length, size = rest[:4]


def status_mib(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1]) // 1024
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def recvn(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("server closed the connection")
        b += c
    return b


def handshake():
    """Fixed newstyle, NBD_OPT_GO for the default export ("")."""
    s = socket.create_connection((host, port))
    recvn(s, 18)
    s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
    s.sendall(struct.pack(">QII", 0x49484156454F5054, 7, 6) + struct.pack(">IH", 0, 0))
    while True:
        _, _, typ, ln = struct.unpack(">QIII", recvn(s, 20))
        recvn(s, ln)
        if typ == 1:
            return s
        if typ & 0x80000000:
            raise SystemExit(f"NBD_OPT_GO failed: {typ:#x}")


def flood(i, s, errors):
    reqs = b""
    for j in range(per):
        typ, flags = (6, 2) if j % 2 == 0 else (4, 0)  # WRITE_ZEROES + NO_HOLE, TRIM
        off = ((i * per + j) * length) % (size - length + 1) // 4096 * 4096
        reqs += struct.pack(">IHHQQI", 0x25609513, flags, typ, j, off, length)
    s.sendall(reqs)
    for _ in range(per):
        _, err, _ = struct.unpack(">IIQ", recvn(s, 16))
        if err:
            errors.append(err)


socks = [handshake() for _ in range(clients)]
open(f"/proc/{pid}/clear_refs", "w").write("5")
before = status_mib("VmRSS:")
errors = []
threads = [threading.Thread(target=flood, args=(i, s, errors)) for i, s in enumerate(socks)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(
    f"{clients} clients x {per} requests of {length >> 20} MiB: "
    f"RSS {before} MiB before, peak {status_mib('VmHWM:')} MiB, {len(errors)} errors"
)

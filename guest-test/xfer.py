#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""The host end of the `migrate` scenario's two paced TCP transfers (run in its namespace).

    xfer.py ADDR PORT FILE BYTES RATE TIMEOUT

Listens on ADDR:PORT and ADDR:PORT+1, prints `listening`, then serves one connection on
each: to the first it sends FILE (host -> guest) at RATE bytes/s and closes; from the
second it reads BYTES (guest -> host) at RATE bytes/s, with a small receive buffer so that
the guest's sender is held to that pace and the data really crosses the network over the
whole transfer. Prints one JSON line: per direction the bytes moved, the sha256, the
wall-clock start and end (time.time()) and the error, if any.
"""

import hashlib
import json
import socket
import sys
import threading
import time

CHUNK = 16384


def pace(done, start, rate):
    """Sleep until `done` bytes are due at `rate` bytes/s since `start`."""
    ahead = done / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)


def serve(lsock, send, data, nbytes, rate, timeout, out):
    try:
        lsock.settimeout(timeout)
        conn, _ = lsock.accept()
        conn.settimeout(timeout)
        out["start"] = time.time()
        t0 = time.monotonic()
        h = hashlib.sha256()
        moved = 0
        if send:
            while moved < len(data):
                chunk = data[moved:moved + CHUNK]
                conn.sendall(chunk)
                h.update(chunk)
                moved += len(chunk)
                out["bytes"] = moved
                pace(moved, t0, rate)
        else:
            while moved < nbytes:
                chunk = conn.recv(min(CHUNK, nbytes - moved))
                if not chunk:
                    break
                h.update(chunk)
                moved += len(chunk)
                out["bytes"] = moved
                pace(moved, t0, rate)
        out["end"] = time.time()
        out["sha256"] = h.hexdigest()
        conn.close()
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
        out["end"] = time.time()


def main():
    addr, port, path, nbytes, rate, timeout = sys.argv[1:7]
    port, nbytes, rate, timeout = int(port), int(nbytes), float(rate), float(timeout)
    with open(path, "rb") as f:
        data = f.read()
    socks = []
    for p in (port, port + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by the accepted socket: a small window, so the guest sends at our pace.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.bind((addr, p))
        s.listen(1)
        socks.append(s)
    print("listening", flush=True)
    res = {"h2g": {"bytes": 0}, "g2h": {"bytes": 0}}
    threads = [
        threading.Thread(target=serve, args=(socks[0], True, data, 0, rate, timeout,
                                             res["h2g"])),
        threading.Thread(target=serve, args=(socks[1], False, b"", nbytes, rate, timeout,
                                             res["g2h"])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""TCP request/response latency against the guest's echo server (port 7, busybox nc
running cat): one byte out, the same byte back, N times on one connection with Nagle
off; prints {"n", "p50_us", "p90_us", "p99_us", "max_us"} as JSON.

    rr.py HOST PORT N
"""
import json
import socket
import sys
import time


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # Warm up: the first exchanges pay for ARP, slow start and the guest's fork of cat.
    for _ in range(20):
        s.sendall(b"w")
        if s.recv(1) != b"w":
            raise SystemExit("the echo server answered something else")
    rtts = []
    for i in range(n):
        b = bytes([65 + i % 26])
        t = time.perf_counter()
        s.sendall(b)
        if s.recv(1) != b:
            raise SystemExit("the echo server answered something else")
        rtts.append(time.perf_counter() - t)
    s.close()
    rtts.sort()

    def pct(p):
        return round(rtts[min(len(rtts) - 1, int(len(rtts) * p))] * 1e6, 1)

    print(json.dumps({"n": n, "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
                      "max_us": round(rtts[-1] * 1e6, 1)}))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""UDP flood out of one interface, for the uplink side of the benchmark.

Run inside the benchmark's network namespace. Two modes:

  packet  AF_PACKET raw socket bound to the interface, PACKET_QDISC_BYPASS on:
          hand-built Ethernet/IPv4/UDP frames go straight to the driver's xmit
          (TAP: the backend's read queue; veth: the peer's receive path). No
          address, route or neighbour entry is needed. The fastest mode here.
  udp     a connected AF_INET UDP socket: the frames go through the IP stack,
          routing, the neighbour table and the qdisc. Needs an address on the
          interface and a static neighbour entry for the destination.

Both use sendmmsg(2) through ctypes with a fixed vector of messages (built once,
sent again and again), so the Python interpreter costs one call per batch. Frames
are `--size` bytes at layer 2 (Ethernet header included, FCS excluded). The UDP
source port is varied across the batch.

Runs until SIGINT/SIGTERM or `--seconds`, then prints one JSON line:
{"sent": N, "errors": N, "seconds": S, "pps": P}.
"""

import argparse
import ctypes
import ctypes.util
import errno
import json
import os
import signal
import socket
import struct
import sys
import time

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
ETH_P_IP = 0x0800
ETH_HDR = 14
IP_HDR = 20
UDP_HDR = 8


class IoVec(ctypes.Structure):
    """struct iovec."""

    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    """struct msghdr (x86_64 / aarch64 layout; ctypes inserts the padding)."""

    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    """struct mmsghdr."""

    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


def checksum(data: bytes) -> int:
    """The Internet checksum of `data`."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mac_bytes(mac: str) -> bytes:
    """'52:54:00:12:34:56' -> 6 bytes."""
    return bytes(int(p, 16) for p in mac.split(":"))


def udp_payload_len(size: int) -> int:
    """UDP payload bytes for an L2 frame of `size` bytes."""
    n = size - ETH_HDR - IP_HDR - UDP_HDR
    if n < 0:
        raise SystemExit(f"flood: --size {size} is smaller than the headers (42 bytes)")
    return n


def build_frame(args, sport: int) -> bytes:
    """One Ethernet/IPv4/UDP frame of args.size bytes."""
    payload = bytes(udp_payload_len(args.size))
    udp = struct.pack("!HHHH", sport, args.dport, UDP_HDR + len(payload), 0)
    total = IP_HDR + len(udp) + len(payload)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45, 0, total, 0, 0x4000, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(args.src_ip), socket.inet_aton(args.dst_ip),
    )
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    eth = mac_bytes(args.dst_mac) + mac_bytes(args.src_mac) + struct.pack("!H", ETH_P_IP)
    return eth + ip + udp + payload


def open_socket(args):
    """The sending socket and the list of buffers to send."""
    if args.mode == "packet":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        s.bind((args.iface, 0))
        try:
            s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        except OSError as e:
            print(f"flood: PACKET_QDISC_BYPASS unavailable ({e}); using the qdisc", file=sys.stderr)
        if not args.src_mac:
            with open(f"/sys/class/net/{args.iface}/address") as f:
                args.src_mac = f.read().strip()
        bufs = [build_frame(args, 10000 + i % 1024) for i in range(args.batch)]
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind((args.src_ip, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
        s.connect((args.dst_ip, args.dport))
        bufs = [bytes(udp_payload_len(args.size))] * args.batch
    return s, bufs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iface", required=True, help="interface to send out of")
    ap.add_argument("--mode", choices=["packet", "udp"], default="packet")
    ap.add_argument("--size", type=int, default=64, help="L2 frame size in bytes (FCS excluded)")
    ap.add_argument("--dst-mac", default="52:54:00:12:34:56")
    ap.add_argument("--src-mac", default="", help="default: the interface's address")
    ap.add_argument("--src-ip", default="198.19.0.1")
    ap.add_argument("--dst-ip", default="198.19.0.2")
    ap.add_argument("--dport", type=int, default=9)
    ap.add_argument("--batch", type=int, default=256, help="messages per sendmmsg call")
    ap.add_argument("--gap-us", type=float, default=0,
                    help="sleep this long after each batch, so that a busy-polling process sharing "
                         "the core (the frontend) runs in short turns instead of 4 ms ticks")
    ap.add_argument("--seconds", type=float, default=0, help="stop after this long (0: until signalled)")
    args = ap.parse_args()

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    # PR_SET_TIMERSLACK = 29: 1 ns of slack, so that --gap-us sleeps are as asked.
    libc.prctl(29, ctypes.c_ulong(1), 0, 0, 0)
    libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int]
    libc.sendmmsg.restype = ctypes.c_int

    sock, bufs = open_socket(args)
    n = len(bufs)
    keep = [ctypes.create_string_buffer(b, len(b)) for b in bufs]
    iovs = (IoVec * n)()
    msgs = (MMsgHdr * n)()
    for i, b in enumerate(keep):
        iovs[i].base = ctypes.addressof(b)
        iovs[i].len = len(bufs[i])
        msgs[i].hdr.iov = ctypes.pointer(iovs[i])
        msgs[i].hdr.iovlen = 1

    stop = False

    def on_signal(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    fd = sock.fileno()
    sent = errors = 0
    start = time.monotonic()
    deadline = start + args.seconds if args.seconds > 0 else None
    sendmmsg = libc.sendmmsg
    gap = args.gap_us / 1e6
    sleep = time.sleep
    while not stop:
        r = sendmmsg(fd, msgs, n, 0)
        if r > 0:
            sent += r
        else:
            e = ctypes.get_errno()
            if e == errno.EINTR:
                continue
            errors += 1
            if e not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED, errno.ENETDOWN):
                print(f"flood: sendmmsg failed: {os.strerror(e)}", file=sys.stderr)
                sys.exit(1)
        if gap:
            sleep(gap)
        if deadline is not None and time.monotonic() >= deadline:
            break
    secs = time.monotonic() - start
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(secs, 3),
                      "pps": round(sent / secs) if secs > 0 else 0}), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes seeds for the turn_message fuzz target: records [op, len, bytes] (see the target)."""
import os, struct

COOKIE = 0x2112A442

def attr(t, v):
    pad = (4 - len(v) % 4) % 4
    return struct.pack(">HH", t, len(v)) + v + b"\0" * pad

def stun(method_type, tid, attrs=b""):
    return struct.pack(">HHI", method_type, len(attrs), COOKIE) + tid + attrs

def xor_addr(ip, port):
    a = bytes(int(x) for x in ip.split("."))
    c = struct.pack(">I", COOKIE)
    return struct.pack(">BBH", 0, 1, port ^ 0x2112) + bytes(x ^ y for x, y in zip(a, c))

def rec(op, b):
    assert len(b) < 256, len(b)
    return bytes([op, len(b)]) + b

UDP = attr(0x0019, bytes([17, 0, 0, 0]))
PEER = attr(0x0012, xor_addr("192.0.2.10", 7882))
OTHER = attr(0x0012, xor_addr("10.0.0.1", 22))
ALLOC, REFRESH, PERM, BIND, SEND = 0x0003, 0x0004, 0x0008, 0x0009, 0x0016
channel = struct.pack(">HH", 0x4001, 5) + b"hello" + b"\0\0\0"

flow = (
    rec(1, stun(ALLOC, b"A" * 12, UDP))            # 401: the harness learns the nonce
    + rec(2, stun(ALLOC, b"B" * 12, UDP))          # allocated
    + rec(2, stun(PERM, b"C" * 12, PEER))
    + rec(2, stun(PERM, b"D" * 12, OTHER))         # 403
    + rec(1, stun(SEND, b"E" * 12, PEER + attr(0x0013, b"check")))
    + rec(3, b"answer")
    + rec(4, b"spam")
    + rec(2, stun(BIND, b"F" * 12, attr(0x000C, struct.pack(">HH", 0x4001, 0)) + PEER))
    + rec(1, channel)
    + rec(3, b"over the channel")
    + rec(5, bytes(120))
    + rec(2, stun(REFRESH, b"G" * 12, attr(0x000D, struct.pack(">I", 0))))
)
tcp_stream = rec(0, stun(0x0001, b"H" * 12) + channel) + rec(0, b"\x16\x03\x01\x00")
seeds = {
    "allocate-permission-channel": flow,
    "tcp-stream": tcp_stream,
    "unknown-attributes": rec(1, stun(ALLOC, b"I" * 12)) + rec(2, stun(ALLOC, b"J" * 12, UDP + attr(0x0018, b"\x80"))),
    "expiry": rec(1, stun(ALLOC, b"K" * 12, UDP)) + rec(2, stun(ALLOC, b"L" * 12, UDP)) + rec(5, bytes(250)) * 4,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "turn_message")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)

#!/usr/bin/env python3
"""Writes seeds for the ice_tcp fuzz target: a cut seed byte, then an RFC 4571 stream.

`@@@@@@@@@@@@@@@@` stands for the connection's ufrag (the target substitutes it)."""
import os, struct

def stun_binding(username: bytes, use_candidate: bool, tid: bytes) -> bytes:
    attrs = b""
    pad = (4 - len(username) % 4) % 4
    attrs += struct.pack(">HH", 0x0006, len(username)) + username + b"\0" * pad
    attrs += struct.pack(">HHI", 0x0024, 4, 0x6E001EFF)  # PRIORITY
    if use_candidate:
        attrs += struct.pack(">HH", 0x0025, 0)
    attrs += struct.pack(">HH", 0x0008, 20) + b"\x11" * 20  # MESSAGE-INTEGRITY (wrong)
    attrs += struct.pack(">HHI", 0x8028, 4, 0xDEADBEEF)  # FINGERPRINT (wrong)
    return struct.pack(">HHI", 0x0001, len(attrs), 0x2112A442) + tid + attrs

def frame(d: bytes) -> bytes:
    return struct.pack(">H", len(d)) + d

UFRAG = b"@" * 16
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ice_tcp")
os.makedirs(out, exist_ok=True)
dtls_hello = bytes([22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12]) + bytes(12)
srtp = bytes([0x80, 0x60, 0, 1, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78]) + bytes(40)
alert = bytes([21, 254, 253, 0, 1, 0, 0, 0, 0, 0, 3, 0, 26]) + bytes(26)
seeds = {
    "binding": b"\x07" + frame(stun_binding(UFRAG + b":abcd", False, b"A" * 12)),
    "nominate-then-media": b"\x2a" + frame(stun_binding(UFRAG + b":abcd", True, b"B" * 12))
    + frame(dtls_hello) + frame(srtp) + frame(alert),
    "unknown-ufrag": b"\x01" + frame(stun_binding(b"zzzzzzzzzzzzzzzz:abcd", True, b"C" * 12)),
    "dtls-first": b"\x03" + frame(dtls_hello) + frame(srtp),
    "partial": b"\x05" + frame(stun_binding(UFRAG + b":abcd", False, b"D" * 12))[:30],
    "empty-frames": b"\x09" + frame(b"") * 4 + frame(stun_binding(UFRAG + b":x", False, b"E" * 12)),
    "max-length": b"\x0b" + b"\xff\xff" + bytes(100),
}
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)

#!/usr/bin/env python3
"""Writes seed inputs for the rtp_rtcp fuzz target (records of [op, len, bytes], see
fuzz_targets/rtp_rtcp.rs) from the H.264 test stream and hand-made RTCP."""
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))
h264 = open(os.path.join(here, "../../server/testdata/h264/baseline.h264"), "rb").read()
nals = [n for n in h264.replace(b"\x00\x00\x00\x01", b"\x00\x00\x01").split(b"\x00\x00\x01") if n]
SSRC = 0x12345678


def rec(op, body):
    body = body[:255]
    return bytes([op, len(body)]) + body


def fu_a(nal, size=200):
    """The NAL as FU-A fragments (RFC 6184 §5.8)."""
    head, rest = nal[0], nal[1:]
    out = []
    while rest:
        part, rest = rest[:size], rest[size:]
        fu = (head & 0x1f) | (0x80 if not out else 0) | (0x40 if not rest else 0)
        out.append(bytes([(head & 0xe0) | 28, fu]) + part)
    return out


seeds = {}
video = b""
for n in nals[:6]:
    for i, frag in enumerate(fu_a(n) if len(n) > 250 else [n]):
        video += rec(0 | 8, frag)
seeds["h264-fu-a"] = video
sps_pps = bytes([24]) + b"".join(struct.pack(">H", len(n)) + n for n in nals[:2])
seeds["stap-a"] = rec(0, sps_pps) + rec(7, b"\x10") + rec(8, b"\x41\x9a\x00")
sr = struct.pack(">BBHIQIII", 0x80, 200, 6, SSRC, 0xE1234567_00000000, 90000, 10, 1000)
seeds["sender-report"] = rec(2, sr) + rec(0, b"\x65\x88")
pli = struct.pack(">BBHII", 0x81, 206, 2, 1, 0)
fir = struct.pack(">BBHIIIBBH", 0x84, 206, 4, 1, 0, 0, 1, 0, 0)
rr = struct.pack(">BBHI", 0x81, 201, 7, 1) + struct.pack(">IIIIII", 0, 0, 100, 0, 0, 0)
nack = struct.pack(">BBHIIHH", 0x81, 205, 3, 1, 0, 5, 0xffff)
bye = struct.pack(">BBHI", 0x81, 203, 1, SSRC)
remb = struct.pack(">BBHII", 0x8f, 206, 5, 1, 0) + b"REMB" + struct.pack(">BBHI", 1, 0x0a, 0x1000, 0)
seeds["subscriber-feedback"] = rec(3, pli) + rec(3, fir) + rec(3, rr + nack) + rec(3, remb) + rec(7, b"\x80")
seeds["publisher-bye"] = rec(2, bye)
ext = struct.pack(">BBHII", 0x90, 96, 7, 3000, SSRC) + struct.pack(">HH", 0xBEDE, 1) + b"\x10\x01\x00\x00"
padded = struct.pack(">BBHII", 0xA0, 96, 8, 3000, SSRC) + b"\x41\x9a" + b"\x00\x00\x03"
seeds["rtp-headers"] = rec(1, ext + b"\x41\x9a") + rec(1, padded) + rec(4, ext)
stun = struct.pack(">HHI", 1, 0, 0x2112A442) + b"\x01" * 12
dtls_alert = bytes([21, 254, 253, 0, 1, 0, 0, 0, 0, 0, 3, 0, 2, 1, 0])
seeds["raw-datagrams"] = rec(5, stun) + rec(6, b"\x80\x60" + b"\x00" * 30) + rec(5, dtls_alert[:12])

os.makedirs(os.path.join(here, "rtp_rtcp"), exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(here, "rtp_rtcp", name), "wb") as f:
        f.write(data)

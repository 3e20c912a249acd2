#!/usr/bin/env python3
"""Records an RTP/MPEG4-GENERIC (RFC 3640) stream sent by ffmpeg into a fixture.

Usage: capture.py NAME SAMPLE_RATE CHANNELS BITRATE [PKT_SIZE]

Runs
  ffmpeg -f lavfi -i sine=frequency=440:sample_rate=RATE -ac CH -t 2 -c:a aac -b:a BITRATE
         -f rtp [-pkt_size PKT_SIZE] -sdp_file NAME.sdp rtp://127.0.0.1:PORT
and writes every UDP datagram that reaches PORT to NAME.rtp, each as a 2-byte big-endian
length followed by the packet as received (RTP header included), in arrival order.
"""
import socket
import subprocess
import sys

name, rate, channels, bitrate = sys.argv[1:5]
pkt_size = sys.argv[5] if len(sys.argv) > 5 else None

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.bind(("127.0.0.1", 0))
port = sock.getsockname()[1]
sock.settimeout(2.0)

cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-re", "-f", "lavfi",
       "-i", f"sine=frequency=440:sample_rate={rate}", "-ac", channels, "-t", "2",
       "-c:a", "aac", "-b:a", bitrate, "-f", "rtp"]
if pkt_size:
    cmd += ["-pkt_size", pkt_size]
cmd += ["-sdp_file", f"{name}.sdp", f"rtp://127.0.0.1:{port}"]
proc = subprocess.Popen(cmd)

packets = []
while True:
    try:
        data = sock.recv(65535)
    except socket.timeout:
        if proc.poll() is not None:
            break
        continue
    packets.append(data)
proc.wait()

with open(f"{name}.rtp", "wb") as f:
    for p in packets:
        f.write(len(p).to_bytes(2, "big"))
        f.write(p)
print(f"{name}: {len(packets)} packets, {sum(map(len, packets))} bytes, ffmpeg exit {proc.returncode}")

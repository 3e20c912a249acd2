#!/usr/bin/python3
"""Records what a real RTSP client sends, for the transcript tests in server/src/rtsp/.

A tiny RTSP/1.0 server that answers just enough for ffmpeg, ffprobe and GStreamer to go through
ANNOUNCE/SETUP/RECORD or DESCRIBE/SETUP/PLAY, and writes the client's byte stream (requests
verbatim, and the first interleaved frames after RECORD) to a file. It answers in the shape
confab's server does (`Session: <id>;timeout=60`, DESCRIBE controls `trackID={key}` under a
`Content-Base` of `rtsp://host:port/{room}/{id}/`), so a client's later requests match what it
would send to confab. The session id is the fixed `SESSION` below; the replaying tests build
their session with it.

Usage (one client connection, then it exits):
    record.py --port 8555 --out ffmpeg-record-tcp.rtsp [--frames 40] [--describe]

Media is not served: a player gets its PLAY answered and nothing else, so it gives up after
its own timeout and sends TEARDOWN (which is recorded too).
"""

import argparse
import re
import socket
import sys

SESSION = "7d0f2c4b91e8a635"

# What confab's DESCRIBE says for a camera with H.264 video (key 1) and Opus audio (key 2).
DESCRIBE_SDP = (
    "v=0\r\n"
    "o=- 0 0 IN IP4 127.0.0.1\r\n"
    "s=confab {room}/{id}\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "t=0 0\r\n"
    "a=control:*\r\n"
    "m=video 0 RTP/AVP 96\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 packetization-mode=1;profile-level-id=42e01f;"
    "sprop-parameter-sets=Z0LgH9oCgL/lwFqDAwMgAAADACAAAAeR4wZQ,aM4G4g==\r\n"
    "a=control:trackID=1\r\n"
    "m=audio 0 RTP/AVP 111\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "a=control:trackID=2\r\n"
)


def read_message(sock, buf, out, frames_left):
    """Returns (request_head, body, buf, frames_left); None head at EOF. Interleaved frames
    are written to `out` while `frames_left` > 0, then skipped."""
    while True:
        while buf.startswith(b"$"):
            if len(buf) < 4:
                break
            size = int.from_bytes(buf[2:4], "big")
            if len(buf) < 4 + size:
                break
            if frames_left > 0:
                out.write(buf[: 4 + size])
                frames_left -= 1
            buf = buf[4 + size :]
        if not buf.startswith(b"$"):
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[: end + 4]
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                size = int(m.group(1)) if m else 0
                if len(buf) >= end + 4 + size:
                    body = buf[end + 4 : end + 4 + size]
                    out.write(buf[: end + 4 + size])
                    out.flush()
                    return head.decode("latin-1"), body, buf[end + 4 + size :], frames_left
        chunk = sock.recv(65536)
        if not chunk:
            return None, b"", buf, frames_left
        buf += chunk


def header(head, name):
    m = re.search(r"(?im)^" + re.escape(name) + r":\s*(.*?)\r$", head)
    return m.group(1) if m else None


def answer(head, port):
    line = head.split("\r\n", 1)[0]
    method, url = line.split(" ")[:2]
    cseq = header(head, "CSeq") or "0"
    extra = []
    body = ""
    if method == "OPTIONS":
        extra.append(
            "Public: OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, "
            "GET_PARAMETER, SET_PARAMETER"
        )
    elif method == "DESCRIBE":
        path = re.sub(r"^rtsp://[^/]*", "", url).strip("/").split("/")
        room, ident = (path + ["", ""])[:2]
        base = url.rstrip("/") + "/"
        body = DESCRIBE_SDP.format(room=room, id=ident)
        extra += ["Content-Base: " + base, "Content-Type: application/sdp"]
    elif method == "SETUP":
        transport = (header(head, "Transport") or "").split(",")[0]
        if "client_port=" in transport:
            transport += ";server_port=%d-%d" % (port + 2, port + 3)
        extra += ["Transport: " + transport, "Session: %s;timeout=60" % SESSION]
    elif method in ("RECORD", "PAUSE", "TEARDOWN", "GET_PARAMETER", "SET_PARAMETER"):
        extra.append("Session: %s;timeout=60" % SESSION)
    elif method == "PLAY":
        base = url.rstrip("/")
        extra += [
            "Session: %s;timeout=60" % SESSION,
            "Range: npt=0.000-",
            "RTP-Info: url=%s/trackID=1;seq=1000;rtptime=90000,"
            "url=%s/trackID=2;seq=2000;rtptime=48000" % (base, base),
        ]
    text = "RTSP/1.0 200 OK\r\nCSeq: %s\r\nServer: confab-recorder\r\n" % cseq
    for h in extra:
        text += h + "\r\n"
    text += "Content-Length: %d\r\n\r\n%s" % (len(body.encode()), body)
    return method, text.encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8555)
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", type=int, default=40, help="interleaved frames to keep")
    args = ap.parse_args()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", args.port))
    srv.listen(1)
    sock, peer = srv.accept()
    print("client", peer, file=sys.stderr)
    buf = b""
    frames_left = args.frames
    with open(args.out, "wb") as out:
        while True:
            head, _body, buf, frames_left = read_message(sock, buf, out, frames_left)
            if head is None:
                break
            method, reply = answer(head, args.port)
            print(">>", head.split("\r\n", 1)[0], file=sys.stderr)
            sock.sendall(reply)
            if method == "TEARDOWN":
                break
    sock.close()


if __name__ == "__main__":
    main()

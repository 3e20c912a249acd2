#!/usr/bin/python3
"""A test IP camera: a GStreamer RTSP server serving a live test picture at
rtsp://127.0.0.1:PORT/cam (TCP-interleaved and UDP transports).

Run it with the system Python (/usr/bin/python3): the GStreamer bindings come from Debian's
python3-gi and gir1.2-gst-rtsp-server-1.0, which a pyenv or venv python3 does not see.

    /usr/bin/python3 scripts/rtsp-camera.py --port 0 --codec h264 --audio opus

Video: videotestsrc (is-live) at 640x360, 30 fps by default, encoded as
- h264: x264enc, High profile, no B-frames, a keyframe every --gop seconds;
- mjpeg: RTP/JPEG (RFC 2435);
- h265: x265enc (a codec the bridge cannot forward; for testing how that is reported).
Audio (optional): a 440 Hz sine as AAC (MPEG4-GENERIC), Opus or PCMU.

Once the server listens it prints exactly one line `ready rtsp://127.0.0.1:PORT/cam` on stdout
(with the real port when --port is 0) and flushes it; tests wait for that line instead of
sleeping. SIGTERM and SIGINT stop it with exit status 0. Clients share one pipeline, as they
would share one real camera.
"""

import argparse
import signal
import sys

# Until GLib takes SIGTERM/SIGINT over (in main), they end the script with status 0 as well:
# the imports and GStreamer's start take a moment on a busy machine.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
signal.signal(signal.SIGINT, lambda *_: sys.exit(0))

import gi  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def video_branch(codec, width, height, fps, gop):
    raw = (
        # The scrolling makes consecutive pictures differ, as a real camera's do.
        f"videotestsrc is-live=true pattern=smpte horizontal-speed=4 ! "
        f"video/x-raw,width={width},height={height},framerate={fps}/1 ! videoconvert"
    )
    key_int = max(1, round(gop * fps))
    if codec == "h264":
        return (
            f"{raw} ! video/x-raw,format=I420 ! "
            f"x264enc tune=zerolatency speed-preset=veryfast bframes=0 key-int-max={key_int} "
            f"bitrate=1500 ! video/x-h264,profile=high ! "
            "h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1"
        )
    if codec == "mjpeg":
        # RTP/JPEG carries only 4:2:0 and 4:2:2 baseline JPEG (RFC 2435 types 0 and 1).
        return f"{raw} ! video/x-raw,format=I420 ! jpegenc quality=70 ! rtpjpegpay name=pay0 pt=26"
    if codec == "h265":
        return (
            f"{raw} ! video/x-raw,format=I420 ! "
            f"x265enc tune=zerolatency speed-preset=ultrafast key-int-max={key_int} "
            "bitrate=1500 ! h265parse ! rtph265pay name=pay0 pt=96 config-interval=-1"
        )
    raise ValueError(codec)


def audio_branch(audio):
    src = (
        "audiotestsrc is-live=true wave=sine freq=440 volume=0.3 ! "
        "audioconvert ! audioresample"
    )
    if audio == "aac":
        aac = aac_encoder()
        return (
            f"{src} ! audio/x-raw,rate=48000,channels=2 ! {aac} bitrate=128000 ! "
            "aacparse ! rtpmp4gpay name=pay1 pt=97"
        )
    if audio == "opus":
        return (
            f"{src} ! audio/x-raw,rate=48000,channels=2 ! opusenc bitrate=64000 ! "
            "rtpopuspay name=pay1 pt=111"
        )
    if audio == "pcmu":
        return (
            f"{src} ! audio/x-raw,rate=8000,channels=1 ! mulawenc ! "
            "rtppcmupay name=pay1 pt=0"
        )
    raise ValueError(audio)


def aac_encoder():
    # avenc_aac comes with gstreamer1.0-libav, voaacenc with gstreamer1.0-plugins-bad.
    for name in ("avenc_aac", "voaacenc"):
        if Gst.ElementFactory.find(name) is not None:
            return name
    sys.exit("rtsp-camera: no AAC encoder (install gstreamer1.0-libav)")


def main():
    parser = argparse.ArgumentParser(description="Serve a test camera over RTSP.")
    parser.add_argument("--port", type=int, default=8555, help="TCP port; 0 picks a free one")
    parser.add_argument("--path", default="/cam", help="mount path (default /cam)")
    parser.add_argument("--codec", choices=["h264", "mjpeg", "h265"], default="h264")
    parser.add_argument("--audio", choices=["aac", "opus", "pcmu", "none"], default="none")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    args = parser.parse_args()

    # From here GLib handles SIGTERM/SIGINT: a signal that arrives while GStreamer is still
    # starting is delivered once the loop runs, and stops it (exit status 0).
    loop = GLib.MainLoop()

    def stop():
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, stop)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, stop)

    Gst.init(None)
    launch = video_branch(args.codec, args.width, args.height, args.fps, args.gop)
    if args.audio != "none":
        launch += " " + audio_branch(args.audio)

    # The factory parses the description only when the first client arrives, and a missing
    # element then shows as a bare 503; parse it once now so that it fails here, loudly.
    try:
        Gst.parse_launch(launch)
    except GLib.Error as e:
        sys.exit(f"rtsp-camera: cannot build the pipeline ({e.message}); is a GStreamer plugin package missing?")

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {launch} )")
    factory.set_shared(True)
    factory.set_protocols(
        GstRtsp.RTSPLowerTrans.TCP | GstRtsp.RTSPLowerTrans.UDP
    )
    server.get_mount_points().add_factory(args.path, factory)

    # attach() returns 0 when the socket cannot be bound (port taken); GStreamer has logged why.
    port = server.get_bound_port() if server.attach(None) != 0 else -1
    if port <= 0:
        sys.exit(f"rtsp-camera: cannot listen on 127.0.0.1:{args.port}")

    print(f"ready rtsp://127.0.0.1:{port}{args.path}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()

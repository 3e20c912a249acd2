#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian 12 machine; does nothing where all is present.
# Idempotent. Runs as root, or with sudo when available.
set -euo pipefail

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "setup: need root (or sudo) to run: $*" >&2; exit 1
  fi
}

need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v ffprobe >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v gst-launch-1.0 >/dev/null 2>&1 || need_apt+=(gstreamer1.0-tools gstreamer1.0-rtsp \
  gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
  gstreamer1.0-plugins-ugly gstreamer1.0-libav)
# The GStreamer elements the RTSP tests' camera and clients use, by the package that has them.
for el in x264enc:gstreamer1.0-plugins-ugly x265enc:gstreamer1.0-plugins-bad \
  jpegenc:gstreamer1.0-plugins-good mulawenc:gstreamer1.0-plugins-good \
  opusenc:gstreamer1.0-plugins-base avenc_aac:gstreamer1.0-libav rtspclientsink:gstreamer1.0-rtsp; do
  command -v gst-inspect-1.0 >/dev/null 2>&1 && gst-inspect-1.0 "${el%%:*}" >/dev/null 2>&1 ||
    need_apt+=("${el#*:}")
done
# The RTSP server bindings for the system Python (a pyenv python3 on PATH cannot see them).
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0")' >/dev/null 2>&1 ||
  need_apt+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# Network namespaces and veth pairs for the fault tests (tests/e2e/faults.rs).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++) # libFuzzer, for the fuzz targets
# The chat store's PostgreSQL backend: its tests start a throwaway server (initdb, pg_ctl) as
# the `postgres` user the package creates (chat/store/temp_postgres.rs). Redis: cluster mode.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -q
  as_root apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$repo/tests/browser/node_modules/playwright-core" ] || \
   [ "$repo/tests/browser/package-lock.json" -nt "$repo/tests/browser/node_modules" ]; then
  echo "setup: npm ci in tests/browser"
  (cd "$repo/tests/browser" && npm ci --no-audit --no-fund --loglevel=error)
fi

#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a while each: scripts/fuzz.sh [seconds] [target...]
# (default 300 s each, every target). Works on the stable toolchain. New corpus entries go to
# fuzz/corpus/<target> (not in git); crashes to fuzz/artifacts/<target>, with the command that
# replays them printed. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-300}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(rtsp_message rtsp_session signaling_json sdp rtp_rtcp image_preview ice_tcp turn_message dtls_repeat multipart cluster_sealed)

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# `-s none`: no sanitizer. ASan needs nightly (`-Zsanitizer`), while coverage instrumentation
# alone builds on stable; the server is `forbid(unsafe_code)`, so a panic is what there is to
# find. Debug assertions on, so integer overflow panics as it does under `cargo test`.
# FUZZ_BUILD=--dev builds unoptimized (no quicker to build here: 4m22s of CPU against 3m31s).
build=(-s none --debug-assertions ${FUZZ_BUILD:-})
# Instrumented builds share nothing with the workspace's: keep them in fuzz/target.
unset CARGO_TARGET_DIR
# No need for the page's blur files (server/build.rs would npm-pack them) in a fuzz build.
export CONFAB_BLUR_ASSETS=off
cargo fuzz build "${build[@]}"

# Seeds: real captures and hand-made inputs, read but never written.
seeds() {
  case $1 in
    rtsp_message | rtsp_session) echo server/testdata/rtsp ;;
    *) echo "fuzz/seeds/$1" ;;
  esac
}
dict() {
  case $1 in
    rtsp_message | rtsp_session) echo -dict=fuzz/dicts/rtsp.dict ;;
    sdp | signaling_json) echo "-dict=fuzz/dicts/$1.dict" ;;
  esac
}

failed=()
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${secs}s"
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  if ! cargo fuzz run "${build[@]}" "$t" "fuzz/corpus/$t" "$(seeds "$t")" -- \
    $(dict "$t") -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    2>"fuzz/artifacts/$t/log.txt"; then
    failed+=("$t")
    tail -40 "fuzz/artifacts/$t/log.txt" >&2
  fi
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' \
    "fuzz/artifacts/$t/log.txt" || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; inputs in fuzz/artifacts/" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"

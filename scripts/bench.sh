#!/usr/bin/env bash
# Runs the benchmark scenarios of BENCHMARKS.md on release builds and writes JSON + Markdown
# under bench-results/<timestamp>/ (or --out DIR).
#
#   scripts/bench.sh                      # all scenarios, confab and Janus, full ramps
#   scripts/bench.sh --quick              # seconds-long steps to check that everything runs
#   scripts/bench.sh --scenarios "fanout churn" --no-janus
#   scripts/bench.sh --profile            # also a perf profile of confab under fanout load
#   scripts/bench.sh -- --decode          # extra arguments for every confab-bench call
#
# The server is pinned to one CPU and the load generator to another (taskset). With Janus (the
# default when it is installed; needs root), both servers and the generator run inside a network
# namespace this script creates: libnice ignores loopback, so they talk over a veth pair with
# 198.18.0.1/30 (a benchmarking range that never leaves the machine). The namespace goes away on
# every exit path.
set -euo pipefail
cd "$(dirname "$0")/.."

scenarios="fanout meeting audio churn rtsp"
janus=auto
quick=0
profile=0
server_cpu=0
generator_cpu=1
out=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --scenarios) scenarios="$2"; shift ;;
    --janus) janus=yes ;;
    --no-janus) janus=no ;;
    --profile) profile=1 ;;
    --server-cpu) server_cpu="$2"; shift ;;
    --generator-cpu) generator_cpu="$2"; shift ;;
    --out) out="$2"; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

ncpu=$(nproc --all)
if [ "$ncpu" -lt 2 ]; then
  echo "bench.sh: needs at least 2 CPUs (server and generator on their own); this machine has $ncpu" >&2
  exit 1
fi
if [ "$janus" = auto ]; then
  if command -v janus >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then janus=yes; else janus=no; fi
fi
if [ "$janus" = yes ] && [ "$(id -u)" -ne 0 ]; then
  echo "bench.sh: the Janus comparison needs root (network namespace)" >&2
  exit 1
fi
if [ "$janus" = yes ] && ! command -v janus >/dev/null 2>&1; then
  echo "bench.sh: janus is not installed (apt-get install janus)" >&2
  exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
echo "== cargo build --release -p confab -p confab-bench"
cargo build --release -p confab -p confab-bench
server_bin="$CARGO_TARGET_DIR/release/confab"
bench_bin="$CARGO_TARGET_DIR/release/confab-bench"

out="${out:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"
echo "== results in $out"

ns=""
ip_addr=127.0.0.1
run_in=()
cleanup() {
  if [ -n "$ns" ]; then
    # Whatever still runs in the namespace was started by this script.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    ip link del "veth-cb$$" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$janus" = yes ]; then
  ns="confab-bench-$$"
  ip netns add "$ns"
  ip link add "veth-cb$$" type veth peer name "veth-cbn$$"
  ip link set "veth-cbn$$" netns "$ns"
  ip addr add 198.18.0.2/30 dev "veth-cb$$"
  ip link set "veth-cb$$" up
  ip -n "$ns" addr add 198.18.0.1/30 dev "veth-cbn$$"
  ip -n "$ns" link set "veth-cbn$$" up
  ip -n "$ns" link set lo up
  ip_addr=198.18.0.1
  run_in=(ip netns exec "$ns")
  echo "== network namespace $ns, servers and generator on $ip_addr"
fi

# Steps: full ramps, or seconds-long ones with --quick.
if [ "$quick" = 1 ]; then
  timing=(--warmup 1 --seconds 3 --repeats 1 --keep-going)
  fanout_args=(--subscribers 2 --step 2 --max 4)
  meeting_args=(--sizes 2,4)
  audio_args=(--speakers 3 --subscribers 2 --step 2 --max 4)
  churn_args=(--cycles 30 --parallel 4 --warmup-cycles 5)
  rtsp_args=(--subscribers 2 --step 2 --max 4)
  limit=600
else
  timing=(--warmup 5 --seconds 10 --repeats 3 --keep-going)
  fanout_args=(--subscribers 25 --step 25 --max 600)
  meeting_args=(--sizes 4,8,12,16)
  audio_args=(--speakers 10 --subscribers 50 --step 50 --max 1500)
  churn_args=(--cycles 1000 --parallel 8 --warmup-cycles 20)
  rtsp_args=(--subscribers 25 --step 25 --max 600)
  limit=7200
fi

# One confab-bench call: $1 output name, $2 scenario, $3 target, then its arguments
# (the step timing too: "${timing[@]}" for the scenarios).
bench() {
  local name="$1" scenario="$2" target="$3"; shift 3
  echo "== $name"
  local status=0
  timeout --kill-after=15 $((limit + 60)) "${run_in[@]}" taskset -c "$generator_cpu" \
    "$bench_bin" "$scenario" --target "$target" --server "$server_bin" \
    --server-cpus "$server_cpu" --bind "$ip_addr" --timeout "$limit" \
    --json "$out/$name.json" --markdown "$out/$name.md" \
    "$@" ${extra[@]+"${extra[@]}"} 2> >(tee "$out/$name.log" >&2) || status=$?
  if [ "$status" -ne 0 ]; then
    echo "bench.sh: $name failed with status $status (log: $out/$name.log)" >&2
    echo "### $name: failed (status $status), see $name.log" > "$out/$name.md"
  fi
  return 0
}

for s in $scenarios; do
  case "$s" in
    fanout) args=("${fanout_args[@]}") ;;
    meeting) args=("${meeting_args[@]}") ;;
    audio) args=("${audio_args[@]}") ;;
    churn) args=("${churn_args[@]}") ;;
    rtsp) args=("${rtsp_args[@]}") ;;
    *) echo "bench.sh: unknown scenario $s" >&2; exit 2 ;;
  esac
  bench "$s-confab" "$s" confab "${timing[@]}" "${args[@]}"
  if [ "$janus" = yes ] && [ "$s" != rtsp ]; then
    bench "$s-janus" "$s" janus "${timing[@]}" "${args[@]}"
    if [ -s "$out/$s-confab.json" ] && [ -s "$out/$s-janus.json" ]; then
      "$bench_bin" compare "$out/$s-confab.json" "$out/$s-janus.json" > "$out/$s-compare.md" || true
    fi
  fi
done

if [ "$profile" = 1 ]; then
  if [ "$quick" = 1 ]; then subs=4; secs=5; else subs=150; secs=30; fi
  echo "== profile: fanout with $subs subscribers under perf record"
  bench profile-fanout-confab fanout confab --subscribers "$subs" --warmup 2 --seconds "$secs" \
    --repeats 1 --profile "$out/perf.data"
  if [ -s "$out/perf.data" ]; then
    perf report -i "$out/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -40 > "$out/profile-top.txt" || true
    perf report -i "$out/perf.data" --no-children --sort dso --stdio 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -15 > "$out/profile-dso.txt" || true
    echo "== top of the profile ($out/profile-top.txt)"
    head -25 "$out/profile-top.txt"
  fi
fi

{
  echo "# confab-bench results $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  for f in "$out"/*.md; do
    [ "$f" = "$out/summary.md" ] && continue
    cat "$f"; echo
  done
} > "$out/summary.md"
echo "== summary: $out/summary.md"

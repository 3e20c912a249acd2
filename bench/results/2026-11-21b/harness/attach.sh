#!/usr/bin/env bash
# usage: attach.sh OUTDIR WRAPPER... -- BENCHARGS...
# Starts confab (release) under WRAPPER (e.g. "heaptrack -o X" or nothing), pinned to CPU 0, attaches confab-bench.
set -u
out=$1; shift
wrap=()
while [ "$1" != "--" ]; do wrap+=("$1"); shift; done; shift
mkdir -p "$out"; data=$(mktemp -d)
printf '[limits]\nparticipants_per_room = 100000\n' > $data/bench.toml
RELEASE=${CARGO_TARGET_DIR:-$(git rev-parse --show-toplevel)/target}/release
BIN=${BIN:-$RELEASE/confab}
taskset -c 0 "${wrap[@]}" $BIN --http 127.0.0.1:0 --rtsp 127.0.0.1:0 --media 127.0.0.1:0 --log warn --config $data/bench.toml --data $data/data > $out/server.out 2> $out/server.err &
wpid=$!
for i in $(seq 100); do grep -q "media listening" $out/server.out 2>/dev/null && break; sleep 0.3; done
http=$(sed -n 's#^http listening on http://##p' $out/server.out | head -1)
pid=$(pgrep -P $wpid -n 2>/dev/null || true)
# the real server process: the one listening
spid=$(ss -lntpH "sport = :${http##*:}" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
echo "server pid $spid http $http" >&2
echo $spid > $out/server.pid
taskset -c 1 "$RELEASE/confab-bench" "$@" --url ws://$http/ws --server-pid $spid --http $http
rc=$?
curl -s http://$http/metrics > $out/metrics.txt
kill -TERM $spid; wait $wpid
exit $rc

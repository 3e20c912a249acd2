#!/usr/bin/env bash
# usage: cg.sh NAME BIN [bench args]  -> Ir per forwarded packet over a 10 s window at steady state
set -u
name=$1; bin=$2; shift 2
out=/tmp/perf/cg-$name; rm -rf $out; mkdir -p $out
BIN=$bin "$(dirname "$0")"/attach.sh $out valgrind --tool=callgrind --callgrind-out-file=$out/cg.out.%p -- fanout --warmup 25 --seconds 10 --repeats 1 --probes 0 --timeout 300 "$@" > $out/bench.log 2>&1 &
apid=$!
for i in $(seq 200); do [ -s $out/server.pid ] && break; sleep 0.5; done
spid=$(cat $out/server.pid); http=$(sed -n 's#^http listening on http://##p' $out/server.out | head -1)
fwd() { curl -s http://$http/metrics | awk '/^confab_forwarded_packets_total/{print $2}'; }
# wait for forwarding to start, then 12 s of settling
for i in $(seq 240); do f=$(fwd); [ -n "$f" ] && [ "${f%.*}" -gt 2000 ] && break; sleep 0.5; done
sleep 12
callgrind_control -z $spid >/dev/null; f0=$(fwd); t0=$(date +%s.%N)
sleep 10
callgrind_control -d $spid >/dev/null; f1=$(fwd); t1=$(date +%s.%N)
wait $apid
ir=$(grep -h "^summary:" $out/cg.out.$spid.1 | awk "{print \$2}")
python3 -c "
f0,f1,ir=float('$f0'),float('$f1'),int('$ir')
print(f'$name: forwarded {f1-f0:.0f} in {float(\"$t1\")-float(\"$t0\"):.1f}s, Ir {ir/1e6:.1f}M, Ir/packet {ir/(f1-f0):.0f}')" | tee $out/result.txt

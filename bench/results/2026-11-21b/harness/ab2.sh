#!/usr/bin/env bash
# ab2.sh M REPS bin... : alternating fanout runs via attach.sh; cpu us/pkt, rss/sub, datagrams per send call
M=$1; R=$2; shift 2
for r in $(seq $R); do for b in "$@"; do
  o=/tmp/perf/ab2-$M-$b-$r; rm -rf $o; mkdir -p $o
  BIN=/tmp/perf/confab-$b nice -n -10 "$(dirname "$0")"/attach.sh $o -- fanout --subscribers $M --warmup 3 --seconds 10 --repeats 1 --json $o/r.json > $o/bench.log 2>&1
  python3 -c "
import json,re;d=json.load(open('$o/r.json'));f=d['steps'][0]['figures']
m=open('$o/metrics.txt').read()
def g(n):
  x=re.search('^'+n+r' (\d+)',m,re.M); return int(x.group(1)) if x else 0
calls,dg=g('confab_media_send_calls_total'),g('confab_media_sent_datagrams_total')
print('$b run $r: us/pkt %.2f cpu%% %.1f fwd_pps %.0f rss/sub %.0f probe p50/p99 %.2f/%.2f loss %.3f other %.0f dgrams/call %s'%(f['server_cpu_us_per_packet'],f['server_cpu_percent'],f['forwarded_pps'],f['server_rss_per_subscriber_kib'],f['probe_latency_p50_us']/1000,f['probe_latency_p99_us']/1000,f['loss_percent'],f['other_cpu_percent'],'%.1f'%(dg/calls) if calls else '-'))"
done; done

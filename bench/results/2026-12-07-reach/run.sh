#!/usr/bin/env bash
# ICE-TCP against UDP, same scenario, interleaved (this machine is shared: see BENCHMARKS.md).
# Run from the repository root after `cargo build --release -p confab -p confab-bench`.
set -euo pipefail
out=bench/results/2026-12-07-reach
for round in 1 2; do
  for t in udp tcp; do
    flag=(); [ "$t" = tcp ] && flag=(--tcp)
    taskset -c 1 target/release/confab-bench fanout --server target/release/confab --server-cpus 0 \
      --subscribers 25 --step 25 --max 75 --keep-going --warmup 3 --seconds 10 --repeats 2 \
      "${flag[@]}" --json "$out/fanout-$t-$round.json" --markdown "$out/fanout-$t-$round.md" \
      > "$out/fanout-$t-$round.log" 2>&1
  done
done

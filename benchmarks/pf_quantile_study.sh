#!/usr/bin/env bash
# The past-future quantile study of 2026-12-02 (results/cpu-2026-12-02-sim-pf-quantile.json):
# past-future with the quantile of its 16 draws' peaks at 1.0 (the default), 0.75 and 0.5, and
# aggressive, at the rates where aggressive first misses the SLA in the committed refined runs
# (reasoning seeds 0 / 1 on the H100 cost model; sharegpt with and without the prefix cache,
# bursty and multiturn on the L4 one). One JSON line per run on stdout; about 15 minutes on
# this 2-core machine. Run from the checkout with its .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
run() { .venv/bin/python -m raylight.benchmarks.pf_knobs "$@" 2>/dev/null; }
export -f run
L4="--pool-tokens 30000 --max-num-seqs 256 --cost-model l4-llama3-8b"
{
for q in 1.0 0.75 0.5; do
  echo "--workload reasoning --rate 1.775943 --seed 0 --quantile $q"
  echo "--workload reasoning --rate 1.811462 --seed 1 --quantile $q"
  echo "--workload sharegpt --rate 2.631095 $L4 --no-prefix-cache --quantile $q"
  echo "--workload sharegpt --rate 2.727273 $L4 --no-prefix-cache --quantile $q"
  echo "--workload sharegpt --rate 2.727273 $L4 --quantile $q"
  echo "--workload bursty --rate 1.781029 $L4 --quantile $q"
  echo "--workload multiturn --rate 0.6 $L4 --quantile $q"
done
echo "--workload sharegpt --rate 2.631095 $L4 --no-prefix-cache --policy aggressive"
echo "--workload sharegpt --rate 2.727273 $L4 --no-prefix-cache --policy aggressive"
echo "--workload sharegpt --rate 2.727273 $L4 --policy aggressive"
echo "--workload bursty --rate 1.781029 $L4 --policy aggressive"
echo "--workload multiturn --rate 0.6 $L4 --policy aggressive"
echo "--workload reasoning --rate 1.775943 --seed 0 --policy aggressive"
echo "--workload reasoning --rate 1.811462 --seed 1 --policy aggressive"
} | xargs -P 2 -L 1 bash -c 'run "$@"' _

#!/usr/bin/env bash
# A/B batch-1 latency in one device call: an older tree against the checkout, alternating, twice.
# Before the call, on this machine (the device copies untracked files that git does not ignore):
#   mkdir abold && git archive <commit> | tar -x -C abold
# then `OUT=$OUT bash benchmarks/ab_latency.sh`, and remove abold/ afterwards. 2026-12-02: f962278
# (4.534 ms on one machine) against 4c0a015 (4.61 ms on another): 4.49 ms each on the same one.
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
export TRITON_INTERPRET=0
mkdir -p /tmp/rl_new /tmp/rl_old
ln -sfn "$PWD" /tmp/rl_new/raylight
ln -sfn "$PWD/abold" /tmp/rl_old/raylight
model=${MODEL_DIR:-/tmp/llama3-8b}
if [ ! -f "$model/config.json" ]; then
  PYTHONPATH=/tmp/rl_new python3 -c "import sys; from raylight.engine.modelgen.make_model import \
make_model; make_model(None, 'llama3-8b', sys.argv[1], seed=0, dtype='bfloat16', device='cuda', \
progress=False)" "$model"
fi
for round in 1 2; do
  for which in old new; do
    (cd /tmp && PYTHONPATH=/tmp/rl_$which timeout 120 python3 -m raylight.benchmarks.gpu_bench \
      --model "$model" --out "$out/lat_${which}_$round.json" --sections latency --time-budget-s 60 \
      2>&1 | grep -E "tpot_b1|ttft_1024|latency trial|rror" | sed "s/^/$which $round: /")
  done
done
echo "done after ${SECONDS} s"

#!/usr/bin/env bash
# The L2 weight prefetch (engine options l2_prefetch_attn_mb / l2_prefetch_mb) in one device call:
#   1. its GPU tests (values unchanged, a prefetched read faster, decode graphs identical);
#   2. benchmarks/l2_prefetch_bench.py: each linear shape's time per layer against the MB
#      prefetched and the idle time before it;
#   3. batch-1 TTFT / TPOT on the Llama-3.1-8B-shaped model for each "ATTN_MB,HEAD_MB" in
#      $CONFIGS (default below), alternating, $ROUNDS times (default 2); "0,0" is off.
# Writes pytest_gpu.txt, l2_prefetch_bench.json, l2_prefetch_latency.json (every run's summary)
# and summary.txt under $OUT (default ./out). MODEL_DIR defaults to /tmp/llama3-8b (made on the
# GPU if missing).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out" /tmp/l2lat
model=${MODEL_DIR:-/tmp/llama3-8b}
configs=${CONFIGS:-"0,0 32,0 32,8 0,8 32,16 16,4"}
rounds=${ROUNDS:-2}
export TRITON_INTERPRET=0
mkdir -p /tmp/rl && ln -sfn "$PWD" /tmp/rl/raylight   # the checkout is the `raylight` package
export PYTHONPATH=/tmp/rl:${PYTHONPATH:-}

timeout 150 python3 -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" -m gpu \
  tests/test_kernels_l2_prefetch.py tests/test_cuda_graphs.py -k prefetch 2>&1 | tail -8 \
  | tee "$out/pytest_gpu.txt"
echo "tests done after ${SECONDS} s"

timeout 150 python3 -m raylight.benchmarks.l2_prefetch_bench --out "$out/l2_prefetch_bench.json" \
  2>&1 | tail -80 | tee "$out/summary.txt"
echo "bench done after ${SECONDS} s"

if [ ! -f "$model/config.json" ]; then
  python3 -c "import sys; from raylight.engine.modelgen.make_model import make_model; \
make_model(None, 'llama3-8b', sys.argv[1], seed=0, dtype='bfloat16', device='cuda', \
progress=False)" "$model" || { echo "make-model failed"; exit 1; }
fi
echo "model ready after ${SECONDS} s"

for round in $(seq "$rounds"); do
  for cfg in $configs; do
    attn=${cfg%,*}
    head=${cfg#*,}
    timeout 90 python3 -m raylight.benchmarks.gpu_bench --model "$model" --sections latency \
      --time-budget-s 60 --engine-opt "l2_prefetch_attn_mb=$attn" --engine-opt "l2_prefetch_mb=$head" \
      --out "/tmp/l2lat/lat_${attn}_${head}_$round.json" 2>&1 | grep -E "tpot_b1|rror" \
      | sed "s/^/$cfg round $round: /" | tee -a "$out/summary.txt"
  done
done
python3 - "$out/l2_prefetch_latency.json" /tmp/l2lat/*.json <<'EOF'
import json, sys
runs = {}
for path in sys.argv[2:]:
    d = json.load(open(path))
    runs[path.rsplit("/", 1)[1]] = {"summary": d["summary"], "engine_options": d["engine_options"],
                                    "command": d["command"], "versions": d["versions"]}
json.dump(runs, open(sys.argv[1], "w"), indent=1)
for name, r in sorted(runs.items()):
    print(name, r["summary"]["tpot_b1_ms"], r["summary"]["ttft_1024_ms"])
EOF
echo "done after ${SECONDS} s"

#!/usr/bin/env bash
# One device call for the one-kernel decode MLP (kernels/decode_mlp.py): a smoke launch with its
# check (a hung barrier shows as the timeout), the config sweep against the four-kernel chain
# (decode_mlp_bench.py), then the batch-1 decode step body with and without it in the engine
# (decode_variants.py, using the sweep's best config), and batch-1 latency plain and with
# decode_tail_kernel (gpu_bench.py). Writes JSON under $OUT.
#   OUT=$OUT bash benchmarks/decode_mlp_check.sh
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out" /tmp/rl
export TRITON_INTERPRET=0 PYTHONPATH=/tmp/rl
ln -sfn "$PWD" /tmp/rl/raylight
model=${MODEL_DIR:-/tmp/llama3-8b}
cd /tmp
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 150 python3 -m raylight.benchmarks.decode_mlp_bench --smoke --rows 1 || { echo "smoke failed rc=$?"; exit 1; }
echo "smoke ok after ${SECONDS} s"
timeout 240 python3 -m raylight.benchmarks.decode_mlp_bench --out "$out/decode_mlp_bench.json" \
  --best-out "$out/decode_mlp_best.json" || echo "bench rc=$?"
echo "bench done after ${SECONDS} s"
[ -f "$out/decode_mlp_best.json" ] || exit 1
if [ ! -f "$model/config.json" ]; then
  python3 -c "import sys; from raylight.engine.modelgen.make_model import make_model; \
make_model(None, 'llama3-8b', sys.argv[1], seed=0, dtype='bfloat16', device='cuda', progress=False)" "$model"
fi
echo "model after ${SECONDS} s"
timeout 200 python3 -m raylight.benchmarks.decode_variants --model "$model" \
  --variants plain,decode_mlp,decode_tail --decode-mlp-config "$out/decode_mlp_best.json" \
  --out "$out/decode_variants_mlp.json" 2>&1 | grep -v Warning | tail -5
echo "variants done after ${SECONDS} s"
# Batch-1 TTFT / TPOT through the engine (gpu_bench's latency section), plain and with the tail.
for opt in plain decode_tail_kernel=true; do
  extra=(); [ "$opt" = plain ] || extra=(--engine-opt "$opt")
  timeout 130 python3 -m raylight.benchmarks.gpu_bench --model "$model" --sections latency \
    --time-budget-s 60 --out "$out/latency_${opt%%=*}.json" "${extra[@]}" 2>&1 \
    | grep -E "tpot_b1|ttft_1024|rror" | sed "s/^/$opt: /"
done
echo "done after ${SECONDS} s"

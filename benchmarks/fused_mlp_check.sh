#!/usr/bin/env bash
# One device call for the one-kernel decode MLP (kernels/fused_mlp.py): its GPU tests, the config
# sweep against the kernel chain it replaces (fused_mlp_bench.py), then the batch-1 decode step
# body in the engine plain and with fused_mlp at the sweep's best config (decode_variants.py),
# and batch-1 TTFT / TPOT plain and with it (gpu_bench.py). Writes JSON under $OUT.
#   OUT=$OUT bash benchmarks/fused_mlp_check.sh
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out" /tmp/rl
export TRITON_INTERPRET=0 PYTHONPATH=/tmp/rl
ln -sfn "$PWD" /tmp/rl/raylight
model=${MODEL_DIR:-/tmp/llama3-8b}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
timeout 120 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels_fused_mlp.py \
  2>&1 | tail -3
cd /tmp
timeout 200 python3 -m raylight.benchmarks.fused_mlp_bench --rows 1 \
  --out "$out/fused_mlp_bench.json" --best-out "$out/fused_mlp_best.json" 2>&1 \
  | grep -E "us/layer|rror" || echo "bench rc=$?"
timeout 100 python3 -m raylight.benchmarks.fused_mlp_diag --out "$out/fused_mlp_diag.json" 2>&1 | tail -6
echo "bench done after ${SECONDS} s"
[ -f "$out/fused_mlp_best.json" ] || exit 1
best=$(python3 -c "import json,sys; print('_'.join(map(str, json.load(open(sys.argv[1])))))" \
  "$out/fused_mlp_best.json")
if [ ! -f "$model/config.json" ]; then
  python3 -c "import sys; from raylight.engine.modelgen.make_model import make_model; \
make_model(None, 'llama3-8b', sys.argv[1], seed=0, dtype='bfloat16', device='cuda', progress=False)" "$model"
fi
echo "model after ${SECONDS} s"
timeout 150 python3 -m raylight.benchmarks.decode_variants --model "$model" \
  --variants "plain,fused_mlp_$best" --out "$out/decode_variants_fused_mlp.json" 2>&1 \
  | grep -v Warning | tail -3
echo "variants done after ${SECONDS} s"
for opt in plain fused_mlp=true; do
  extra=(); [ "$opt" = plain ] || extra=(--engine-opt "$opt")
  timeout 110 python3 -m raylight.benchmarks.gpu_bench --model "$model" --sections latency \
    --time-budget-s 50 --out "$out/latency_${opt%%=*}.json" "${extra[@]}" 2>&1 \
    | grep -E "tpot_b1|ttft_1024|rror" | sed "s/^/$opt: /"
done
echo "done after ${SECONDS} s"

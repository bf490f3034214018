#!/usr/bin/env bash
# One device-machine call (about 6 minutes on an H200) for the changes of 2026-12-01 that no GPU
# has run yet, so that each can become a default or be dropped:
#   1. the GPU tests of programmatic dependent launch (engine option pdl) and of the top-p
#      kernel (correctness first: both are off by default);
#   2. benchmarks/sampler_bench.py: one sampling step, top-p sorted vs kernel, batch 1-256;
#   3. batch-1 TTFT / TPOT on the Llama-3.1-8B-shaped model with and without pdl;
#   4. profile_decode --prefill with the bf16 and the FP8 pool (why TTFT read 28.5-33 ms with the
#      FP8 pool against 22.6 ms).
# Writes JSON and logs under $OUT (default ./out). MODEL_DIR defaults to /tmp/llama3-8b (made on
# the GPU if missing, as gpu_bench.sh does).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
model=${MODEL_DIR:-/tmp/llama3-8b}
export TRITON_INTERPRET=0
mkdir -p /tmp/rl && ln -sfn "$PWD" /tmp/rl/raylight   # the checkout is the `raylight` package
export PYTHONPATH=/tmp/rl:${PYTHONPATH:-}

python3 -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" -m gpu \
  tests/test_cuda_graphs.py tests/test_kernels_top_p.py -k "pdl or top_p or vocab" \
  2>&1 | tail -8 | tee "$out/pytest_gpu.txt"
echo "tests done after ${SECONDS} s"

python3 -m raylight.benchmarks.sampler_bench --out "$out/sampler_bench.json" 2>&1 | tail -20
echo "sampler_bench done after ${SECONDS} s"

if [ ! -f "$model/config.json" ]; then
  python3 -c "import sys; from raylight.engine.modelgen.make_model import make_model; \
make_model(None, 'llama3-8b', sys.argv[1], seed=0, dtype='bfloat16', device='cuda', \
progress=False)" "$model" || { echo "make-model failed"; exit 1; }
fi
for pdl in false true; do
  python3 -m raylight.benchmarks.gpu_bench --model "$model" --sections ceilings,latency \
    --time-budget-s 90 --engine-opt pdl=$pdl --out "$out/latency_pdl_$pdl.json" \
    2>&1 | grep -E "tpot_b1|ttft_1024|floor_frac" | tee -a "$out/latency.txt"
done
echo "latency done after ${SECONDS} s"

for kv in auto fp8; do
  python3 -m raylight.benchmarks.profile_decode --model "$model" --prefill --prompt-len 1024 \
    --steps 5 --engine-opt kv_cache_dtype=$kv --out "$out/profile_prefill_$kv.json" \
    2>&1 | tail -16
done
echo "all done after ${SECONDS} s"

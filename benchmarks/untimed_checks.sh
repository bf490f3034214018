#!/usr/bin/env bash
# One device-machine call (about 7 minutes on an H200) for the changes of 2026-12-02 that no
# GPU has timed yet, so that each can become a default or be dropped:
#   1. the GPU tests (decode and prefill graphs, fused decode layers, PDL, FP8 pools);
#   2. batch-1 TTFT / TPOT on the Llama-3.1-8B-shaped model: plain and fuse_decode_layers=true;
#   3. profile_decode at batch 1 and 8 with fuse_decode_layers (per-kernel device time);
#   4. ShareGPT three ways: as committed (mixed batches split into decode + prefill kernels,
#      prefill tiles below 4k tokens 128 x 128 / 8 warps); without the split in eager steps
#      (every row through the prefill kernel, as on 2026-12-02's 6,309 out tok/s; prefill graphs
#      still split); with the split and 2026-12-01's tiles (128 x 64, 4 warps, 4 stages; 6,732
#      out tok/s then, without the split).
# Ran on 2026-12-02 (4c0a015, h200-2026-12-02-split-*.json): 23 GPU tests passed; TPOT 4.61 ms
# plain, 4.83 with fuse_decode_layers (kept off); ShareGPT 7,832 out tok/s as committed, 6,274
# without the split, 7,588 with the 128 x 64 tiles (kept at 128 x 128). The device returns at
# most 8 files a call: the last ShareGPT JSONs did not come back.
# Writes JSON and logs under $OUT (default ./out). MODEL_DIR defaults to /tmp/llama3-8b (made on
# the GPU if missing). Never wait on `pgrep -f <word>` where <word> is in this command line:
# it matches the shell running it (2026-12-02 lost 400 s of device time that way).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
model=${MODEL_DIR:-/tmp/llama3-8b}
export TRITON_INTERPRET=0
mkdir -p /tmp/rl && ln -sfn "$PWD" /tmp/rl/raylight   # the checkout is the `raylight` package
export PYTHONPATH=/tmp/rl:${PYTHONPATH:-}

if [ ! -f "$model/config.json" ]; then
  python3 -c "import sys; from raylight.engine.modelgen.make_model import make_model; \
make_model(None, 'llama3-8b', sys.argv[1], seed=0, dtype='bfloat16', device='cuda', \
progress=False)" "$model" || { echo "make-model failed"; exit 1; }
fi
echo "model ready after ${SECONDS} s"

timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" -m gpu \
  tests/test_cuda_graphs.py 2>&1 | tail -8 | tee "$out/pytest_gpu.txt"
echo "tests done after ${SECONDS} s"

bench() {  # name, then gpu_bench arguments
  local name=$1
  shift
  timeout 150 python3 -m raylight.benchmarks.gpu_bench --model "$model" --out "$out/$name.json" "$@" \
    2>&1 | grep -E "tpot_b1|ttft_1024|sharegpt_out|latency trial|rror" | sed "s/^/$name: /" \
    | tee -a "$out/summary.txt"
}
bench latency_plain --sections ceilings,latency --time-budget-s 90
bench latency_fused --sections latency --time-budget-s 90 --engine-opt fuse_decode_layers=true
echo "latency done after ${SECONDS} s"

timeout 120 python3 -m raylight.benchmarks.profile_decode --model "$model" --batches 1,8 --steps 20 \
  --engine-opt fuse_decode_layers=true --out "$out/profile_decode_fused.json" 2>&1 | tail -28
echo "profile done after ${SECONDS} s"

bench sharegpt_now --sections sharegpt --time-budget-s 120
cp engine/model_runner.py /tmp/model_runner.py.orig
sed -i 's/num_decodes=0 if batch.decode_only else batch.num_leading_decodes/num_decodes=0/' \
  engine/model_runner.py
grep -q "num_decodes=0,$" engine/model_runner.py && \
  bench sharegpt_no_split --sections sharegpt --time-budget-s 120
cp /tmp/model_runner.py.orig engine/model_runner.py
cp kernels/prefill_attention.py /tmp/prefill_attention.py.orig
sed -i 's/return (128, 64, 4, 4) if max_q_len >= 4096 else (128, 128, 8, 3)/return 128, 64, 4, 4/' \
  kernels/prefill_attention.py
grep -q "return 128, 64, 4, 4" kernels/prefill_attention.py && \
  bench sharegpt_tiles_128x64 --sections sharegpt --time-budget-s 120
cp /tmp/prefill_attention.py.orig kernels/prefill_attention.py
echo "all done after ${SECONDS} s"

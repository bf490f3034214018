#!/usr/bin/env bash
# One device call (about 3 minutes on an H200): the prefill kernel's conditional rescaling
# (prefill_attention(lazy_rescale=True)) against the plain kernel. GPU prefill tests (both
# ways, a large-score fp16 case included), then kernel_sweep at 1k / 4k / 16k tokens, bf16 and
# FP8 pools, the tile settings in use and their neighbours, each with and without it.
# Writes pytest_prefill.txt and prefill_sweep.json under $OUT (default ./out).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
export TRITON_INTERPRET=0
mkdir -p /tmp/rl && ln -sfn "$PWD" /tmp/rl/raylight   # the checkout is the `raylight` package
export PYTHONPATH=/tmp/rl:${PYTHONPATH:-}
timeout 180 python3 -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" -m gpu \
  tests/test_kernels_prefill_attention.py 2>&1 | tail -15 | tee "$out/pytest_prefill.txt"
echo "tests done after ${SECONDS} s"
v="128,64,4,4,1,0;128,64,4,4,1,1;128,64,4,3,1,0;128,64,4,3,1,1;128,128,8,3,1,0;128,128,8,3,1,1"
v="$v;128,128,8,2,1,1;128,64,8,3,1,1;256,64,8,3,1,1;128,128,4,3,1,1"
timeout 200 python3 -m raylight.benchmarks.kernel_sweep --sections prefill \
  --kv-dtypes bfloat16,float8_e4m3fn --prefill-lens 1024,4096,16384 --prefill-variants "$v" \
  --out "$out/prefill_sweep.json" 2>&1 | grep -E "ms|rror" | tail -80
echo "all done after ${SECONDS} s"

#!/usr/bin/env bash
# The issue-4 GPU benchmark as one device-machine call (at most 10 minutes in all):
#   1. a random-weight Llama-3.1-8B-shaped bf16 model made on the GPU (kept if already there);
#   2. python -m raylight.benchmarks.gpu_bench on it, within the time left, interrupted (SIGINT:
#      it still writes its JSON, plot and table) if it overruns.
# Writes <device>-<date>-gpu-bench.{json,png} and gpu_bench.log under $OUT (default ./out).
# Extra arguments go to gpu_bench, e.g.:
#   bash benchmarks/gpu_bench.sh --engine-opt attention_backend=triton
#   BUDGET=300 bash benchmarks/gpu_bench.sh --sections ceilings,kernels,latency
# Environment: MODEL_DIR (default /tmp/llama3-8b), BUDGET (seconds for gpu_bench, default 480),
# CALL_LIMIT (seconds the whole call may take, default 590), PYTHON (default python3);
# RL_LINK_DIR (default /tmp/rl); PRESET / MAKE_DEVICE (default llama3-8b / cuda) only for a
# CPU dry run of this script.
set -uo pipefail
export OUT=${OUT:-out}
out=$OUT
mkdir -p "$out"
model=${MODEL_DIR:-/tmp/llama3-8b}
budget=${BUDGET:-480}
limit=${CALL_LIMIT:-590}
# The Triton interpreter is for the CPU machine only (kept there for a dry run of this script).
if command -v nvidia-smi >/dev/null; then unset TRITON_INTERPRET; fi
link=${RL_LINK_DIR:-/tmp/rl}   # the checkout is the `raylight` package (it is not installed)
mkdir -p "$link" && ln -sfn "$PWD" "$link/raylight"
export PYTHONPATH=$link:${PYTHONPATH:-}
# Not the working directory (the checkout root): its kernels/ would shadow Hugging Face's
# `kernels` package, which transformers >= 5.25 imports.
export PYTHONSAFEPATH=1
py=${PYTHON:-python3}

# `raylight make-model --preset llama3-8b --device cuda --out $model`, called as a function (as
# device_check.sh does) so that nothing beyond torch + transformers is imported.
if [ ! -f "$model/config.json" ]; then
  echo "making $model (preset ${PRESET:-llama3-8b}) ..."
  "$py" -c "import sys; from raylight.engine.modelgen.make_model import make_model; \
make_model(None, sys.argv[1], sys.argv[2], seed=0, dtype='bfloat16', device=sys.argv[3], \
progress=False)" "${PRESET:-llama3-8b}" "$model" "${MAKE_DEVICE:-cuda}" \
    || { echo "make-model failed"; exit 1; }
fi
echo "model ready after ${SECONDS} s"

left=$((limit - SECONDS))
# Keep 40 s between the budget and the hard stop: model loads, HF's run and the plot may
# overrun their estimates.
if [ $((left - 40)) -lt "$budget" ]; then budget=$((left - 40)); fi
echo "gpu_bench: budget ${budget} s, hard stop after ${left} s"
timeout -k 15 -s INT "$left" "$py" -u -m raylight.benchmarks.gpu_bench --model "$model" \
  --time-budget-s "$budget" "$@" 2>&1 | grep --line-buffered -v "it/s\]" | tee "$out/gpu_bench.log"
echo "exit ${PIPESTATUS[0]} after ${SECONDS} s"

#!/usr/bin/env bash
# One device-machine call: the engine's CUDA path end to end, and the host-overhead benchmark.
#   1. the HF-comparison and API tests with device=auto (= cuda there), float32;
#   2. host overhead per decode step with fixed logits on the GPU (batch 1 / 64 / 256), and the
#      part of it async scheduling leaves exposed;
#   3. a Llama-3.1-8B-shaped random model made on the GPU, loaded in bf16 with the KV pool sized
#      from free memory, and a short generation.
# Writes JSON and logs under $OUT (default ./out).
set -uo pipefail
out=${OUT:-out}
mkdir -p "$out"
export PYTHONPATH=/tmp/rl:${PYTHONPATH:-}
# Not the working directory (the checkout root): its kernels/ would shadow Hugging Face's
# `kernels` package, which transformers >= 5.25 imports.
export PYTHONSAFEPATH=1
# Real Triton kernels on the GPU (tests/conftest.py defaults to the interpreter otherwise).
export TRITON_INTERPRET=0
mkdir -p /tmp/rl && ln -sfn "$PWD" /tmp/rl/raylight   # the checkout is the `raylight` package
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', \
triton.__version__, 'transformers', transformers.__version__)" | tee "$out/versions.txt"

python3 -m pytest -q -p no:cacheprovider tests/test_engine_hf.py tests/test_llm_api.py \
  tests/test_async_engine.py tests/test_sampler.py tests/test_engine_fp8_kv.py \
  -k "not tensor_parallel" \
  2>&1 | tail -5 | tee "$out/pytest.txt"

# The GPU-only tests: CUDA-graph decode vs eager, Triton vs torch path, KV sizing, kernels.
python3 -m pytest -q -p no:cacheprovider -o addopts="--import-mode=importlib" -m gpu \
  tests/test_cuda_graphs.py tests/test_kernels_*.py 2>&1 | tail -15 | tee "$out/pytest_gpu.txt"

python3 -m raylight.benchmarks.host_overhead --device cuda --steps 300 \
  --out "$out/host_overhead.json" 2>&1 | tail -8
python3 -m raylight.benchmarks.host_overhead --device cuda --steps 300 --cuda-graphs \
  --out "$out/host_overhead_graphs.json" 2>&1 | tail -8
# What async scheduling hides: step time - 5 ms of device work, with and without overlap.
python3 -m raylight.benchmarks.exposed_host --device cuda --gpu-busy-ms 5 --steps 200 \
  --cuda-graphs --out "$out/exposed_host.json" 2>&1 | tail -14

python3 - "$out" <<'PY' 2>&1 | grep -v "it/s\]" | tail -20
import json, sys, time, torch
from raylight.engine.modelgen.make_model import make_model
from raylight import LLM, SamplingParams
out = sys.argv[1]
t = time.perf_counter()
d = make_model("llama", "llama3-8b", "/tmp/llama3-8b", seed=0, dtype="bfloat16", device="cuda",
               progress=False)
made = time.perf_counter() - t
t = time.perf_counter()
llm = LLM(d, max_model_len=4096, progress=False)
loaded = time.perf_counter() - t
params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
llm.generate("warm up", params)
torch.cuda.synchronize(); t = time.perf_counter()
res = llm.generate(["The capital of France is"] * 8, params)
gen = time.perf_counter() - t
runner = llm.core.runner
prof = getattr(runner, "memory_profile", None)
report = {"make_model_s": made, "load_s": loaded, "kv_slots": runner.num_slots,
          "attention_backend": llm.core.config.attention_backend,
          "graph_buckets": runner.graphs.sizes if runner.graphs else None,
          "graph_pool_bytes": runner.graphs.pool_bytes if runner.graphs else None,
          "memory_profile": repr(prof),
          "gen_8x32_s": gen, "text": res[0].outputs[0].text[:80],
          "same_across_batch": len({tuple(r.outputs[0].token_ids) for r in res}) == 1}
print(json.dumps(report, indent=1))
json.dump(report, open(f"{out}/llama3_8b_smoke.json", "w"), indent=1)
PY

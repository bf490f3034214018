"""Raylight engine runs for gpu_bench: requests driven through `EngineCore.step` with a deadline.

Prompts are random token ids, distinct per request and per run, so the prefix cache finds
nothing to reuse; sampling is greedy with `ignore_eos`, so outputs have the lengths asked for.
At the deadline the run stops stepping, aborts what is left and reports what it did in the time
it had (throughput over the window, counts of submitted and completed requests).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from raylight.benchmarks.gpu_bench_device import free_memory
from raylight.engine.engine_core import EngineCore
from raylight.engine.sampling_params import SamplingParams


def make_prompts(lens: Sequence[int], vocab_size: int, seed: int) -> list[list[int]]:
    """Random ids in [1, vocab_size // 2): clear of the special tokens at the top of the vocab."""
    rng = np.random.default_rng(seed)
    high = max(2, vocab_size // 2)
    return [rng.integers(1, high, int(n)).tolist() for n in lens]


def sharegpt_lengths(n: int, max_model_len: int, seed: int) -> tuple[list[int], list[int]]:
    """The simulator's ShareGPT-like mix (prompts lognormal mean 250, outputs mean 200), fitted
    into max_model_len: prompts to at most half of it, outputs to the rest."""
    from raylight.engine.sim.workloads import sharegpt

    w = sharegpt(n, rate=1.0, seed=seed)
    prompts = np.clip(w.prompt_len, 1, max_model_len // 2)
    outputs = np.clip(w.output_len, 1, max_model_len - 1 - prompts)
    return prompts.tolist(), outputs.tolist()


def _summarize(
    lat: dict[str, list[float]], elapsed: float, out_tokens: int, prompt_tokens: int
) -> dict[str, float | None]:
    def med(xs: list[float]) -> float | None:
        return statistics.median(xs) * 1e3 if xs else None

    def p90(xs: list[float]) -> float | None:
        return float(np.percentile(xs, 90)) * 1e3 if xs else None

    return {"elapsed_s": elapsed, "output_tokens": out_tokens, "prompt_tokens": prompt_tokens,
            "out_tok_s": out_tokens / elapsed if elapsed > 0 else None,
            "total_tok_s": (out_tokens + prompt_tokens) / elapsed if elapsed > 0 else None,
            "ttft_median_ms": med(lat["ttft"]), "ttft_p90_ms": p90(lat["ttft"]),
            "tpot_median_ms": med(lat["tpot"]), "tpot_p90_ms": p90(lat["tpot"])}  # fmt: skip


def run_requests(
    core: EngineCore,
    prompts: Sequence[list[int]],
    output_lens: Sequence[int],
    deadline: float,
    tag: str,
) -> dict[str, object]:
    """Adds every request at once and steps until all finish or `deadline` (perf_counter)."""
    reqs = [
        core.make_request(f"{tag}-{i}", p, SamplingParams(temperature=0.0, max_tokens=int(o),
                                                          ignore_eos=True))  # fmt: skip
        for i, (p, o) in enumerate(zip(prompts, output_lens))
    ]
    first: dict[str, float] = {}
    done: dict[str, float] = {}
    n_out = dict.fromkeys((r.request_id for r in reqs), 0)
    t0 = time.perf_counter()
    for r in reqs:
        core.add(r)
    truncated = False
    while core.has_unfinished:
        if time.perf_counter() > deadline:
            truncated = True
            break
        for d in core.step():
            now = time.perf_counter()
            if d.new_token_ids:
                n_out[d.request_id] += len(d.new_token_ids)
                first.setdefault(d.request_id, now)
            if d.finish_reason is not None:
                done[d.request_id] = now
    elapsed = time.perf_counter() - t0
    prompt_tokens = sum(
        len(r.prompt_token_ids) if r.request_id in done
        else min(r.num_computed_tokens, len(r.prompt_token_ids))
        for r in reqs
    )  # fmt: skip
    for r in reqs:
        if r.request_id not in done:
            core.abort(r.request_id)
    lat: dict[str, list[float]] = {"ttft": [first[k] - t0 for k in first], "tpot": []}
    for k, t_done in done.items():
        if n_out[k] > 1:
            lat["tpot"].append((t_done - first[k]) / (n_out[k] - 1))
    return {"submitted": len(reqs), "completed": len(done), "truncated": truncated,
            **_summarize(lat, elapsed, sum(n_out.values()), prompt_tokens)}  # fmt: skip


def latency(
    core: EngineCore, vocab: int, prompt_len: int, output_len: int, trials: int, deadline: float
) -> dict[str, object]:
    """Batch 1: TTFT = add to first token; TPOT = (total - TTFT) / (output_len - 1). One
    discarded warm-up at the full prompt length, then up to `trials` runs (medians)."""
    warm = run_requests(core, make_prompts([prompt_len], vocab, 1000), [4], deadline, "lat-warm")
    runs = []
    for t in range(trials):
        left = deadline - time.perf_counter()
        if runs and left < 1.5 * runs[-1]["elapsed_s"]:
            break
        prompt = make_prompts([prompt_len], vocab, 1001 + t)
        run = run_requests(core, prompt, [output_len], deadline, f"lat-{t}")
        if run["completed"] != 1:
            break
        runs.append(run)
        print(f"  latency trial {t}: ttft {run['ttft_median_ms']:.1f} ms, "
              f"tpot {run['tpot_median_ms']:.2f} ms", flush=True)  # fmt: skip
    if not runs:
        raise RuntimeError("no latency trial finished before the section's deadline")
    return {"prompt_len": prompt_len, "output_len": output_len, "trials": len(runs),
            "warmup_elapsed_s": warm["elapsed_s"],
            "ttft_ms": statistics.median(r["ttft_median_ms"] for r in runs),
            "tpot_ms": statistics.median(r["tpot_median_ms"] for r in runs),
            "runs": runs}  # fmt: skip


class EngineHolder:
    """At most one raylight LLM at a time, loaded on first use and warmed up; `release` frees
    its weights and KV pool before something else (HF transformers) needs the memory."""

    def __init__(self, model_dir: Path, options: dict[str, object], device: torch.device) -> None:
        self.model_dir = model_dir
        self.options = options
        self.device = device
        self.llm = None
        self.loads: list[dict[str, object]] = []
        self.load_error: str | None = None  # a failed load is not retried by later sections

    def core(self) -> EngineCore:
        if self.load_error is not None:
            raise RuntimeError(f"the engine failed to load earlier: {self.load_error}")
        if self.llm is None:
            from raylight.engine.llm import LLM

            free_memory(self.device)
            t0 = time.perf_counter()
            try:
                self.llm = LLM(self.model_dir, progress=False, **self.options)
            except Exception as e:
                self.load_error = repr(e)
                raise
            load_s = time.perf_counter() - t0
            config = self.llm.core.config
            info = {"load_s": load_s, "warmup_s": self._warm_up(self.llm.core),
                    "num_kv_slots": self.llm.core.runner.num_slots,
                    "attention_backend": config.attention_backend,  # resolved ("auto" is not)
                    "enforce_eager": config.enforce_eager,
                    "async_scheduling": config.async_scheduling,
                    "kv_cache_dtype": str(config.kv_cache_dtype)}  # fmt: skip
            self.loads.append(info)
            print(f"  engine loaded in {load_s:.1f} s, warm-up {info['warmup_s']:.1f} s, "
                  f"{info['num_kv_slots']} KV slots", flush=True)  # fmt: skip
        return self.llm.core

    def _warm_up(self, core: EngineCore) -> float:
        """A few short requests through every step kind (prefill, mixed, decode)."""
        sched = core.config.scheduler
        n, length = min(8, sched.max_num_seqs), max(1, min(64, sched.max_model_len // 4))
        prompts = make_prompts([length] * n, core.config.arch.vocab_size, 999 + len(self.loads))
        tag = f"warm{len(self.loads)}"
        run = run_requests(core, prompts, [length // 2 + 1] * n, time.perf_counter() + 300, tag)
        return run["elapsed_s"]

    def release(self) -> None:
        self.llm = None
        free_memory(self.device)

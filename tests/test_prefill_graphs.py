"""Prefill CUDA graphs' padding on the CPU: bucket choice, the static-buffer layout, and the
padded forward pass a graph captures (engine/prefill_graphs.py), run eagerly with the Triton
kernels in the interpreter, against the unpadded eager step. Graph capture and replay
themselves: tests/test_cuda_graphs.py (GPU)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from raylight.engine.config import EngineOptions
from raylight.engine.llm import create_engine_core
from raylight.engine.prefill_graphs import (
    fill_inputs,
    forward_padded,
    request_buckets,
    token_buckets,
)
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import shared_prefix_prompts


@pytest.mark.parametrize("max_tokens", [1, 15, 16, 100, 256, 257, 2048, 3000])
def test_token_buckets_cover_every_size_with_bounded_padding(max_tokens: int) -> None:
    sizes = token_buckets(max_tokens)
    assert sizes == sorted(set(sizes)) and sizes[-1] == max_tokens
    for t in range(1, max_tokens + 1):
        bucket = next(s for s in sizes if s >= t)
        assert bucket <= max(16, 2 * t)
        if t > 256:
            assert bucket <= 1.5 * t


def test_request_buckets() -> None:
    assert request_buckets(1) == [1]
    assert request_buckets(3) == [1, 3]
    assert request_buckets(16) == [1, 4, 16]
    assert request_buckets(10) == [1, 4, 10]


def _core(model: Path, **opts: object):
    options = EngineOptions(dtype="float32", device="cpu", attention_backend="triton",
                            max_model_len=256, num_kv_slots=2048, max_num_seqs=8,
                            **opts)  # fmt: skip
    return create_engine_core(model, options, progress=False)


def _expected_buffers(batch, reqs: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The layout written out from the module's rules, one field at a time."""
    b, t = len(batch.req_rows), batch.num_tokens
    tok = np.zeros((4, tokens), dtype=np.int64)
    tok[0, :t], tok[1, :t] = batch.input_ids, batch.positions
    tok[2, :t], tok[3, :t] = batch.out_slots, batch.token_rows
    req = np.zeros((3, reqs + 1), dtype=np.int64)
    req[0] = [int(batch.cu_seqlens_q[min(i, b)]) for i in range(reqs + 1)]
    req[1, :b], req[2, :b] = batch.seq_lens_kv, batch.req_rows
    return tok, req


def test_fill_inputs_pads_and_overwrites_a_previous_fill(tiny_models: dict[str, Path]) -> None:
    core = _core(tiny_models["llama"])
    rng = random.Random(0)
    for i, n in enumerate((30, 5, 17)):
        prompt = [rng.randrange(200) for _ in range(n)]
        core.add(core.make_request(str(i), prompt, SamplingParams(max_tokens=3)))
    batch = core.scheduler.schedule()
    assert batch is not None and len(batch.req_rows) == 3 and batch.num_tokens == 52
    tok = np.full((4, 70), 99, dtype=np.int64)  # stale values from a bigger step
    req = np.full((3, 10), 99, dtype=np.int64)
    fill_inputs(tok, req, batch, 4, 64)
    want_tok, want_req = _expected_buffers(batch, 4, 64)
    np.testing.assert_array_equal(tok[:, :64], want_tok)
    np.testing.assert_array_equal(req[0, :5], want_req[0])  # cu_seqlens: reqs + 1 entries
    np.testing.assert_array_equal(req[1:, :4], want_req[1:, :4])  # lens, rows: reqs entries
    fill_inputs(tok, req, None, 8, 70)  # capture: padding only
    assert not tok.any() and not req[0, :9].any() and not req[1:, :8].any()


def _padded_logits(core, batch, reqs: int, tokens: int) -> torch.Tensor:
    runner = core.runner
    tok = np.zeros((4, tokens), dtype=np.int64)
    req = np.zeros((3, reqs + 1), dtype=np.int64)
    fill_inputs(tok, req, batch, reqs, tokens)
    hidden = forward_padded(runner.model, runner.backend, runner.k_caches, runner.v_caches,
                            runner.req_to_token, torch.from_numpy(tok), torch.from_numpy(req),
                            reqs, tokens)  # fmt: skip
    assert hidden.shape[0] == tokens
    return runner.model.compute_logits(hidden[torch.from_numpy(batch.logits_indices)])


@pytest.mark.slow
def test_padded_forward_matches_the_unpadded_step(tiny_models: dict[str, Path]) -> None:
    """Prefill, mixed (decodes + a new prompt) and prefix-cache-hit steps: the real rows of
    the padded pass give the eager step's logits; padding neither reads nor spoils them."""
    core = _core(tiny_models["llama"])
    prompts = shared_prefix_prompts(200, seed=3)
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    arrivals = {0: [0, 7], 1: [1], 3: [2, 6]}  # later prompts hit the cached system prefix
    checked = mixed = 0
    for step in range(12):
        for i in arrivals.get(step, []):
            core.add(core.make_request(str(i), prompts[i], params))
        batch = core.scheduler.schedule()
        if batch is None:
            break
        want = core.runner.forward(batch, eager=True)
        if not batch.decode_only:
            b, t = len(batch.req_rows), batch.num_tokens
            reqs, tokens = b + 1, next(s for s in token_buckets(256) if s >= t + 1)
            # Entries the scheduler wrote for cached prefixes were applied by the eager step.
            got = _padded_logits(core, batch, reqs, tokens)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            checked += 1
            mixed += int((batch.num_new == 1).any())
        ids = want.argmax(-1).tolist()
        for d in core.scheduler.update(batch, ids, None):
            if d.finish_reason is not None:
                del core.requests[d.request_id]
    assert checked >= 3 and mixed >= 1

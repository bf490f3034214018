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
    """The layout written out from the module's rules, lane by lane."""
    b, t = len(batch.req_rows), batch.num_tokens
    q_lens = np.diff(batch.cu_seqlens_q)
    d = int(np.argmax(q_lens != 1)) if (q_lens != 1).any() else b
    lanes_d = reqs if reqs > 1 else 0  # no decode lane for one request
    d = d if lanes_d else 0
    tok = np.zeros((4, tokens), dtype=np.int64)
    tok[0, :t], tok[1, :t] = batch.input_ids, batch.positions
    tok[2, :t], tok[3, :t] = batch.out_slots, batch.token_rows
    lanes = []  # (q_start, q_len, seq_len, row) of the 2 * reqs attention requests
    for i in range(lanes_d):
        lanes.append((i, 1, batch.seq_lens_kv[i], batch.req_rows[i]) if i < d else (d, 0, 0, 0))
    for i in range(d, d + reqs):
        if i < b:
            start = batch.cu_seqlens_q[i]
            lanes.append((start, q_lens[i], batch.seq_lens_kv[i], batch.req_rows[i]))
        else:
            lanes.append((t, 0, 0, 0))
    req = np.zeros((3, len(lanes) + 1), dtype=np.int64)
    req[0, :-1] = [lane[0] for lane in lanes]
    req[0, -1] = t
    req[1, :-1] = [lane[2] for lane in lanes]
    req[2, :-1] = [lane[3] for lane in lanes]
    # every lane's q rows run from its cu entry to the next one
    assert all(req[0, i + 1] - req[0, i] == lanes[i][1] for i in range(len(lanes)))
    return tok, req


def test_fill_inputs_pads_and_overwrites_a_previous_fill(tiny_models: dict[str, Path]) -> None:
    core = _core(tiny_models["llama"])
    rng = random.Random(0)
    for i, n in enumerate((30, 5, 17)):
        prompt = [rng.randrange(200) for _ in range(n)]
        core.add(core.make_request(str(i), prompt, SamplingParams(max_tokens=3)))
    first = core.scheduler.schedule()
    assert first is not None and len(first.req_rows) == 3 and first.num_tokens == 52
    tok = np.full((4, 70), 99, dtype=np.int64)  # stale values from a bigger step
    req = np.full((3, 40), 99, dtype=np.int64)
    mixed = _mixed_batch(core, first)
    for batch, reqs in ((first, 4), (mixed, 4), (mixed, 16)):
        fill_inputs(tok, req, batch, reqs, 64)
        want_tok, want_req = _expected_buffers(batch, reqs, 64)
        np.testing.assert_array_equal(tok[:, :64], want_tok)
        np.testing.assert_array_equal(req[:, : 2 * reqs + 1], want_req)
    one = _single_prompt_batch(core, mixed)
    fill_inputs(tok, req, one, 1, 16)  # one request: prefill lane only
    np.testing.assert_array_equal(req[:, :2], _expected_buffers(one, 1, 16)[1])
    np.testing.assert_array_equal(req[0, :2], [0, one.num_tokens])


def _single_prompt_batch(core, outstanding):
    """After `outstanding` and every earlier request finish, one new prompt alone."""
    batch = outstanding
    while batch is not None:
        result = core.runner.execute(batch)
        for delta in core.scheduler.update(batch, result.token_ids, result.logprobs):
            if delta.finish_reason is not None:
                del core.requests[delta.request_id]
        batch = core.scheduler.schedule()
    core.add(core.make_request("alone", list(range(20, 31)), SamplingParams(max_tokens=3)))
    batch = core.scheduler.schedule()
    assert batch is not None and len(batch.req_rows) == 1 and batch.num_tokens == 11
    return batch


def _mixed_batch(core, previous):
    """The step after `previous` with one more prompt: its decodes come first."""
    result = core.runner.execute(previous)
    core.scheduler.update(previous, result.token_ids, result.logprobs)
    core.add(core.make_request("late", list(range(10, 19)), SamplingParams(max_tokens=3)))
    batch = core.scheduler.schedule()
    assert batch is not None and batch.num_leading_decodes == 3 and len(batch.req_rows) == 4
    return batch


def _padded_logits(core, batch, reqs: int, tokens: int) -> torch.Tensor:
    runner = core.runner
    tok = np.zeros((4, tokens), dtype=np.int64)
    req = np.zeros((3, 2 * reqs + 1), dtype=np.int64)
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
            tokens = next(s for s in token_buckets(256) if s >= t + 1)
            # Entries the scheduler wrote for cached prefixes were applied by the eager step.
            for reqs in (1, 2) if b == 1 else (b + 1,):  # one request: no decode lane
                got = _padded_logits(core, batch, reqs, tokens)
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            checked += 1
            mixed += int((batch.num_new == 1).any())
        ids = want.argmax(-1).tolist()
        for d in core.scheduler.update(batch, ids, None):
            if d.finish_reason is not None:
                del core.requests[d.request_id]
    assert checked >= 3 and mixed >= 1

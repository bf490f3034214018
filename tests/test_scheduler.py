"""Scheduler against a brute-force oracle: a fake model whose next token is a hash of the whole
sequence, computed from what the KV pool holds. Any lost, stale or misplaced KV entry changes the
tokens, so matching the oracle proves chunking, batching and preemption kept the KV intact."""

from __future__ import annotations

import random

import numpy as np
import pytest

from raylight.engine.admission import make_policy
from raylight.engine.config import SchedulerConfig
from raylight.engine.kv_pool import SlotAllocator
from raylight.engine.request import Request
from raylight.engine.sampling_params import SamplingParams
from raylight.engine.scheduler import Scheduler

VOCAB = 50
EOS = 0


def next_token(seq: list[int]) -> int:
    h = 17
    for t in seq:
        h = (h * 31 + t + 7) % 1_000_003
    return 1 + h % (VOCAB - 1)  # never EOS: lengths are set by max_tokens


def oracle(prompt: list[int], max_tokens: int) -> list[int]:
    seq, out = list(prompt), []
    for _ in range(max_tokens):
        t = next_token(seq)
        out.append(t)
        seq.append(t)
    return out


class FakeKV:
    """Slot -> token id, written by each step as a real model writes K/V."""

    def __init__(self, num_slots: int) -> None:
        self.tokens = np.full(num_slots, -1, dtype=np.int64)

    def run(self, sched: Scheduler, batch) -> list[int]:
        assert np.all(batch.out_slots > 0), "a real token was written to the dummy slot"
        assert len(np.unique(batch.out_slots)) == len(batch.out_slots)
        self.tokens[batch.out_slots] = batch.input_ids
        sampled = []
        for i in batch.sample_indices.tolist():
            row, n_kv = int(batch.req_rows[i]), int(batch.seq_lens_kv[i])
            seq = self.tokens[sched.table.table[row, :n_kv]].tolist()
            assert -1 not in seq
            sampled.append(next_token(seq))
        return sampled


def make_request(rid: str, prompt: list[int], max_tokens: int) -> Request:
    return Request(
        request_id=rid,
        prompt_token_ids=prompt,
        params=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        max_tokens=max_tokens,
        sample_seed=0,
        stop_token_ids=frozenset({EOS}),
    )


def run(
    reqs_by_step: dict[int, list[Request]],
    num_slots: int,
    policy: str,
    max_seqs: int = 8,
    budget: int = 32,
    max_len: int = 128,
) -> Scheduler:
    alloc = SlotAllocator(num_slots)
    config = SchedulerConfig(max_seqs, budget, max_len, policy)
    sched = Scheduler(config, alloc, make_policy(policy))
    kv = FakeKV(num_slots)
    step = 0
    while sched.has_unfinished or step <= max(reqs_by_step):
        for r in reqs_by_step.get(step, []):
            sched.add(r)
        batch = sched.schedule()
        if batch is not None:
            assert batch.num_tokens <= budget
            assert len(batch.requests) <= max_seqs
            sched.update(batch, kv.run(sched, batch))
        step += 1
        assert step < 10_000, "scheduler made no progress"
    assert alloc.num_free == alloc.capacity, "KV slots leaked"
    assert sched.table.num_free_rows == max_seqs
    return sched


@pytest.mark.parametrize("policy", ["conservative", "aggressive"])
@pytest.mark.parametrize("seed", range(5))
def test_tokens_match_oracle_under_chunking_and_pressure(policy: str, seed: int) -> None:
    rng = random.Random(seed)
    reqs_by_step: dict[int, list[Request]] = {}
    all_reqs = []
    for i in range(20):
        prompt = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 60))]
        r = make_request(str(i), prompt, rng.randint(1, 40))
        reqs_by_step.setdefault(rng.randint(0, 30), []).append(r)
        all_reqs.append(r)
    # A pool of 128 tokens (= max_model_len) cannot hold all requests: forces waiting/preemption.
    sched = run(reqs_by_step, num_slots=129, policy=policy)
    for r in all_reqs:
        assert r.output_token_ids == oracle(r.prompt_token_ids, r.max_tokens), r.request_id
        assert r.finish_reason is not None and r.finish_reason.value == "length"
    if policy == "conservative":
        assert sched.num_preemptions == 0


def test_aggressive_policy_preempts_and_recovers() -> None:
    reqs = [make_request(str(i), [1 + i] * 30, 60) for i in range(4)]
    sched = run({0: reqs}, num_slots=100, policy="aggressive", max_len=100)
    assert sched.num_preemptions > 0
    for r in reqs:
        assert r.output_token_ids == oracle(r.prompt_token_ids, 60)


def test_abort_frees_everything_between_steps() -> None:
    alloc = SlotAllocator(200)
    sched = Scheduler(SchedulerConfig(4, 16, 100, "aggressive"), alloc, make_policy("aggressive"))
    kv = FakeKV(200)
    reqs = [make_request(str(i), [3] * 20, 50) for i in range(6)]
    for r in reqs:
        sched.add(r)
    for _ in range(5):
        batch = sched.schedule()
        sched.update(batch, kv.run(sched, batch))
    running = [r for r in reqs if r.row >= 0]
    waiting = [r for r in reqs if r.row < 0]
    assert running and waiting
    for r in reqs:
        sched.abort(r)
        assert r.finish_reason is not None and r.finish_reason.value == "abort"
    assert not sched.has_unfinished
    assert alloc.num_free == alloc.capacity


def test_stop_token_ends_request_after_min_tokens() -> None:
    alloc = SlotAllocator(64)
    config = SchedulerConfig(4, 16, 60, "conservative")
    sched = Scheduler(config, alloc, make_policy("conservative"))
    r = make_request("a", [5, 6], 10)
    sched.add(r)
    batch = sched.schedule()
    deltas = sched.update(batch, [EOS])
    assert deltas[0].finish_reason == "stop" and r.output_token_ids == [EOS]
    assert alloc.num_free == alloc.capacity

"""Scheduler against a brute-force oracle: a fake model whose next token is a hash of the whole
sequence, computed from what the KV pool holds. Any lost, stale or misplaced KV entry changes the
tokens, so matching the oracle proves chunking, batching and preemption kept the KV intact."""

from __future__ import annotations

import random

import numpy as np
import pytest

from raylight.engine.admission import make_policy
from raylight.engine.batch import Batch, RequestDelta
from raylight.engine.config import SchedulerConfig
from raylight.engine.kv_pool import SlotAllocator
from raylight.engine.prefix_cache import PrefixCache, RadixNode
from raylight.engine.prefix_cache_check import check_invariants
from raylight.engine.request import PENDING, Request
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


# ---- with a prefix cache ----------------------------------------------------------------------


class CountingCache(PrefixCache):
    """A prefix cache that counts the slots it evicted (so tests can insist eviction happened)."""

    def __init__(self, allocator: SlotAllocator) -> None:
        super().__init__(allocator)
        self.num_evicted = 0

    def evict(self, num_slots: int, partial: bool = False) -> int:
        freed = super().evict(num_slots, partial)
        self.num_evicted += freed
        return freed


class DeviceKV(FakeKV):
    """FakeKV that, like the model runner, keeps its own ReqToToken table updated only from what
    each batch carries (its extra table entries, then its new tokens), and reads through it."""

    def __init__(self, num_slots: int, table_shape: tuple[int, int]) -> None:
        super().__init__(num_slots)
        self.table = np.zeros(table_shape, dtype=np.int64)

    def run(self, sched: Scheduler, batch, prev_sampled: list[int] | None = None) -> list[int]:
        """`prev_sampled`: what the batch before sampled, which a batch scheduled ahead of its
        update reads at its `pending_lanes` (as the runner does on the device)."""
        entries = set(zip(batch.table_rows.tolist(), batch.table_positions.tolist()))
        assert len(entries) == len(batch.table_rows), "an extra table entry is repeated"
        assert not entries & set(zip(batch.token_rows.tolist(), batch.positions.tolist()))
        self.table[batch.table_rows, batch.table_positions] = batch.table_slots
        self.table[batch.token_rows, batch.positions] = batch.out_slots
        input_ids = batch.input_ids.copy()
        if len(batch.pending_lanes):
            assert prev_sampled is not None
            input_ids[batch.pending_lanes] = np.asarray(prev_sampled)[batch.pending_rows]
        self.tokens[batch.out_slots] = input_ids
        sampled = []
        for i, r in enumerate(batch.requests):
            row, n_kv = int(batch.req_rows[i]), int(batch.seq_lens_kv[i])
            assert (self.table[row, :n_kv] == sched.table.table[row, :n_kv]).all(), "device table"
            assert r.num_computed_tokens == n_kv  # schedule() reserved this batch's K/V
        for i in batch.sample_indices.tolist():
            row, n_kv = int(batch.req_rows[i]), int(batch.seq_lens_kv[i])
            seq = self.tokens[self.table[row, :n_kv]].tolist()
            host = batch.requests[i].token_ids_slice(0, n_kv)  # PENDING: not known on the host
            assert all(h in (t, PENDING) for h, t in zip(host, seq)), "a slot holds a wrong token"
            sampled.append(next_token(seq))
        return sampled


def path_slots(node: RadixNode) -> np.ndarray:
    """The slots of the tree path root..node."""
    chunks = []
    while node.parent is not None:
        chunks.append(node.slots)
        node = node.parent
    return np.concatenate(chunks[::-1]) if chunks else np.zeros(0, np.int64)


def check_cache_accounting(sched: Scheduler) -> None:
    """Tree invariants, the no-leak rule, and every running request's borrowed prefix."""
    cache = sched.cache
    assert cache is not None
    check_invariants(cache)
    own = sum(r.num_computed_tokens - r.num_prefix for r in sched.running)
    assert sched.allocator.num_used == cache.num_cached_slots + own, "slots leaked"
    locks = sum(n.locks for n in cache.nodes())
    held = 0
    for r in sched.running:
        assert r.prefix_node is not None
        assert (path_slots(r.prefix_node) == sched.table.table[r.row, : r.num_prefix]).all()
        held += r.prefix_node is not cache.root
    assert locks == held, "lock count differs from the running requests' prefixes"
    for r in sched.waiting:
        assert r.prefix_node is None and r.num_computed_tokens == 0


class CacheRun:
    """Drives a scheduler with a prefix cache step by step against the oracle."""

    def __init__(
        self, num_slots: int, policy: str, max_seqs: int, budget: int, max_len: int,
        overlap: bool = False,
    ) -> None:  # fmt: skip
        """`overlap`: each step schedules the next batch before updating the last (as
        EngineCore does with async scheduling)."""
        self.overlap = overlap
        self.launched: tuple[Batch, list[int]] | None = None
        self.num_ahead = 0
        self.alloc = SlotAllocator(num_slots)
        self.cache = CountingCache(self.alloc)
        config = SchedulerConfig(max_seqs, budget, max_len, policy)
        self.sched = Scheduler(config, self.alloc, make_policy(policy), self.cache)
        self.kv = DeviceKV(num_slots, self.sched.table.table.shape)
        self.budget, self.max_seqs = budget, max_seqs
        self.first_delta_cached: dict[str, int | None] = {}

    def step(self) -> list[RequestDelta]:
        deltas = self._step_overlapped() if self.overlap else self._step()
        for d in deltas:
            if d.request_id not in self.first_delta_cached:
                self.first_delta_cached[d.request_id] = d.num_cached_tokens
            else:
                assert d.num_cached_tokens is None, "cached tokens reported twice"
        check_cache_accounting(self.sched)
        return deltas

    def _step(self) -> list[RequestDelta]:
        batch = self.sched.schedule()
        if batch is None:
            return []
        assert batch.num_tokens <= self.budget and len(batch.requests) <= self.max_seqs
        return self.sched.update(batch, self.kv.run(self.sched, batch))

    def _step_overlapped(self) -> list[RequestDelta]:
        running = self.launched
        if running is None:
            batch = self.sched.schedule()
            if batch is None:
                return []
            running = (batch, self.kv.run(self.sched, batch))
        self.launched = None
        ahead = self.sched.schedule(ahead=True)
        if ahead is not None:
            assert ahead.num_tokens <= self.budget and len(ahead.requests) <= self.max_seqs
            self.launched = (ahead, self.kv.run(self.sched, ahead, running[1]))
            self.num_ahead += 1
        return self.sched.update(*running)

    @property
    def has_unfinished(self) -> bool:
        return self.sched.has_unfinished or self.launched is not None

    def drain(self) -> None:
        """Checks the end state: only the tree holds slots, all evictable, and evicting them all
        empties the pool."""
        assert not self.sched.has_unfinished
        assert self.sched.table.num_free_rows == self.max_seqs
        assert self.alloc.num_used == self.cache.num_cached_slots
        assert self.cache.num_evictable_slots == self.cache.num_cached_slots
        assert self.sched.num_used_slots == 0  # what a load report shows: the cache is free
        self.cache.evict(self.alloc.capacity)
        assert self.alloc.num_free == self.alloc.capacity and self.cache.num_nodes == 0


def random_workload(rng: random.Random, max_len: int) -> tuple[list[list[int]], list[int]]:
    """Prompts that share system prefixes; some repeat (samples of one prompt)."""
    systems = [[rng.randrange(1, VOCAB) for _ in range(rng.randint(5, 40))] for _ in range(3)]
    prompts: list[list[int]] = []
    for _ in range(16):
        if prompts and rng.random() < 0.25:
            prompts.append(list(rng.choice(prompts)))  # another sample of an earlier prompt
            continue
        suffix = [rng.randrange(1, VOCAB) for _ in range(rng.randint(0, 20))]
        prompt = (rng.choice(systems) if rng.random() < 0.8 else []) + suffix
        prompts.append(prompt or [1])
    max_tokens = [rng.randint(1, min(30, max_len - len(p) - 12)) for p in prompts]
    return prompts, max_tokens


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("policy", ["conservative", "aggressive"])
@pytest.mark.parametrize("seed", range(6))
def test_prefix_cache_matches_oracle(policy: str, seed: int, overlap: bool) -> None:
    """Shared prefixes, samples of one prompt (same and different steps), multi-turn follow-ups,
    chunked prefill, aborts, and a pool small enough to force eviction (and preemption); with
    `overlap`, every batch is scheduled ahead of the last one's update where it can be."""
    rng = random.Random(seed)
    max_len = 128
    num_slots, budget = rng.choice([129, 160, 400]), rng.choice([7, 16, 64])
    run_ = CacheRun(num_slots, policy, 6, budget, max_len, overlap)
    prompts, max_tokens = random_workload(rng, max_len)
    arrivals = sorted(rng.randint(0, 25) for _ in prompts)
    pending = [
        (at, f"r{i}", p, m) for i, (at, p, m) in enumerate(zip(arrivals, prompts, max_tokens))
    ]
    reqs: dict[str, Request] = {}
    aborted: set[str] = set()
    follow_ups: list[tuple[str, Request]] = []  # (turn request id, the turn it follows)
    step = 0
    while pending or run_.has_unfinished:
        while pending and pending[0][0] <= step:
            _, rid, p, m = pending.pop(0)
            reqs[rid] = make_request(rid, p, m)
            run_.sched.add(reqs[rid])
        if rng.random() < 0.03:
            live = [r for r in reqs.values() if not r.is_finished]
            if live:
                victim = rng.choice(live)
                run_.sched.abort(victim)
                aborted.add(victim.request_id)
                check_cache_accounting(run_.sched)
        for d in run_.step():
            req = reqs[d.request_id]
            history = req.prompt_token_ids + req.output_token_ids
            new = [rng.randrange(1, VOCAB) for _ in range(rng.randint(1, 6))]
            if d.finish_reason and rng.random() < 0.5 and len(history) + len(new) + 4 < max_len:
                rid = f"{d.request_id}+"
                pending.insert(0, (step + 1, rid, history + new, rng.randint(1, 4)))
                follow_ups.append((rid, req))
        step += 1
        assert step < 10_000, "scheduler made no progress"
    run_.drain()
    for rid, r in reqs.items():
        expected = oracle(r.prompt_token_ids, r.max_tokens)
        if rid in aborted:
            assert r.output_token_ids == expected[: len(r.output_token_ids)]
        else:
            assert r.output_token_ids == expected, rid
            assert run_.first_delta_cached[rid] == r.num_cached_tokens
        assert r.num_cached_tokens <= r.num_prompt_tokens - 1
    assert sum(r.num_cached_tokens for r in reqs.values()) > 0, "the cache never hit"
    if run_.alloc.capacity <= 128:
        assert run_.cache.num_evicted > 0
    if policy == "conservative":  # its accounting counts pinned cached slots: never preempts
        assert run_.sched.num_preemptions == 0
    assert (run_.num_ahead > 10) == overlap


def test_multi_turn_hits_whole_history() -> None:
    """Each turn's prompt is the previous prompt + output + new tokens: it hits everything but
    the last generated token (which never got K/V)."""
    run_ = CacheRun(1000, "conservative", 4, 16, 256)
    rng = random.Random(1)
    prompt = [rng.randrange(1, VOCAB) for _ in range(30)]
    previous = 0
    for turn in range(4):
        r = make_request(f"t{turn}", prompt, 10)
        run_.sched.add(r)
        while run_.sched.has_unfinished:
            run_.step()
        assert r.output_token_ids == oracle(prompt, 10)
        if turn == 0:
            assert r.num_cached_tokens == 0
        else:
            assert r.num_cached_tokens == previous - 1
            assert run_.first_delta_cached[r.request_id] == previous - 1
        previous = r.num_tokens
        prompt = prompt + r.output_token_ids + [rng.randrange(1, VOCAB) for _ in range(5)]
    run_.drain()


def test_samples_of_one_prompt_share_its_slots() -> None:
    """Admitted in the same step, samples compute the prompt each, then share one copy; one that
    arrives later hits the whole prompt but its last token."""
    run_ = CacheRun(1000, "conservative", 8, 256, 256)
    prompt = list(range(1, 41))
    same_step = [make_request(f"s{i}", list(prompt), 20) for i in range(3)]
    for r in same_step:
        run_.sched.add(r)
    run_.step()  # the three prefills
    run_.step()  # the first decode: the prompt goes to the tree, duplicates are freed
    rows = [run_.sched.table.table[r.row, :40] for r in same_step]
    assert (rows[0] == rows[1]).all() and (rows[0] == rows[2]).all()
    assert run_.alloc.num_used == 40 + 3  # one prompt copy + each sample's first token
    late = make_request("late", list(prompt), 20)
    run_.sched.add(late)
    run_.step()
    assert late.num_cached_tokens == 39
    while run_.sched.has_unfinished:
        run_.step()
    for r in [*same_step, late]:
        assert r.output_token_ids == oracle(prompt, 20)
        assert r.num_prefix == 0 and r.prefix_node is None
    run_.drain()


def test_preempted_request_is_cached_and_reports_its_first_hit() -> None:
    """Preemption gives what was computed to the tree: readmitted, the request hits it all,
    while `num_cached_tokens` keeps the hit of its first admission."""
    reqs = [make_request(str(i), [1 + i] * 30, 60) for i in range(4)]
    run_ = CacheRun(100, "aggressive", 8, 32, 100)
    for r in reqs:
        run_.sched.add(r)
    hits_on_readmission = []
    while run_.sched.has_unfinished:
        waiting = [r for r in run_.sched.waiting if r.num_preemptions]
        run_.step()
        hits_on_readmission += [r.num_prefix for r in waiting if r.row >= 0]
    assert run_.sched.num_preemptions > 0
    assert any(h > 0 for h in hits_on_readmission), hits_on_readmission
    for r in reqs:
        assert r.output_token_ids == oracle(r.prompt_token_ids, 60)
        assert r.num_cached_tokens == 0
    run_.drain()


def test_no_cache_reports_zero_cached_tokens_once() -> None:
    alloc = SlotAllocator(64)
    sched = Scheduler(SchedulerConfig(4, 16, 60, "conservative"), alloc, make_policy("aggressive"))
    sched.add(make_request("a", [5, 6], 3))
    firsts = []
    while sched.has_unfinished:
        batch = sched.schedule()
        firsts += [
            d.num_cached_tokens for d in sched.update(batch, [7] * len(batch.sample_indices))
        ]
    assert firsts == [0, None, None]
    assert len(batch.table_rows) == 0

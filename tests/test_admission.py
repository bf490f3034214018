"""Admission policies: the past-future peak formula against a step-by-step simulation, its
conditional length draws, its pessimistic start and sliding window, and its effect on a real
scheduler (more requests in flight than conservative, almost no preemptions)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylight.engine.admission import (
    ConservativePolicy,
    PastFutureConfig,
    PastFuturePolicy,
    draw_final_lengths,
    future_peak,
    make_policy,
)
from raylight.engine.config import SchedulerConfig
from raylight.engine.kv_pool import SlotAllocator
from raylight.engine.request import Request, RequestStatus
from raylight.engine.sampling_params import SamplingParams
from raylight.engine.scheduler import Scheduler

EOS = 0


def brute_force_peak(held: list[int], remaining: list[int]) -> int:
    """Step by step: every live request takes one more slot per step; after its last step, it
    frees all it holds."""
    use = list(held)
    alive = [True] * len(held)
    peak = 0
    for t in range(1, max(remaining) + 1):
        for j in range(len(use)):
            if alive[j]:
                use[j] += 1
        peak = max(peak, sum(u for u, a in zip(use, alive) if a))
        for j in range(len(use)):
            if alive[j] and remaining[j] == t:
                alive[j] = False
    return peak


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40)), min_size=1, max_size=12))
def test_future_peak_matches_step_by_step_simulation(reqs: list[tuple[int, int]]) -> None:
    held = [h for h, _ in reqs]
    remaining = [r for _, r in reqs]
    got = future_peak(np.array(held), np.array(remaining))
    assert int(got) == brute_force_peak(held, remaining)


def test_future_peak_rows_are_independent_draws() -> None:
    rng = np.random.default_rng(0)
    held = rng.integers(0, 100, 9)
    remaining = rng.integers(1, 30, (5, 9))
    peaks = future_peak(held, remaining)
    assert peaks.shape == (5,)
    for k in range(5):
        assert peaks[k] == brute_force_peak(held.tolist(), remaining[k].tolist())


def test_draws_are_conditioned_on_tokens_already_sampled() -> None:
    rng = np.random.default_rng(1)
    history = np.sort(rng.integers(1, 200, 500))
    done = np.array([0, 50, 150, 199, 250])
    cap = np.full(5, 400)
    lengths = draw_final_lengths(history, done, cap, rng.random((2000, 5)))
    assert np.all(lengths > done) and np.all(lengths <= cap)
    # With history above `done`, draws stay near the history's conditional distribution.
    for j in range(3):
        above = history[history > done[j]]
        assert abs(np.median(lengths[:, j]) - np.median(above)) < 0.1 * np.median(above) + 3
    # No history above `done` (250 > every value): uniform in (done, cap].
    assert abs(lengths[:, 4].mean() - (250 + 400) / 2) < 10


def request(rid: str, prompt_len: int, max_tokens: int, done: int = 0) -> Request:
    r = Request(
        request_id=rid,
        prompt_token_ids=[1] * prompt_len,
        params=SamplingParams(max_tokens=max_tokens),
        max_tokens=max_tokens,
        sample_seed=0,
        stop_token_ids=frozenset({EOS}),
        output_token_ids=[1] * done,
    )
    r.num_computed_tokens = r.num_tokens - 1 if done else 0
    r.status = RequestStatus.RUNNING if done else RequestStatus.WAITING
    return r


def admitted(policy: object, n: int, free: int, prompt_len: int, max_tokens: int) -> int:
    policy.begin_step([], free)  # type: ignore[attr-defined]
    return sum(policy.admit(request(str(i), prompt_len, max_tokens)) for i in range(n))  # type: ignore[attr-defined]


def test_pessimistic_seed_then_history_lets_more_in() -> None:
    policy = PastFuturePolicy(PastFutureConfig(window=100, safety=1.0))
    # Unknown history: each request is assumed to run to its max_tokens, as conservative does.
    fresh = admitted(policy, 50, 10_000, 10, 990)
    assert fresh <= admitted(ConservativePolicy(), 50, 10_000, 10, 990) == 10
    for i in range(100):
        done = request(str(i), 10, 990, done=40 + i % 20)
        policy.on_finish(done)
    # Outputs of 40..59 tokens: all are alive at step 40, holding 9 + 40 slots each, so about
    # 10000 / 49 fit (a few more: the first segment of the inverse CDF draws below 40).
    n = admitted(policy, 300, 10_000, 10, 990)
    assert 150 <= n <= 10_000 // 49 + 5


def test_history_window_slides() -> None:
    policy = PastFuturePolicy(PastFutureConfig(window=8))
    for i in range(13):
        policy.on_finish(request(str(i), 3, 100, done=i + 1))
    assert policy.history().tolist() == list(range(6, 14))


def test_running_requests_use_their_own_conditional_tail() -> None:
    policy = PastFuturePolicy(PastFutureConfig(window=50, safety=1.0))
    for i in range(50):
        policy.on_finish(request(str(i), 10, 1000, done=20))
    # A request already 500 tokens in is longer than all history: its draw reaches for max_tokens,
    # so next to it far fewer short newcomers fit than into an empty batch.
    long_runner = request("long", 10, 1000, done=500)
    policy.begin_step([long_runner], 2000 - long_runner.num_computed_tokens)
    with_runner = sum(policy.admit(request(str(i), 10, 1000)) for i in range(100))
    assert with_runner < admitted(policy, 100, 2000, 10, 1000)


def test_make_policy_names() -> None:
    assert isinstance(make_policy("past-future", PastFutureConfig(window=3)), PastFuturePolicy)
    with pytest.raises(ValueError, match="past-future"):
        make_policy("optimistic")


def drive(policy_name: str, true_lens: list[int], max_tokens: int, num_slots: int) -> tuple:
    """All requests arrive at once; each stops (EOS) at its true length, unknown to admission.
    Returns (steps, mean running requests per step, preemptions)."""
    config = SchedulerConfig(128, 512, 1024, policy_name)
    alloc = SlotAllocator(num_slots)
    past_future = PastFutureConfig(window=64, seed=3)
    sched = Scheduler(config, alloc, make_policy(policy_name, past_future))
    reqs = [request(str(i), 16, max_tokens) for i in range(len(true_lens))]
    true_len = {r.request_id: n for r, n in zip(reqs, true_lens)}
    for r in reqs:
        sched.add(r)
    steps, running = 0, 0
    while sched.has_unfinished:
        batch = sched.schedule()
        running += len(sched.running)
        tokens = [
            # Between schedule and update the output ends in the PENDING token being sampled.
            EOS if len(r.output_token_ids) >= true_len[r.request_id] else 5
            for r in batch.sampling_requests
        ]
        sched.update(batch, tokens)
        steps += 1
    assert alloc.num_free == alloc.capacity
    assert all(len(r.output_token_ids) == true_len[r.request_id] for r in reqs)
    return steps, running / steps, sched.num_preemptions


def test_past_future_admits_more_than_conservative_and_rarely_preempts() -> None:
    rng = np.random.default_rng(0)
    true_lens = rng.integers(10, 80, 600).tolist()
    cons = drive("conservative", true_lens, 900, 6000)
    pf = drive("past-future", true_lens, 900, 6000)
    aggr = drive("aggressive", true_lens, 900, 6000)
    assert cons[2] == 0
    assert pf[1] > 3 * cons[1]  # conservative fits ~6 requests of 916 tokens at once
    assert pf[0] < cons[0] / 2
    assert pf[2] <= 6  # <= 1% of requests
    assert aggr[2] >= pf[2]

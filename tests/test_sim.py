"""The scheduling simulator: exact timings on a hand-checkable trace, determinism, workload
invariants, the cost-model fit, the CLI's JSON, and its speed."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest

from raylight.cluster.cli import main
from raylight.engine.sim import CostModel, SimConfig, fit_cost_model, make_workload, simulate
from raylight.engine.sim.metrics import PAPER_SLA, meets, summarize
from raylight.engine.sim.workloads import EOS, FILLER, Workload

COST = CostModel(base_s=1.0, prefill_token_s=0.1, decode_request_s=0.01, kv_token_s=0.001)


def hand_workload(arrival: list[float], prompt: list[int], out: list[int]) -> Workload:
    n = len(arrival)
    start = np.concatenate([[0], np.cumsum(prompt)[:-1]]).astype(np.int64)
    return Workload(
        name="hand",
        rate=1.0,
        arrival=np.asarray(arrival, dtype=np.float64),
        prompt_len=np.asarray(prompt, dtype=np.int64),
        output_len=np.asarray(out, dtype=np.int64),
        max_tokens=np.full(n, 50, dtype=np.int64),
        start=start,
        tokens=np.full(int(sum(prompt)), 7, dtype=np.int32),
        max_model_len=100,
    )


@pytest.mark.parametrize("policy", ["past-future", "aggressive", "conservative"])
def test_hand_checked_timings(policy: str) -> None:
    # Request 0: prompt 20 in chunks of 8, 8, 4 (the last chunk samples), then 2 decodes.
    # Request 1 arrives long after: the clock jumps to its arrival.
    w = hand_workload([0.5, 100.0], [20, 3], [3, 1])
    config = SimConfig(num_kv_slots=200, max_num_seqs=4, max_num_batched_tokens=8)
    config = replace(config, prefix_cache=False)
    trace = simulate(w, policy, config, COST)
    chunks = [1 + 0.1 * 8 + 0.001 * 8, 1 + 0.1 * 8 + 0.001 * 16, 1 + 0.1 * 4 + 0.001 * 20]
    decodes = [1 + 0.01 + 0.001 * 21, 1 + 0.01 + 0.001 * 22]
    first = 0.5 + sum(chunks)
    assert trace.first_token[0] == pytest.approx(first)
    assert trace.finish[0] == pytest.approx(first + sum(decodes))
    assert trace.max_gap[0] == pytest.approx(max(decodes))
    # Request 1: one prefill step of 3 tokens, and its one token ends it.
    assert trace.first_token[1] == pytest.approx(100.0 + 1 + 0.3 + 0.003)
    assert trace.finish[1] == trace.first_token[1] and trace.max_gap[1] == 0.0
    assert trace.output_len.tolist() == [3, 1]
    np.testing.assert_allclose(trace.step_time, chunks + decodes + [1.303])
    assert trace.step_kv_used.tolist() == [8, 16, 20, 21, 22, 3]
    report = summarize(trace, rate=1.0)
    assert report.num_steps == 6 and report.preemptions == 0
    assert report.makespan_s == pytest.approx(trace.finish[1] - 0.5)
    assert report.prefix_hit_rate == 0.0 and trace.step_kv_cached.tolist() == [0] * 6


def test_prefix_cache_hit_shortens_the_prefill_and_is_reported() -> None:
    # As above, with the cache: request 1's prompt (7, 7, 7) hits request 0's cached tokens,
    # capped at 2 so that one token is computed; request 0's 22 computed tokens stay cached
    # (evictable) after it finishes, and only the 3 slots request 1 owns or pins count as used.
    w = hand_workload([0.5, 100.0], [20, 3], [3, 1])
    config = SimConfig(num_kv_slots=200, max_num_seqs=4, max_num_batched_tokens=8)
    trace = simulate(w, "aggressive", config, COST)
    assert trace.cached_tokens.tolist() == [0, 2]
    # One new token: costed as a decode (the work is the same).
    assert trace.first_token[1] == pytest.approx(100.0 + 1 + 0.01 + 0.001 * 3)
    assert trace.step_kv_used.tolist() == [8, 16, 20, 21, 22, 3]
    assert trace.step_kv_cached.tolist() == [0, 0, 0, 0, 0, 20]
    report = summarize(trace, rate=1.0)
    assert report.prefix_hit_rate == pytest.approx(2 / 23)
    assert report.prefix_hit_rate_block16 == 0.0  # a 2-token hit is no whole 16-token block
    assert report.kv_cached_evictable_mean == pytest.approx(20 / 200 / 6)


def test_preemption_charges_the_recompute_and_the_gap_misses_the_sla() -> None:
    # Two requests of prompt 10 fill a 30-slot pool after 5 decodes; aggressive then preempts
    # the last one (16 tokens: 10 + 6 sampled). It waits for request 0 to finish, recomputes all
    # 16 tokens in one step (1 + 0.1 x 16 + 0.001 x 16 s), and its longest token gap spans the
    # wait: it misses the SLA although its TTFT is fine.
    w = hand_workload([0.0, 0.0], [10, 10], [15, 15])
    config = SimConfig(num_kv_slots=30, max_num_seqs=4, max_num_batched_tokens=64)
    trace = simulate(w, "aggressive", replace(config, prefix_cache=False), COST)
    assert trace.preemptions.tolist() == [0, 1]
    recompute = 1 + 0.1 * 16 + 0.001 * 16
    assert np.isclose(trace.step_time, recompute).sum() == 1
    resumed = trace.finish[0] + recompute
    assert trace.max_gap[1] == pytest.approx(resumed - sum(trace.step_time[:6]))
    assert trace.max_gap[1] > PAPER_SLA.itl_s >= trace.max_gap[0]
    assert meets(trace, PAPER_SLA).tolist() == [True, False]
    report = summarize(trace, rate=1.0)
    assert (report.missed_gap_only, report.missed_gap_preempted) == (1, 1)
    assert report.missed_ttft_only == report.missed_both == 0


def test_true_lengths_are_hidden_from_admission_but_reached() -> None:
    w = make_workload("sharegpt", 300, 50.0, seed=1)
    assert np.all(w.output_len < w.max_tokens)
    trace = simulate(w, "aggressive", SimConfig(num_kv_slots=20_000), COST)
    assert trace.output_len.tolist() == w.output_len.tolist()
    assert not np.isnan(trace.finish).any()


def test_simulation_is_deterministic() -> None:
    config = SimConfig(num_kv_slots=30_000, max_num_seqs=64, max_num_batched_tokens=1024)
    traces = [
        simulate(make_workload("bursty", 300, 20.0, seed=3), "past-future", config, COST)
        for _ in range(2)
    ]
    for name in ("first_token", "finish", "max_gap", "preemptions", "step_kv_used"):
        np.testing.assert_array_equal(getattr(traces[0], name), getattr(traces[1], name))


@pytest.mark.parametrize("name", ["sharegpt", "reasoning", "bursty", "multiturn"])
def test_workload_invariants(name: str) -> None:
    w = make_workload(name, 400, 5.0, seed=0)
    assert len(w) == 400 and np.all(np.diff(w.arrival) >= 0)
    assert np.all(w.output_len >= 1) and np.all(w.output_len <= w.max_tokens)
    assert np.all(w.prompt_len + w.max_tokens <= w.max_model_len)
    same = make_workload(name, 400, 5.0, seed=0)
    np.testing.assert_array_equal(w.arrival, same.arrival)
    np.testing.assert_array_equal(w.tokens, same.tokens)
    if name != "multiturn":  # (its think times do not scale with the rate)
        faster = make_workload(name, 400, 10.0, seed=0)
        np.testing.assert_array_equal(w.output_len, faster.output_len)
        np.testing.assert_allclose(w.arrival, 2 * faster.arrival)
        assert not np.isin(w.tokens, [EOS, FILLER]).any()


def test_multiturn_prompts_extend_the_previous_turn() -> None:
    w = make_workload("multiturn", 300, 5.0, seed=0)
    extended = 0
    for i in range(len(w)):
        later = np.flatnonzero((w.start == w.start[i]) & (w.prompt_len > w.prompt_len[i]))
        if len(later) == 0:
            continue
        j = later[np.argmin(w.prompt_len[later])]
        prompt, nxt = w.prompt(i), w.prompt(int(j))
        answer = [FILLER] * (int(w.output_len[i]) - 1) + [EOS]
        assert nxt[: len(prompt) + len(answer)] == prompt + answer
        extended += 1
    assert extended > 100
    assert len({tuple(w.prompt(i)[:200]) for i in range(len(w))}) <= 8  # shared system prompts


def test_fit_cost_model_recovers_coefficients() -> None:
    true = CostModel(base_s=4e-3, prefill_token_s=2.7e-5, decode_request_s=2e-5, kv_token_s=3e-8)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(300):
        prefill, decodes, kv = rng.integers(0, 8192), rng.integers(0, 1024), rng.integers(0, 10**6)
        seconds = true.step_time(prefill, decodes, kv) * (1 + rng.normal(0, 0.01))
        samples.append((prefill, decodes, kv, seconds))
    fit = fit_cost_model(samples)
    for field in ("base_s", "prefill_token_s", "decode_request_s", "kv_token_s"):
        assert getattr(fit, field) == pytest.approx(getattr(true, field), rel=0.15), field


def test_cli_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--workload", "sharegpt", "--rate", "20", "--num-requests", "200", "--json"]
    assert main([*argv, "--quiet", "--pool-tokens", "50000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"past-future", "aggressive", "conservative", "sim"}
    assert out["sim"]["rate"] == 20.0 and out["sim"]["workload"] == "sharegpt"
    command = out["sim"]["command"].split()
    assert command[:4] == ["raylight", "sim", "--workload", "sharegpt"]
    assert command[command.index("--pool-tokens") + 1] == "50000" and "--rate" in command
    for report in (out[p] for p in ("past-future", "aggressive", "conservative")):
        assert report["rate"] == 20.0 and report["num_requests"] == 200
        assert {"requests_per_s", "output_tokens_per_s"} <= set(report["throughput"])
        for key in ("goodput", "goodput_tight", "preemptions", "kv_util_mean", "kv_util_p99"):
            assert key in report
        for key in ("prefix_hit_rate", "prefix_hit_rate_block16", "kv_cached_evictable_mean"):
            assert key in report
        assert 0.0 <= report["kv_util_mean"] <= report["kv_util_p99"] <= 1.0


def test_cli_finds_the_rate_where_aggressive_misses(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--workload", "sharegpt", "--policy", "aggressive", "--json", "--quiet"]
    assert main([*argv, "--num-requests", "300", "--max-num-seqs", "24"]) == 0
    out = json.loads(capsys.readouterr().out)
    search = {float(r): a for r, a in out["sim"]["search"].items()}
    rate = out["sim"]["rate"]
    assert search[rate] < 0.95 == out["aggressive"]["sla_attainment"] or search[rate] < 0.95
    below = [r for r in search if r < rate]
    assert below and search[max(below)] >= 0.95


def test_cli_refines_the_miss_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """--refine-factor: from the last coarse rate that met the SLA, 2% steps up to the first
    that misses it (at or below the coarse miss)."""
    argv = ["sim", "--workload", "sharegpt", "--policy", "aggressive", "--json", "--quiet"]
    common = ["--num-requests", "300", "--max-num-seqs", "24"]
    assert main([*argv, *common]) == 0
    first = json.loads(capsys.readouterr().out)["sim"]
    coarse = first["rate"]
    below = max(float(r) for r in first["search"] if float(r) < coarse)
    assert main([*argv, *common, "--refine-factor", "1.02"]) == 0
    out = json.loads(capsys.readouterr().out)
    search = {float(r): a for r, a in out["sim"]["search"].items()}
    rate = out["sim"]["rate"]
    assert below < rate <= coarse and search[rate] < 0.95
    assert all(search[r] >= 0.95 for r in search if below <= r < rate)
    assert "--refine-factor 1.02" in out["sim"]["command"]


def test_cli_prefix_cache_comparison_on_multiturn(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sim", "--workload", "multiturn", "--rate", "5", "--num-requests", "300", "--json"]
    assert main([*argv, "--quiet", "--policy", "aggressive", "--compare-prefix-cache"]) == 0
    out = json.loads(capsys.readouterr().out)
    effect = out["sim"]["prefix_cache_effect"]["aggressive"]
    # Later turns resend the whole conversation: most prompt tokens hit, at token granularity
    # at least as many as whole blocks would, and the cache shortens time to first token.
    assert 0.5 < effect["hit_rate_token"] <= 1.0
    assert (
        0.0
        <= effect["hit_rate_difference"]
        == pytest.approx(effect["hit_rate_token"] - effect["hit_rate_block16"])
    )
    assert effect["ttft_mean_s"] < effect["ttft_mean_s_no_cache"]
    assert out["aggressive"]["prefix_hit_rate"] == effect["hit_rate_token"]
    assert main([*argv, "--quiet", "--policy", "aggressive", "--no-prefix-cache"]) == 0
    off = json.loads(capsys.readouterr().out)
    assert off["aggressive"]["prefix_hit_rate"] == 0.0 and off["sim"]["prefix_cache"] is False


@pytest.mark.slow
def test_ten_thousand_requests_in_under_a_minute() -> None:
    w = make_workload("sharegpt", 10_000, 40.0, seed=0)
    start = time.perf_counter()
    trace = simulate(w, "past-future", SimConfig(), CostModel(4e-3, 2.7e-5, 2e-5, 3e-8))
    assert time.perf_counter() - start < 60
    assert not np.isnan(trace.finish).any()

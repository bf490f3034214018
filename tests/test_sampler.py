"""Sampler semantics: greedy, seeded reproducibility, filtered distributions, penalties, bans,
logprobs. Oracles are plain Python per-row references, independent of the batched code."""

import math
from collections.abc import Sequence

import pytest
import torch

from raylight.engine.request import PENDING, Request
from raylight.engine.sampler import Sampler, SamplerOutput, apply_penalties
from raylight.engine.sampling_inputs import build_sampling_inputs
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import make_sampling_request as make_request

CPU = torch.device("cpu")


def sample(logits: torch.Tensor, requests: Sequence[Request]) -> SamplerOutput:
    inputs = build_sampling_inputs(requests, logits.shape[1], logits.device)
    return Sampler()(logits, inputs)


def reference_probs(logits: Sequence[float], p: SamplingParams) -> dict[int, float]:
    """token -> probability after temperature, top-k, top-p, min-p; one row, in float64."""
    scaled = [x / p.temperature for x in logits]
    order = sorted(range(len(scaled)), key=lambda i: -scaled[i])
    if p.top_k > 0:  # every token tied with the k-th largest stays, as in HF and vLLM
        keep = [i for i in order if scaled[i] >= scaled[order[min(p.top_k, len(order)) - 1]]]
    else:
        keep = order
    weights = {i: math.exp(scaled[i] - scaled[keep[0]]) for i in keep}
    total = sum(weights.values())
    if p.top_p < 1.0:
        kept: list[int] = []
        mass = 0.0
        for i in keep:
            if mass >= p.top_p:
                break
            kept.append(i)
            mass += weights[i] / total
        keep = kept
    keep = [i for i in keep if weights[i] >= p.min_p * weights[keep[0]]]
    total = sum(weights[i] for i in keep)
    return {i: weights[i] / total for i in keep}


def test_greedy_is_argmax_and_tiny_temperature_is_greedy() -> None:
    logits = torch.randn(9, 300, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1e-6)]
    requests = [make_request(params[i % 2], seed=i) for i in range(9)]
    expected = logits.argmax(dim=-1)
    assert torch.equal(sample(logits, requests).token_ids, expected)
    assert torch.equal(sample(logits.bfloat16(), requests).token_ids, logits.bfloat16().argmax(-1))
    # Just above the greedy threshold the sampled path is taken, and is still the argmax here:
    # a top-two gap of 0.05 / 1e-4 = 500 is far beyond any Gumbel noise (at most about 19.4).
    logits[:, :] = torch.linspace(0, -10, 300)
    mixed = [make_request(SamplingParams(temperature=1e-4, top_p=0.5), seed=i) for i in range(9)]
    assert sample(logits, mixed).token_ids.tolist() == [0] * 9


def test_greedy_ties_take_lowest_id() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0]])
    requests = [make_request(SamplingParams(temperature=0.0)) for _ in range(2)]
    assert sample(logits, requests).token_ids.tolist() == [1, 0]


TARGET_PARAMS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.6, top_k=7),
    SamplingParams(temperature=1.4, top_p=0.85),
    SamplingParams(temperature=0.9, min_p=0.05),
    SamplingParams(temperature=1.1, top_k=20, top_p=0.95, min_p=0.02),
]
MATE_PARAMS = [
    SamplingParams(temperature=0.0),
    SamplingParams(temperature=0.5),
    SamplingParams(top_p=0.7),
    SamplingParams(top_k=3, min_p=0.1),
    SamplingParams(temperature=2.0, top_k=40),
]


@pytest.mark.parametrize("params", TARGET_PARAMS)
def test_seeded_sample_ignores_batch_mates_and_row(params: SamplingParams) -> None:
    gen = torch.Generator().manual_seed(1)
    vocab = 64
    for seed in range(20):
        target = make_request(params, seed=1000 + seed, output=[5] * (seed % 4))
        row = torch.randn(vocab, generator=gen) * 2
        alone = sample(row[None], [target]).token_ids.item()
        for position in (0, 9, 16):
            mates = [make_request(MATE_PARAMS[i % 5], seed=i + seed) for i in range(16)]
            batch = mates[:position] + [target] + mates[position:]
            logits = torch.randn(17, vocab, generator=gen) * 2
            logits[position] = row
            assert sample(logits, batch).token_ids[position].item() == alone


@pytest.mark.parametrize("params", TARGET_PARAMS[1:])
def test_tied_logits_filter_the_same_alone_and_batched(params: SamplingParams) -> None:
    # Coarse logits (like bf16) tie at the top-k / top-p boundaries: ties must be resolved the
    # same way by the sorted path (used when a mate has top-p) and the unsorted one.
    gen = torch.Generator().manual_seed(5)
    vocab = 48
    mates = [make_request(SamplingParams(top_p=0.5), seed=99)]
    for seed in range(60):
        target = make_request(params, seed=seed)
        row = (torch.randn(vocab, generator=gen) * 2).round()
        alone = sample(row[None], [target]).token_ids.item()
        logits = torch.stack([torch.randn(vocab, generator=gen), row])
        assert sample(logits, mates + [target]).token_ids[1].item() == alone
        assert alone in reference_probs(row.tolist(), params)


def test_different_seeds_and_counters_give_different_samples() -> None:
    logits = torch.zeros(400, 50)  # uniform: 50 equally likely tokens
    by_seed = [make_request(SamplingParams(), seed=s) for s in range(200)]
    by_counter = [make_request(SamplingParams(), seed=7, output=[0] * c) for c in range(200)]
    tokens = sample(logits, by_seed + by_counter).token_ids
    assert len(set(tokens[:200].tolist())) > 40
    assert len(set(tokens[200:].tolist())) > 40


LOGITS = [1.2, 0.3, -0.5, 2.0, 0.0, -1.5, 1.9, 0.7, -0.2, 1.0, -3.0, 0.4]
DIST_PARAMS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=1.3, top_k=4),
    SamplingParams(temperature=1.0, top_p=0.8),
    SamplingParams(temperature=1.0, min_p=0.2),
    SamplingParams(temperature=0.8, top_k=6, top_p=0.9, min_p=0.1),
]
DRAWS = 20_000


def _check_frequencies(tokens: torch.Tensor, expected: dict[int, float]) -> None:
    counts = torch.bincount(tokens, minlength=len(LOGITS)).tolist()
    for token, count in enumerate(counts):
        p = expected.get(token, 0.0)
        if p == 0.0:
            assert count == 0, f"token {token} is filtered out but was sampled {count} times"
        else:
            sigma = math.sqrt(p * (1 - p) / DRAWS)
            assert abs(count / DRAWS - p) < 5 * sigma, (token, count / DRAWS, p)
    # Pearson's chi-square over the allowed tokens; the bound is about 6 sigma above its mean.
    chi2 = sum((counts[t] - DRAWS * p) ** 2 / (DRAWS * p) for t, p in expected.items())
    dof = max(len(expected) - 1, 1)
    assert chi2 < dof + 6 * math.sqrt(2 * dof), chi2


@pytest.mark.parametrize("params", DIST_PARAMS)
def test_sample_frequencies_match_filtered_softmax(params: SamplingParams) -> None:
    requests = [make_request(params, seed=i, output=[0] * (i % 3)) for i in range(DRAWS)]
    logits = torch.tensor(LOGITS).expand(DRAWS, -1)
    _check_frequencies(sample(logits, requests).token_ids, reference_probs(LOGITS, params))


def test_frequencies_in_one_mixed_batch() -> None:
    configs = [*DIST_PARAMS, SamplingParams(temperature=0.0)]
    requests = [make_request(configs[i % 7], seed=i) for i in range(7 * DRAWS)]
    logits = torch.tensor(LOGITS).expand(len(requests), -1)
    tokens = sample(logits, requests).token_ids
    for c, params in enumerate(DIST_PARAMS):
        _check_frequencies(tokens[c::7], reference_probs(LOGITS, params))
    assert set(tokens[6::7].tolist()) == {3}


@pytest.mark.parametrize("mix", ["every_row_top_k", "some_top_k", "top_p"])
def test_random_rows_never_emit_filtered_tokens(mix: str) -> None:
    gen = torch.Generator().manual_seed(2)
    batch, vocab = 300, 40
    logits = torch.randn(batch, vocab, generator=gen) * 3
    requests = []
    for i in range(batch):
        top_k = (
            int(torch.randint(1, 12, (), generator=gen)) if mix == "every_row_top_k" or i % 2 else 0
        )
        params = SamplingParams(
            temperature=float(torch.empty(()).uniform_(0.3, 2.0, generator=gen)),
            top_k=top_k,
            top_p=float(torch.empty(()).uniform_(0.2, 1.0, generator=gen)) if mix == "top_p" else 1,
            min_p=0.15 if i % 3 == 0 else 0.0,
        )
        requests.append(make_request(params, seed=i))
    for step in range(4):
        for r in requests:
            r.output_token_ids = [0] * step + [PENDING]
        tokens = sample(logits, requests).token_ids.tolist()
        for i, r in enumerate(requests):
            assert tokens[i] in reference_probs(logits[i].tolist(), r.params), (i, step)


def test_apply_penalties_hand_computed() -> None:
    logits = torch.tensor([2.0, -1.0, 0.5, -0.5, 3.0, 0.0]).expand(5, -1)
    cases = [
        (SamplingParams(), [2.0, -1.0, 0.5, -0.5, 3.0, 0.0]),
        (SamplingParams(repetition_penalty=2.0), [1.0, -2.0, 0.25, -1.0, 3.0, 0.0]),
        (SamplingParams(frequency_penalty=0.5), [2.0, -1.0, -0.5, -1.0, 3.0, 0.0]),
        (SamplingParams(presence_penalty=0.3), [2.0, -1.0, 0.2, -0.8, 3.0, 0.0]),
        (
            SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.3),
            [1.0, -2.0, -1.05, -1.8, 3.0, 0.0],
        ),
    ]
    # Prompt holds tokens 0 and 1; the output so far is 2, 2, 3.
    requests = [make_request(p, prompt=[0, 1, 0], output=[2, 2, 3]) for p, _ in cases]
    inputs = build_sampling_inputs(requests, 6, CPU)
    expected = torch.tensor([row for _, row in cases])
    torch.testing.assert_close(apply_penalties(logits, inputs), expected)
    # Penalties steer greedy decoding too: token 4 (logit 3.0) is in the output and drops.
    greedy = SamplingParams(temperature=0.0, frequency_penalty=2.0)
    req = make_request(greedy, output=[4, 4])
    assert sample(torch.tensor([[2.0, -1.0, 0.5, -0.5, 3.0, 0.0]]), [req]).token_ids.item() == 0


def test_min_tokens_bans_stop_ids_until_reached() -> None:
    logits = torch.zeros(1, 10)
    logits[0, 3] = logits[0, 7] = 8.0  # stop ids 3 and 7 dominate
    for greedy in (True, False):
        params = SamplingParams(temperature=0.0 if greedy else 1.0, min_tokens=3)
        for length in range(5):
            requests = [
                make_request(params, seed=s, output=[0] * length, stop=[3, 7, 99])
                for s in range(300)
            ]
            tokens = set(sample(logits.expand(300, -1), requests).token_ids.tolist())
            if length < 3:
                assert not tokens & {3, 7}
            else:
                assert tokens & {3, 7}


def test_logprobs_are_raw_log_softmax() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 40, generator=gen).bfloat16()
    counts = [None, 0, 3, 5, None]
    requests = [
        make_request(SamplingParams(logprobs=n, repetition_penalty=1.5), seed=i, output=[1, 2])
        for i, n in enumerate(counts)
    ]
    out = sample(logits, requests)
    raw = torch.log_softmax(logits.float(), dim=-1)
    assert out.logprobs is not None and out.top_token_ids is not None
    assert out.top_logprobs is not None
    assert out.top_token_ids.shape == (5, 5) and out.top_logprobs.shape == (5, 5)
    assert out.top_token_ids.dtype == torch.int64 and out.top_logprobs.dtype == torch.float32
    torch.testing.assert_close(out.logprobs, raw.gather(1, out.token_ids[:, None])[:, 0])
    top = raw.topk(5, dim=-1)
    assert torch.equal(out.top_token_ids, top.indices)
    torch.testing.assert_close(out.top_logprobs, top.values)
    assert torch.all(out.top_logprobs[:, :-1] >= out.top_logprobs[:, 1:])


def test_zero_logprobs_gives_empty_top_and_sampled_logprob() -> None:
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(4))
    requests = [make_request(SamplingParams(logprobs=0, temperature=0.0)) for _ in range(3)]
    out = sample(logits, requests)
    assert out.top_token_ids is not None and out.top_token_ids.shape == (3, 0)
    assert out.top_logprobs is not None and out.top_logprobs.shape == (3, 0)
    assert out.logprobs is not None
    expected = torch.log_softmax(logits, -1).max(dim=-1).values
    torch.testing.assert_close(out.logprobs, expected)


def test_no_logprobs_requested() -> None:
    logits = torch.randn(2, 20)
    out = sample(logits, [make_request(SamplingParams()) for _ in range(2)])
    assert out.logprobs is None and out.top_token_ids is None and out.top_logprobs is None
    assert out.token_ids.dtype == torch.int64 and out.token_ids.shape == (2,)

"""build_sampling_inputs from real Requests: field values, neutral rows, None when unused, cost."""

import time
from collections.abc import Callable
from functools import partial

import torch

from raylight.engine.request import Request
from raylight.engine.sampler import Sampler
from raylight.engine.sampling_inputs import build_sampling_inputs
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import make_sampling_request as make_request

CPU = torch.device("cpu")


def test_all_greedy_builds_only_the_basics() -> None:
    requests = [
        make_request(SamplingParams(temperature=0.0, top_k=5, top_p=0.5), seed=3, output=[1, 1]),
        make_request(SamplingParams(temperature=1e-6), seed=2**63 - 1),
    ]
    inputs = build_sampling_inputs(requests, 10, CPU)
    assert inputs.all_greedy
    assert inputs.seeds.tolist() == [3, 2**63 - 1] and inputs.seeds.dtype == torch.int64
    assert inputs.counters.tolist() == [2, 0] and inputs.counters.dtype == torch.int64
    assert inputs.temperature.dtype == torch.float32
    # Filters of greedy rows are irrelevant, penalties and the rest unused.
    for name in ("top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty"):
        assert getattr(inputs, name) is None, name
    assert inputs.frequency_penalty is None and inputs.prompt_token_mask is None
    assert inputs.output_token_counts is None and inputs.banned_tokens is None
    assert inputs.max_num_logprobs == -1


def test_mixed_params() -> None:
    stop = [9, 4, 50]  # 50 lies past the vocabulary: nothing to ban
    requests = [
        make_request(SamplingParams(temperature=0.0, top_k=3), seed=1),
        make_request(SamplingParams(top_k=100, logprobs=2), seed=2, output=[4, 4, 5]),
        make_request(SamplingParams(top_p=0.9, min_tokens=2), seed=3, output=[6], stop=stop),
        make_request(SamplingParams(top_k=-1, min_p=0.1, min_tokens=1), output=[6], stop=stop),
        make_request(
            SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, logprobs=0),
            prompt=[0, 0, 7],
            output=[7, 8, 8],
        ),
        make_request(SamplingParams(frequency_penalty=-0.5), prompt=[1], output=[2, 2]),
    ]
    inputs = build_sampling_inputs(requests, 10, CPU)
    assert not inputs.all_greedy
    assert inputs.temperature.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert inputs.counters.tolist() == [0, 3, 1, 1, 3, 2]
    assert inputs.top_k is not None and inputs.top_k.tolist() == [3, 10, 0, 0, 0, 0]
    assert inputs.max_top_k == 10
    assert inputs.top_p is not None and inputs.top_p.tolist() == [1, 1, 0.8999999761581421, 1, 1, 1]
    assert inputs.min_p is not None and inputs.min_p[3].item() == torch.tensor(0.1).item()
    assert inputs.repetition_penalty is not None and inputs.presence_penalty is not None
    assert inputs.frequency_penalty is not None
    assert inputs.repetition_penalty.tolist()[3:5] == [1.0, torch.tensor(1.3).item()]
    assert inputs.frequency_penalty.tolist() == [0, 0, 0, 0, 0, -0.5]
    assert inputs.prompt_token_mask is not None and inputs.output_token_counts is not None
    # Only rows with penalties get histograms; the prompt mask only for repetition penalty.
    assert inputs.prompt_token_mask.nonzero().tolist() == [[4, 0], [4, 7]]
    counts = inputs.output_token_counts
    assert counts.dtype == torch.float32 and counts.shape == (6, 10)
    assert counts.nonzero().tolist() == [[4, 7], [4, 8], [5, 2]]
    assert counts[4, 8].item() == 2 and counts[5, 2].item() == 2
    # Row 2 has 1 < 2 tokens: its stop ids are banned; row 3 has reached min_tokens=1.
    assert inputs.banned_tokens is not None
    assert inputs.banned_tokens.nonzero().tolist() == [[2, 4], [2, 9]]
    assert inputs.max_num_logprobs == 2


def test_top_k_clamped_to_vocab_and_minus_one_is_off() -> None:
    requests = [
        make_request(SamplingParams(top_k=-1)),
        make_request(SamplingParams(top_k=4)),
        make_request(SamplingParams(top_k=70, top_p=0.5)),
    ]
    inputs = build_sampling_inputs(requests, 32, CPU)
    assert inputs.top_k is not None and inputs.top_k.tolist() == [0, 4, 32]
    assert inputs.max_top_k == 32


def _mixed_batch(batch: int, vocab: int) -> list[Request]:
    gen = torch.Generator().manual_seed(0)
    kinds = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.8, top_p=0.95),
        SamplingParams(temperature=0.7, top_k=50, logprobs=5),
        SamplingParams(min_p=0.05, repetition_penalty=1.1, presence_penalty=0.5, min_tokens=8),
    ]
    return [
        make_request(
            kinds[i % 4],
            seed=i,
            prompt=torch.randint(0, vocab, (200,), generator=gen).tolist(),
            output=torch.randint(0, vocab, (i % 16,), generator=gen).tolist(),
            stop=[2],
        )
        for i in range(batch)
    ]


def _time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def test_timing_at_batch_256() -> None:
    batch, vocab = 256, 32000
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(1))
    sampler = Sampler()
    cases = {
        "all-greedy": [make_request(SamplingParams(temperature=0.0), seed=i) for i in range(batch)],
        "mixed": _mixed_batch(batch, vocab),
    }
    for name, requests in cases.items():
        build_ms = _time(partial(build_sampling_inputs, requests, vocab, CPU), 20)
        inputs = build_sampling_inputs(requests, vocab, CPU)
        sample_ms = _time(partial(sampler, logits, inputs), 2)
        print(f"\nB={batch} V={vocab} {name}: build {build_ms:.3f} ms, sampler {sample_ms:.1f} ms")

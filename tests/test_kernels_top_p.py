"""The sort-free top-p cut (kernels/top_p.py) against its definition in float64, and the
sampler's kernel path against its sorted path. Rows are few: the interpreter runs the 9 passes
of every row one program at a time."""

from __future__ import annotations

import pytest
import torch

from raylight.engine.sampler import Sampler
from raylight.engine.sampling_inputs import build_sampling_inputs
from raylight.engine.sampling_params import SamplingParams
from raylight.kernels.top_p import apply_top_p_cut, mass_before_ref, top_p_cut, top_p_keep_ref

from .engine_helpers import make_sampling_request as make_request

NEG_INF = float("-inf")


def _rows(vocab: int, seed: int) -> torch.Tensor:
    """Six rows of one vocabulary size: plain, peaked, heavy ties, ties at the top, a masked
    (-inf) tail with both zeros, and a flat row (every value tied)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(6, vocab, generator=gen) * 2
    rows[1] *= 6
    rows[2] = torch.randint(0, 4, (vocab,), generator=gen).float()
    rows[3, : max(1, vocab // 5)] = rows[3].max() + 1.0
    rows[4, vocab // 2 :] = NEG_INF
    rows[4, 0] = -0.0
    rows[4, min(1, vocab - 1)] = 0.0
    rows[5] = 0.25
    return rows


@pytest.mark.parametrize("vocab", [1, 7, 300, 2500])  # 2500: two blocks of 2048
@pytest.mark.parametrize("top_p", [1e-6, 0.3, 0.9, 0.999, 1.0])
def test_cut_keeps_the_reference_set(vocab: int, top_p: float) -> None:
    values = _rows(vocab, seed=vocab)
    tp = torch.full((values.shape[0],), top_p)
    tau, ties = top_p_cut(values, tp)
    got = apply_top_p_cut(values, tau, ties) > NEG_INF
    want = top_p_keep_ref(values, tp) & (values > NEG_INF)
    # Only a token whose mass before it is within float32 rounding of top_p may differ.
    ambiguous = (mass_before_ref(values) - top_p).abs() < 1e-5
    assert not (got != want)[~ambiguous].any(), (got != want).nonzero()
    assert got.any(dim=1).all()  # the largest value always stays


def test_every_token_kept_at_top_p_one_and_ties_by_token_id() -> None:
    values = torch.tensor([[1.0, 3.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    # Row 0: p(3.0) = 0.29 each; 0.4 needs two of them, the two lowest ids. Row 1: keep all.
    tau, ties = top_p_cut(values, torch.tensor([0.4, 1.0]))
    kept = apply_top_p_cut(values, tau, ties) > NEG_INF
    assert kept.tolist() == [[False, True, True, False, False], [True] * 5]


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="values"):
        top_p_cut(torch.zeros(2, 5, dtype=torch.float16), torch.ones(2))
    with pytest.raises(ValueError, match="top_p"):
        top_p_cut(torch.zeros(2, 5), torch.ones(3))


PARAMS = [
    SamplingParams(top_p=0.7),
    SamplingParams(temperature=1.3, top_p=0.95),
    SamplingParams(temperature=0.8, top_k=6, top_p=0.9),
    SamplingParams(top_p=0.5, min_p=0.1),
    SamplingParams(temperature=1.1),
    SamplingParams(temperature=0.0),
]


def test_sampler_kernel_path_samples_the_sorted_paths_tokens() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(18, 100, generator=gen) * 2
    logits[::3] = logits[::3].round()  # ties
    requests = [make_request(PARAMS[i % len(PARAMS)], seed=i) for i in range(len(logits))]
    inputs = build_sampling_inputs(requests, logits.shape[1], logits.device)
    sorted_ids = Sampler(top_p_kernel=False)(logits, inputs).token_ids
    kernel_ids = Sampler(top_p_kernel=True)(logits, inputs).token_ids
    assert torch.equal(kernel_ids, sorted_ids)


@pytest.mark.gpu
def test_gpu_full_vocab_kernel_path_samples_the_sorted_paths_tokens() -> None:
    """Llama-3's vocabulary, a decode-sized batch: the same tokens as the sorted path."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(64, 128256, device="cuda", generator=gen) * 4
    requests = [make_request(PARAMS[i % 4], seed=i) for i in range(len(logits))]  # all top-p
    inputs = build_sampling_inputs(requests, logits.shape[1], logits.device)
    sorted_ids = Sampler(top_p_kernel=False)(logits, inputs).token_ids
    kernel_ids = Sampler(top_p_kernel=True)(logits, inputs).token_ids
    assert (kernel_ids == sorted_ids).float().mean() >= 62 / 64  # float rounding at the cut


def test_sampler_bench_runs_on_cpu(tmp_path) -> None:
    import json

    from raylight.benchmarks import sampler_bench

    out = tmp_path / "sampler.json"
    assert sampler_bench.main(["--device", "cpu", "--batch", "2", "--vocab", "64",
                               "--out", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["results"]
    assert {(r["sampling"], r["top_p_kernel"]) for r in rows} >= {("top_p", True), ("top_p", False)}
    assert all(r["median_ms"] > 0 for r in rows)

"""The Triton attention backend and fused layers (Triton interpreter on CPU) against the torch
path, end to end: greedy tokens through mixed prefill+decode batches, chunked prefill and
prefix-cache hits. The torch path is itself checked against HF in test_engine_hf.py."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from raylight.engine.attention.backend import AttentionMetadata
from raylight.engine.attention.torch_backend import TorchAttentionBackend
from raylight.engine.attention.triton_backend import TritonAttentionBackend
from raylight.engine.config import EngineOptions
from raylight.engine.cuda_graphs import bucket_sizes
from raylight.engine.llm import create_engine_core
from raylight.engine.sampling_inputs import needs_only_argmax
from raylight.engine.sampling_params import SamplingParams

from .engine_helpers import make_sampling_request, run_to_completion, shared_prefix_prompts

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)

# CPU tests through the Triton interpreter (always on in CI: conftest sets it). On the GPU
# machine (TRITON_INTERPRET=0) the same comparisons run on CUDA in test_cuda_graphs.py.
pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton-interpreter (CPU) test"
)


def _run(model: Path, prompts: list[list[int]], arrivals: list[int], **opts: object) -> list:
    options = EngineOptions(dtype="float32", max_model_len=128, max_num_seqs=4,
                            num_kv_slots=4096, device="cpu", **opts)  # fmt: skip
    core = create_engine_core(model, options, progress=False)
    want_fused = bool(opts.get("fused_kernels"))
    assert all(m.fused == want_fused for m in core.runner.model.modules() if hasattr(m, "fused"))
    assert type(core.runner.backend).__name__.lower().startswith(str(opts["attention_backend"]))
    reqs = run_to_completion(core, prompts, GREEDY, arrivals)
    return [(r.output_token_ids, r.num_cached_tokens) for r in reqs]


def _prompts(seed: int, lengths: list[int], vocab: int = 256) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def test_mixed_chunked_batches_match_torch(tiny_models: dict[str, Path]) -> None:
    """Staggered arrivals and a 12-token budget: prefill chunks share steps with decodes."""
    prompts = _prompts(0, [3, 17, 9, 26])
    arrivals = [0, 1, 2, 4]
    want = _run(tiny_models["llama"], prompts, arrivals, attention_backend="torch",
                max_num_batched_tokens=12)  # fmt: skip
    got = _run(tiny_models["llama"], prompts, arrivals, attention_backend="triton",
               max_num_batched_tokens=12)  # fmt: skip
    assert got == want
    assert len({tuple(t) for t, _ in want}) > 1  # not a degenerate constant output


def test_prefix_cache_hits_match_torch(tiny_models: dict[str, Path]) -> None:
    prompts = shared_prefix_prompts(256, seed=2)[:5]
    arrivals = [0, 3, 6, 9, 12]
    want = _run(tiny_models["qwen2"], prompts, arrivals, attention_backend="torch",
                max_num_batched_tokens=64)  # fmt: skip
    got = _run(tiny_models["qwen2"], prompts, arrivals, attention_backend="triton",
               max_num_batched_tokens=64)  # fmt: skip
    assert got == want
    assert sum(cached for _, cached in got) > 50  # later prompts reused the shared prefix


@pytest.mark.parametrize(("arch", "fuse_attention"),
                         [("llama", True), ("qwen3", True), ("llama", False)])  # fmt: skip
def test_fused_layers_match_torch(
    tiny_models: dict[str, Path], arch: str, fuse_attention: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Fused RMSNorm(+residual), rotary with the KV store, and SiLU-and-mul (what CUDA uses by
    default); decode steps with rotary and the KV store inside the attention kernel
    (fuse_decode_attention, the default) or through rope_kv_store."""
    import raylight.engine.layers.attention as attention_layer
    from raylight.engine.attention import triton_backend

    calls = {"rope_kv_store": 0, "decode_rope_attention": 0}

    def counting(module: object, name: str) -> None:
        kernel = getattr(module, name)

        def counted(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return kernel(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    counting(attention_layer, "rope_kv_store")
    counting(triton_backend, "decode_rope_attention")
    prompts = _prompts(1, [5, 11, 2])
    arrivals = [0, 0, 2]
    want = _run(tiny_models[arch], prompts, arrivals, attention_backend="torch",
                max_num_batched_tokens=64)  # fmt: skip
    assert not any(calls.values())
    got = _run(tiny_models[arch], prompts, arrivals, attention_backend="triton",
               fused_kernels=True, max_num_batched_tokens=64,
               fuse_decode_attention=fuse_attention)  # fmt: skip
    assert got == want
    layers = 2  # the tiny models'
    if fuse_attention:  # prefill steps store through rope_kv_store, decode steps fuse it
        assert calls["rope_kv_store"] >= layers and calls["decode_rope_attention"] >= 4 * layers
    else:
        assert calls["decode_rope_attention"] == 0 and calls["rope_kv_store"] >= 6 * layers


def _mixed_metadata(q_lens: list[int], kv_lens: list[int], slots: int) -> AttentionMetadata:
    """Requests in rows 1..B of a shuffled table; request b's new tokens are its last q_len."""
    gen = torch.Generator().manual_seed(0)
    width = max(kv_lens) + 3
    table = torch.randperm(slots - 1, generator=gen)[: (len(q_lens) + 1) * width] + 1
    table = table.view(len(q_lens) + 1, width).to(torch.int32)
    out_slots = torch.cat(
        [table[b + 1, k - q : k].long() for b, (q, k) in enumerate(zip(q_lens, kv_lens))]
    )
    cu = torch.tensor([0] + q_lens).cumsum(0)
    return AttentionMetadata(
        cu_seqlens_q=cu, seq_lens_kv=torch.tensor(kv_lens),
        req_rows=torch.arange(1, len(q_lens) + 1), req_to_token=table, out_slots=out_slots,
        max_q_len=max(q_lens), max_kv_len=max(kv_lens), decode_only=max(q_lens) == 1,
    )  # fmt: skip


@pytest.mark.parametrize(
    "q_lens, kv_lens", [([1, 5, 1, 9], [7, 5, 1, 20]), ([1, 1, 1], [3, 40, 1])]
)
def test_backend_matches_torch_backend(q_lens: list[int], kv_lens: list[int]) -> None:
    """store_kv + forward on one mixed (prefill chunk + decode) and one decode-only batch, GQA."""
    torch.manual_seed(0)
    _assert_backends_agree(_mixed_metadata(q_lens, kv_lens, 300), 300)


def _assert_backends_agree(meta: AttentionMetadata, slots: int) -> None:
    """store_kv + forward of random q/k/v through the torch and Triton backends (4 query heads
    over 2 KV heads, d 16, the same random caches): the outputs agree."""
    heads, kv_heads, d = 4, 2, 16
    t = int(meta.cu_seqlens_q[-1])
    q = torch.randn(t, heads, d)
    k, v = torch.randn(t, kv_heads, d), torch.randn(t, kv_heads, d)
    outs = []
    for backend in (TorchAttentionBackend(), TritonAttentionBackend()):
        k_cache = torch.randn(slots, kv_heads, d, generator=torch.Generator().manual_seed(1))
        v_cache = torch.randn(slots, kv_heads, d, generator=torch.Generator().manual_seed(2))
        backend.store_kv(k, v, k_cache, v_cache, meta)
        outs.append(backend.forward(q, k_cache, v_cache, meta, d**-0.5))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_decodes", [0, 2, 3])
def test_mixed_batch_split_into_decode_and_prefill_kernels(
    num_decodes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decode rows first (as the scheduler orders them): with num_decodes they take the decode
    kernel and the rest the prefill kernel; the output equals the torch backend's either way."""
    import raylight.engine.attention.triton_backend as tb

    decoded = []
    decode = tb.decode_attention

    def counted(q, *args, **kwargs):
        decoded.append(q.shape[0])
        return decode(q, *args, **kwargs)

    monkeypatch.setattr(tb, "decode_attention", counted)
    q_lens, kv_lens = [1, 1, 1, 6, 9], [9, 40, 1, 6, 25]  # the third decode is a 1-token prompt
    torch.manual_seed(3)
    meta = _mixed_metadata(q_lens, kv_lens, 300)
    meta.num_decodes = num_decodes
    _assert_backends_agree(meta, 300)
    assert decoded == ([num_decodes] if num_decodes else [])


def test_scheduler_puts_one_token_requests_first(tiny_models: dict[str, Path]) -> None:
    """Chunked prompts and decodes interleave in the running list; every mixed batch has its
    one-token requests first, and the eager step hands their count to attention."""
    options = EngineOptions(dtype="float32", max_model_len=128, max_num_seqs=4,
                            num_kv_slots=4096, device="cpu", max_num_batched_tokens=16)  # fmt: skip
    core = create_engine_core(tiny_models["llama"], options, progress=False)
    prompts = _prompts(4, [40, 3, 30, 2, 25])
    reqs = [core.make_request(str(i), p, GREEDY) for i, p in enumerate(prompts)]
    mixed = 0
    for step in range(40):
        if step < len(reqs):
            core.add(reqs[step])
        batch = core.scheduler.schedule()
        if batch is None:
            break
        ones = batch.num_new == 1
        d = batch.num_leading_decodes
        assert ones[:d].all() and not ones[d:].any()
        mixed += int(0 < d < len(batch.num_new))
        result = core.runner.execute(batch)
        for delta in core.scheduler.update(batch, result.token_ids, result.logprobs):
            if delta.finish_reason is not None:
                del core.requests[delta.request_id]
    assert mixed >= 3


def test_attention_backend_resolution(tiny_models: dict[str, Path]) -> None:
    options = EngineOptions(max_model_len=64, device="cpu")
    core = create_engine_core(tiny_models["llama"], options, False)
    assert core.config.attention_backend == "torch"  # auto on CPU
    assert not core.config.fused_kernels and core.runner.graphs is None
    with pytest.raises(ValueError, match="attention_backend"):
        create_engine_core(tiny_models["llama"], EngineOptions(attention_backend="flash"), False)


def test_bucket_sizes() -> None:
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(6) == [1, 2, 4, 6]
    assert bucket_sizes(40) == [1, 2, 4, 8, 16, 24, 32, 40]
    sizes = bucket_sizes(256)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 256 and len(sizes) == 35
    assert bucket_sizes(30)[-2:] == [24, 30]


def test_needs_only_argmax() -> None:
    greedy = make_sampling_request(SamplingParams(temperature=0.0))
    assert needs_only_argmax([greedy, greedy])
    for params in (
        SamplingParams(temperature=0.5),
        SamplingParams(temperature=0.0, logprobs=0),
        SamplingParams(temperature=0.0, repetition_penalty=1.2),
        SamplingParams(temperature=0.0, min_tokens=2),
    ):
        assert not needs_only_argmax([greedy, make_sampling_request(params)])
    done = make_sampling_request(SamplingParams(temperature=0.0, min_tokens=2), output=(1, 2))
    assert needs_only_argmax([done])

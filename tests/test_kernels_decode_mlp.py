"""The decode MLP kernel (kernels/decode_mlp.py) against its torch reference and float64, on
awkward sizes: row counts that do not divide among the programs, K chunks past the end, a
single K chunk, more programs than rows. In the interpreter its two phases run as two launches
(the barrier needs every program resident); the GPU run (device machine) takes the barrier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raylight.kernels.decode_mlp import (
    DecodeMLPConfig,
    decode_layer_tail,
    decode_layer_tail_ref,
    decode_mlp,
    decode_mlp_ref,
    new_barrier,
)

CONFIGS = {
    # in the interpreter, 4 programs per programs_per_sm
    "groups": DecodeMLPConfig(programs_per_sm=2, gu_block_n=4, gu_block_k=32, d_block_n=4,
                              d_block_k=64, num_warps=4, num_stages=2),  # fmt: skip
    "one-group": DecodeMLPConfig(programs_per_sm=1, gu_block_n=64, gu_block_k=64, d_block_n=32,
                                 d_block_k=256, num_warps=4, num_stages=1),  # fmt: skip
    "many-programs": DecodeMLPConfig(programs_per_sm=6, gu_block_n=8, gu_block_k=16,
                                     d_block_n=2, d_block_k=32, num_warps=2, num_stages=3,
                                     cooperative=True),  # fmt: skip
}
TOL = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 3e-2)}


def _inputs(m: int, hidden: int, inter: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(m, hidden, generator=gen).to(dtype)
    res = torch.randn(m, hidden, generator=gen).to(dtype)
    g = (1 + 0.2 * torch.randn(hidden, generator=gen)).to(dtype)
    w_gu = (torch.randn(2 * inter, hidden, generator=gen) / hidden**0.5).to(dtype)
    w_d = (torch.randn(hidden, inter, generator=gen) / inter**0.5).to(dtype)
    return h, res, g, w_gu, w_d


F32, BF16 = torch.float32, torch.bfloat16


# Each shape with both configs and both dtypes, not every combination (the interpreter is slow).
@pytest.mark.parametrize("dtype,m,hidden,inter,name", [
    (F32, 1, 96, 200, "groups"), (BF16, 1, 96, 200, "one-group"),
    (F32, 3, 64, 37, "one-group"), (BF16, 3, 64, 37, "groups"),
    (BF16, 8, 130, 72, "groups"), (F32, 8, 130, 72, "one-group"),
])  # fmt: skip
def test_matches_reference(dtype, m: int, hidden: int, inter: int, name: str) -> None:
    h, res, g, w_gu, w_d = _inputs(m, hidden, inter, dtype, seed=m + hidden + inter)
    y, res_out = decode_mlp(h, res, g, 1e-5, w_gu, w_d, new_barrier("cpu"), CONFIGS[name])
    y_ref, res_ref = decode_mlp_ref(h, res, g, 1e-5, w_gu, w_d)
    assert y.shape == (m, hidden) and y.dtype == dtype
    # One rounding of the sum; the interpreter truncates fp32 -> bf16 instead of rounding to
    # nearest, so one bf16 ulp is allowed there (fp32 must be exact).
    res_rtol = 0.0 if dtype == torch.float32 else 2**-7
    torch.testing.assert_close(res_out, res_ref, atol=0, rtol=res_rtol)
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype,m,attn_width,hidden,inter,nq,with_next", [
    (F32, 1, 48, 64, 72, 80, True), (BF16, 3, 96, 40, 200, 24, True),
    (BF16, 1, 48, 64, 72, 80, False), (F32, 3, 96, 40, 200, 24, False),
])  # fmt: skip
def test_layer_tail_matches_reference(dtype, m, attn_width, hidden, inter, nq, with_next) -> None:
    """o_proj, the MLP and the next layer's norm + qkv: attention width A != hidden, row counts
    that do not divide among the programs."""
    h, res, g, w_gu, w_d = _inputs(m, hidden, inter, dtype, seed=m + inter)
    gen = torch.Generator().manual_seed(nq)
    attn = torch.randn(m, attn_width, generator=gen).to(dtype)
    w_o = (torch.randn(hidden, attn_width, generator=gen) / attn_width**0.5).to(dtype)
    g2 = (1 + 0.2 * torch.randn(hidden, generator=gen)).to(dtype)
    w_q = (torch.randn(nq, hidden, generator=gen) / hidden**0.5).to(dtype)
    nxt = dict(next_norm_weight=g2, next_eps=1e-6, next_qkv_weight=w_q) if with_next else {}
    cfg = CONFIGS["groups"] if with_next else CONFIGS["many-programs"]
    out, res_out = decode_layer_tail(attn, res, w_o, g, 1e-5, w_gu, w_d, new_barrier("cpu"),
                                     **nxt, config=cfg)  # fmt: skip
    want, want_res = decode_layer_tail_ref(attn, res, w_o, g, 1e-5, w_gu, w_d, **nxt)
    assert out.shape == ((m, nq) if with_next else (m, hidden))
    atol, rtol = TOL[dtype]  # bf16: four chained roundings, so atol scales with the output
    for got, ref in ((res_out, want_res), (out, want)):
        torch.testing.assert_close(got, ref, atol=atol * ref.abs().max().item(), rtol=rtol)


def test_reference_against_float64() -> None:
    """The reference itself, against the MLP written out in float64."""
    h, res, g, w_gu, w_d = (t.double() for t in _inputs(2, 48, 40, torch.float32, seed=3))
    s = h + res
    x = g * s / torch.sqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5)
    gate, up = (x @ w_gu.T).chunk(2, dim=-1)
    exact = (F.silu(gate) * up) @ w_d.T
    y_ref, res_ref = decode_mlp_ref(*(t.float() for t in (h, res, g)), 1e-5, w_gu.float(),
                                    w_d.float())  # fmt: skip
    torch.testing.assert_close(y_ref.double(), exact, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(res_ref.double(), s, atol=1e-6, rtol=1e-6)


def test_errors() -> None:
    h, res, g, w_gu, w_d = _inputs(1, 32, 24, torch.float32, seed=0)
    bar = new_barrier("cpu")
    with pytest.raises(ValueError, match="1..8 rows"):
        decode_mlp(torch.randn(9, 32), torch.randn(9, 32), g, 1e-5, w_gu, w_d, bar)
    with pytest.raises(ValueError, match="down_weight: expected a contiguous"):
        decode_mlp(h, res, g, 1e-5, w_gu, w_d.T.contiguous(), bar)
    with pytest.raises(ValueError, match="residual: expected dtype"):
        decode_mlp(h, res.double(), g, 1e-5, w_gu, w_d, bar)
    with pytest.raises(ValueError, match="needs cooperative"):
        decode_mlp(h, res, g, 1e-5, w_gu, w_d, bar,
                   DecodeMLPConfig(programs_per_sm=2, cooperative=False))
    with pytest.raises(ValueError, match="barrier"):
        decode_mlp(h, res, g, 1e-5, w_gu, w_d, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="give both or neither"):
        decode_layer_tail(h, res, torch.eye(32), g, 1e-5, w_gu, w_d, bar, next_norm_weight=g)

"""Counter-based uniform noise: `u = f(seed, counter, token id)`, with no RNG state.

The sampler draws with the Gumbel-max trick, so each request needs one uniform number per token
per step. Instead of a per-request `torch.Generator`, every number is a hash of the request's seed,
the index of the token being sampled (`counter`) and the vocabulary index. A request's samples then
depend on nothing but its own seed and position: not on its batch mates, the batch order, the
device, or whether it was preempted and recomputed.

The hash is splitmix64 (Steele, Lea & Flood 2014), in two levels:

    row_key  = mix64(mix64(seed) + counter * GAMMA)          # one per (request, step)
    bits     = mix64(row_key + (token_id + 1) * GAMMA)       # one per vocabulary entry
    u        = ((bits >>> 41) + 0.5) / 2**23                 # 23 bits -> float32, in (0, 1)

using only 64-bit wrapping multiplication, xor and logical right shifts, so a Triton kernel can
reproduce it bit for bit. torch has no uint64 arithmetic: everything runs on int64, where `*`
wraps mod 2**64 like uint64 but `>>` is arithmetic, so logical shifts mask the sign-extended bits.
`u` takes 23 bits so that every value `(2k + 1) / 2**24` is exact in float32: the smallest is
2**-24 and the largest 1 - 2**-24, never 0 or 1.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _as_int64(c: int) -> int:
    """The int64 with the same 64 bits as the unsigned constant `c`."""
    return c - (1 << 64) if c >= 1 << 63 else c


GAMMA = _as_int64(0x9E3779B97F4A7C15)  # splitmix64's increment: 2**64 / golden ratio, odd
_MIX1 = _as_int64(0xBF58476D1CE4E5B9)
_MIX2 = _as_int64(0x94D049BB133111EB)
_U_BITS = 23


def _shr(x: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 bits by `s` in [1, 63]."""
    return torch.bitwise_right_shift(x, s).bitwise_and_((1 << (64 - s)) - 1)


def mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 bits (a bijection of 64-bit words); returns a new tensor."""
    z = z ^ _shr(z, 30)
    z.mul_(_MIX1)
    z.bitwise_xor_(_shr(z, 27)).mul_(_MIX2)
    return z.bitwise_xor_(_shr(z, 31))


def row_keys(seeds: Tensor, counters: Tensor) -> Tensor:
    """One key per (request, step). seeds, counters: int64 [B] -> int64 [B]."""
    return mix64(mix64(seeds) + counters * GAMMA)


def _bits_to_unit(bits: Tensor) -> Tensor:
    # k: [...] in [0, 2**23); (k + 0.5) / 2**23 is exact in float32.
    k = _shr(bits, 64 - _U_BITS).to(torch.float32)
    return k.mul_(2.0**-_U_BITS).add_(2.0 ** -(_U_BITS + 1))


def uniform_noise_at(seeds: Tensor, counters: Tensor, token_ids: Tensor) -> Tensor:
    """u for chosen vocabulary entries. seeds, counters: int64 [B]; token_ids: int64 [B, K].

    Returns float32 [B, K], equal to `uniform_noise(seeds, counters, V).gather(1, token_ids)`.
    """
    keys = row_keys(seeds, counters)  # [B]
    return _bits_to_unit(mix64(keys[:, None] + (token_ids + 1) * GAMMA))


def uniform_noise(seeds: Tensor, counters: Tensor, vocab_size: int) -> Tensor:
    """u for every vocabulary entry. seeds, counters: int64 [B] -> float32 [B, vocab_size]."""
    keys = row_keys(seeds, counters)  # [B]
    steps = torch.arange(1, vocab_size + 1, dtype=torch.int64, device=seeds.device) * GAMMA  # [V]
    return _bits_to_unit(mix64(keys[:, None] + steps[None, :]))


def gumbel_from_uniform(u: Tensor) -> Tensor:
    """Standard Gumbel noise `-log(-log(u))`; finite because u is strictly inside (0, 1)."""
    return u.log().neg_().log_().neg_()

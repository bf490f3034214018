"""Counter-based noise: bit-exact against a pure-Python splitmix64, in (0, 1), uniform."""

import torch

from raylight.engine.sampling_noise import (
    GAMMA,
    mix64,
    uniform_noise,
    uniform_noise_at,
)

_MASK = (1 << 64) - 1
_GAMMA_U = 0x9E3779B97F4A7C15


def _mix_ref(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def uniform_ref(seed: int, counter: int, token: int) -> float:
    """The specification a Triton kernel must match bit for bit (uint64 arithmetic)."""
    key = _mix_ref(_mix_ref(seed) + counter * _GAMMA_U)
    bits = _mix_ref(key + (token + 1) * _GAMMA_U)
    return ((bits >> 41) + 0.5) / 2**23


def test_mix64_is_splitmix64() -> None:
    # splitmix64 seeded with 0 first returns mix(GAMMA) = 0xE220A8397B1DCDAF.
    assert mix64(torch.tensor([GAMMA])).item() & _MASK == 0xE220A8397B1DCDAF
    gen = torch.Generator().manual_seed(0)
    z = torch.randint(-(2**63), 2**63 - 1, (64,), dtype=torch.int64, generator=gen)
    got = [v & _MASK for v in mix64(z).tolist()]
    assert got == [_mix_ref(v) for v in z.tolist()]


def test_noise_matches_python_reference() -> None:
    seeds = [0, 1, 12345, 2**63 - 1, 2**62 + 7, 987654321987]
    counters = [0, 3, 1, 0, 4095, 2**31 + 5]
    u = uniform_noise(torch.tensor(seeds), torch.tensor(counters), 37)  # [6, 37]
    for b, (seed, counter) in enumerate(zip(seeds, counters, strict=True)):
        assert u[b].tolist() == [uniform_ref(seed, counter, t) for t in range(37)]


def test_noise_strictly_inside_unit_interval_and_uniform() -> None:
    seeds = torch.arange(64, dtype=torch.int64) * 7919
    counters = torch.arange(64, dtype=torch.int64) % 5
    u = uniform_noise(seeds, counters, 4099).flatten().double()  # 262k draws
    assert u.min() > 0.0 and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 3e-3
    assert abs(u.var().item() - 1 / 12) < 2e-3
    # Kolmogorov-Smirnov distance to U(0, 1); the 1% critical value here is about 0.0032.
    n = u.numel()
    ecdf_hi = torch.arange(1, n + 1, dtype=torch.float64) / n
    sorted_u = u.sort().values
    ks = torch.maximum(ecdf_hi - sorted_u, sorted_u - (ecdf_hi - 1 / n)).max().item()
    assert ks < 0.004
    # Neighbouring tokens and neighbouring counters are uncorrelated.
    grid = uniform_noise(torch.full((2000,), 5), torch.arange(2000), 2)  # [2000, 2]
    for a, b in [(grid[:, 0], grid[:, 1]), (grid[:-1, 0], grid[1:, 0])]:
        corr = torch.corrcoef(torch.stack([a, b]).double())[0, 1].item()
        assert abs(corr) < 0.08


def test_noise_independent_of_batch_layout() -> None:
    seeds = torch.tensor([11, 22, 33, 44, 55])
    counters = torch.tensor([0, 7, 7, 1, 100])
    batch = uniform_noise(seeds, counters, 50)
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert torch.equal(uniform_noise(seeds[perm], counters[perm], 50), batch[perm])
    for b in range(5):
        alone = uniform_noise(seeds[b : b + 1], counters[b : b + 1], 50)
        assert torch.equal(alone[0], batch[b])
    # A different seed or counter changes the noise.
    assert not torch.equal(batch[1], batch[2])
    assert not torch.equal(uniform_noise(torch.tensor([22]), torch.tensor([8]), 50)[0], batch[1])


def test_noise_at_equals_gather_of_full_noise() -> None:
    seeds, counters = torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2])
    token_ids = torch.tensor([[0, 9, 3], [49, 1, 1], [7, 8, 20]])
    full = uniform_noise(seeds, counters, 50)
    assert torch.equal(uniform_noise_at(seeds, counters, token_ids), full.gather(1, token_ids))

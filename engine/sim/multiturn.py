"""Multi-turn chat trace: conversations over a few shared system prompts, where each turn's
prompt is the previous prompt + the previous answer + a new user message (token for token what
the simulator generated, so a prefix cache can hit on the whole history)."""

from __future__ import annotations

import numpy as np

from raylight.engine.sim.workloads import EOS, FILLER, Workload

_VOCAB = 32000
_MAX_MODEL_LEN = 16384
_CAP = 2048
_NUM_SYSTEM_PROMPTS = 8
_MEAN_TURNS = 4.0
_THINK_S = 10.0  # mean pause between an answer's arrival and the next question (open loop)


def _lognormal(rng: np.random.Generator, mean: float, sigma: float) -> int:
    return int(rng.lognormal(np.log(mean) - sigma**2 / 2, sigma))


def _conversation(
    rng: np.random.Generator, system: list[np.ndarray]
) -> tuple[list[int], list[int], np.ndarray]:
    """(prompt lengths, answer lengths, token sequence) of one conversation; turns stop before
    a prompt + max_tokens would pass the context length."""
    seq = [system[rng.integers(len(system))]]
    used = len(seq[0])
    prompts, answers = [], []
    for _ in range(1 + rng.geometric(1.0 / (_MEAN_TURNS - 1))):
        user = rng.integers(2, _VOCAB, max(1, _lognormal(rng, 80, 1.0)), dtype=np.int32)
        answer = int(np.clip(_lognormal(rng, 250, 0.9), 1, 1500))
        if used + len(user) + _CAP > _MAX_MODEL_LEN:
            break
        seq.append(user)
        used += len(user)
        prompts.append(used)
        answers.append(answer)
        reply = np.full(answer, FILLER, dtype=np.int32)
        reply[-1] = EOS
        seq.append(reply)
        used += answer
    return prompts, answers, np.concatenate(seq)


def multiturn(n: int, rate: float, seed: int) -> Workload:
    """Conversations start as a Poisson process at rate / mean turns; turn k+1 arrives 2 s per
    100 answer tokens plus an exponential think time (mean 10 s) after turn k. System prompts
    (8 of them, ~1000 tokens) are shared by all conversations. max_tokens 2048."""
    rng = np.random.default_rng([seed, 0])
    arrivals_rng = np.random.default_rng([seed, 1])
    system = [
        rng.integers(2, _VOCAB, int(np.clip(_lognormal(rng, 1000, 0.5), 200, 2000)), np.int32)
        for _ in range(_NUM_SYSTEM_PROMPTS)
    ]
    arrival, prompt_len, out, start, chunks = [], [], [], [], []
    offset, t = 0, 0.0
    while len(arrival) < n:
        prompts, answers, seq = _conversation(rng, system)
        t += arrivals_rng.exponential(_MEAN_TURNS / rate)
        turn_t = t
        for p, a in zip(prompts, answers):
            arrival.append(turn_t)
            prompt_len.append(p)
            out.append(a)
            start.append(offset)
            turn_t += 0.02 * a + arrivals_rng.exponential(_THINK_S)
        chunks.append(seq)
        offset += len(seq)
    order = np.argsort(np.asarray(arrival), kind="stable")[:n]
    return Workload(
        name="multiturn",
        rate=rate,
        arrival=np.asarray(arrival)[order],
        prompt_len=np.asarray(prompt_len, dtype=np.int64)[order],
        output_len=np.asarray(out, dtype=np.int64)[order],
        max_tokens=np.full(n, _CAP, dtype=np.int64),
        start=np.asarray(start, dtype=np.int64)[order],
        tokens=np.concatenate(chunks),
        max_model_len=_MAX_MODEL_LEN,
    )

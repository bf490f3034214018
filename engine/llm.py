"""The offline API: `LLM(model=DIR).generate(prompts, SamplingParams(...))`, as in vLLM."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from raylight.engine.config import EngineOptions, resolve_engine_config
from raylight.engine.engine_core import EngineCore
from raylight.engine.model_config import load_arch_config
from raylight.engine.model_runner import ModelRunner
from raylight.engine.outputs import CompletionOutput, RequestOutput, TokenLogprob
from raylight.engine.parallel import SINGLE_RANK
from raylight.engine.sampling_params import SamplingParams
from raylight.engine.tokenizer import load_tokenizer

Prompt = str | list[int]


def create_engine_core(model: str | Path, options: EngineOptions, progress: bool) -> EngineCore:
    model_dir = Path(model)
    config = resolve_engine_config(model_dir, load_arch_config(model_dir), options)
    if config.tensor_parallel_size != 1:
        from raylight.engine.tp_engine import create_tp_engine_core

        return create_tp_engine_core(config, progress)
    return EngineCore(config, ModelRunner(config, SINGLE_RANK, progress))


def engine_options(options: dict) -> EngineOptions:
    known = {f.name for f in dataclasses.fields(EngineOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown engine option(s) {unknown}; known: {sorted(known)}")
    return EngineOptions(**options)


class LLM:
    """Loads a model directory and generates from prompts (strings or token-id lists)."""

    def __init__(self, model: str | Path, *, progress: bool = True, **options: object) -> None:
        self.core = create_engine_core(model, engine_options(options), progress)
        self.tokenizer = load_tokenizer(model)
        self._next_id = 0

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        prompt_list = _as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params] * len(prompt_list)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompt_list):
                raise ValueError("give one SamplingParams, or one per prompt")
        outputs: list[RequestOutput] = []
        by_id: dict[str, tuple[RequestOutput, CompletionOutput, bool]] = {}
        # Validate everything before adding anything, so a bad prompt leaves the engine clean.
        staged = []
        for prompt, params in zip(prompt_list, params_list):
            ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
            rid = str(self._next_id)
            self._next_id += 1
            out = RequestOutput(rid, prompt if isinstance(prompt, str) else None, ids)
            for j in range(params.n):
                req = self.core.make_request(f"{rid}-{j}", ids, params, sample_index=j)
                completion = CompletionOutput(j, "", [], None, [] if params.logprobs else None)
                by_id[req.request_id] = (out, completion, params.logprobs is not None)
                out.outputs.append(completion)
                staged.append(req)
            outputs.append(out)
        for req in staged:
            self.core.add(req)
        bar = tqdm(total=len(staged), desc="Generating", disable=not use_tqdm)
        while self.core.has_unfinished:
            for delta in self.core.step():
                out, completion, wants_logprobs = by_id[delta.request_id]
                if delta.num_cached_tokens is not None:
                    out.num_cached_tokens = max(out.num_cached_tokens or 0, delta.num_cached_tokens)
                completion.token_ids.extend(delta.new_token_ids)
                if wants_logprobs and delta.new_logprobs and completion.logprobs is not None:
                    for tok, (lp, top) in zip(delta.new_token_ids, delta.new_logprobs):
                        completion.logprobs.append(TokenLogprob(tok, lp, tuple(top)))
                if delta.finish_reason is not None:
                    completion.finish_reason = delta.finish_reason
                    bar.update(1)
        bar.close()
        for out in outputs:
            for c in out.outputs:
                c.text = self.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        return outputs


def _as_prompt_list(prompts: Prompt | Sequence[Prompt]) -> list[Prompt]:
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
        return [prompts]  # one prompt given as token ids
    return list(prompts)  # type: ignore[arg-type]

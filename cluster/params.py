"""A validated OpenAI request -> the engine's `SamplingParams` and the detokenizer's options.

The engine samples token ids; text concerns (stop strings, special tokens) belong to the
detokenizer, so they travel separately as `TextOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from raylight.cluster.errors import bad_request, from_sampling_params_error
from raylight.cluster.protocol_requests import ChatCompletionRequest, CompletionRequest
from raylight.engine.sampling_params import SamplingParams, SamplingParamsError

GenerationRequest: TypeAlias = CompletionRequest | ChatCompletionRequest


@dataclass(frozen=True, slots=True)
class TextOptions:
    """How generated token ids become text: drop special tokens, cut at the first stop string
    (keeping it only when `include_stop_str_in_output`)."""

    skip_special_tokens: bool = True
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False


def sampling_params_from(request: GenerationRequest, max_model_len: int) -> SamplingParams:
    """The engine's parameters for `request`; raises a 400 `OpenAIError` naming the request's
    field. `max_tokens` None means "up to the context length" (the engine resolves it per
    prompt); a limit that leaves no room for even a one-token prompt is refused here."""
    if isinstance(request, ChatCompletionRequest):
        max_tokens = request.max_output_tokens()
        max_param = request.max_tokens_param()
        # Chat: logprobs=true alone returns the sampled token's logprob (top 0).
        logprobs = (request.top_logprobs or 0) if request.logprobs else None
        rename: dict[str, str] = {"max_tokens": max_param, "logprobs": "top_logprobs"}
    else:
        max_tokens, max_param = request.max_tokens, "max_tokens"
        logprobs = request.logprobs
        rename = {}
    if max_tokens is not None and max_tokens >= max_model_len:
        raise bad_request(
            f"{max_param} must be less than the model's maximum context length "
            f"({max_model_len} tokens), got {max_tokens}",
            max_param,
        )
    try:
        return SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty,
            frequency_penalty=request.frequency_penalty,
            seed=request.seed,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            stop_token_ids=tuple(request.stop_token_ids),
            ignore_eos=request.ignore_eos,
            logprobs=logprobs,
        )
    except SamplingParamsError as exc:
        raise from_sampling_params_error(exc, rename) from None


def detokenize_options_from(request: GenerationRequest) -> TextOptions:
    return TextOptions(
        skip_special_tokens=request.skip_special_tokens,
        stop=request.stop_strings(),
        include_stop_str_in_output=request.include_stop_str_in_output,
    )

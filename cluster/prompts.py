"""Text <-> token ids at the ingress: chat templates, `/tokenize` and `/detokenize`."""

from __future__ import annotations

from typing import Any

from raylight.cluster.errors import bad_request
from raylight.cluster.protocol_tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizeRequest,
    TokenizeResponse,
)


def chat_prompt_ids(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    continue_final_message: bool = False,
    template_kwargs: dict[str, Any] | None = None,
) -> list[int]:
    """The conversation rendered by the model's chat template and tokenized; a template that
    refuses the conversation (it may raise on e.g. roles out of order) is the client's 400."""
    if add_generation_prompt and continue_final_message:
        raise bad_request(
            "add_generation_prompt and continue_final_message cannot both be true",
            "continue_final_message",
        )
    try:
        ids = tokenizer.apply_chat_template(
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=True,
            return_dict=False,
            **(template_kwargs or {}),
        )
    except (ValueError, TypeError, KeyError, LookupError) as exc:
        raise bad_request(f"The chat template could not render the messages: {exc}",
                          "messages") from None  # fmt: skip
    except Exception as exc:  # jinja2's TemplateError (raise_exception in templates)
        if type(exc).__module__.startswith("jinja2"):
            raise bad_request(f"The chat template refused the messages: {exc}",
                              "messages") from None  # fmt: skip
        raise
    return list(ids)


def tokenize(tokenizer: Any, req: TokenizeRequest, max_model_len: int) -> TokenizeResponse:
    if isinstance(req, TokenizeChatRequest):
        ids = chat_prompt_ids(
            tokenizer,
            req.template_messages(),
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message,
            template_kwargs=req.chat_template_kwargs,
        )
    else:
        ids = list(tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens))
    strs = tokenizer.convert_ids_to_tokens(ids) if req.return_token_strs else None
    return TokenizeResponse(count=len(ids), max_model_len=max_model_len, tokens=ids,
                            token_strs=strs)  # fmt: skip


def detokenize(tokenizer: Any, req: DetokenizeRequest, vocab_size: int) -> DetokenizeResponse:
    for i, token in enumerate(req.tokens):
        if token >= vocab_size:
            raise bad_request(
                f"token id {token} is out of range for this model's vocabulary "
                f"(size {vocab_size})",
                f"tokens[{i}]",
            )
    return DetokenizeResponse(prompt=tokenizer.decode(req.tokens))

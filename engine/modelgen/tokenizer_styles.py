"""Special tokens and chat templates of the two tokenizer families we imitate.

`llama3` follows Llama 3.1 Instruct (header-id chat format, BOS added on encode);
`chatml` follows Qwen2.5 Instruct (<|im_start|>/<|im_end|>, no BOS on encode).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

# Rendered text starts with the BOS token, so encode a rendered llama3 prompt with
# add_special_tokens=False (as `apply_chat_template(tokenize=True)` does) to avoid a double BOS.
_LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)

_CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


@dataclass(frozen=True, slots=True)
class TokenizerStyle:
    """Invariant: every token named in a field below is in `special_tokens`."""

    name: str
    special_tokens: tuple[str, ...]  # appended after the BPE (and filler) vocabulary, in order
    bos_token: str | None  # tokenizer_config bos_token; None = the tokenizer has none
    add_bos: bool  # encode() prepends bos_token
    eos_token: str  # tokenizer_config eos_token: ends an assistant turn
    pad_token: str
    config_bos_token: str  # config.json / generation_config.json bos_token_id
    stop_tokens: tuple[str, ...]  # config.json / generation_config.json eos_token_id list
    chat_template: str


TOKENIZER_STYLES: MappingProxyType[str, TokenizerStyle] = MappingProxyType({
    "llama3": TokenizerStyle(
        name="llama3",
        special_tokens=(
            "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|finetune_right_pad_id|>",
        ),
        bos_token="<|begin_of_text|>",
        add_bos=True,
        eos_token="<|eot_id|>",
        pad_token="<|finetune_right_pad_id|>",
        config_bos_token="<|begin_of_text|>",
        stop_tokens=("<|end_of_text|>", "<|eot_id|>"),
        chat_template=_LLAMA3_TEMPLATE,
    ),
    "chatml": TokenizerStyle(
        name="chatml",
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos_token=None,
        add_bos=False,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        config_bos_token="<|endoftext|>",
        stop_tokens=("<|endoftext|>", "<|im_end|>"),
        chat_template=_CHATML_TEMPLATE,
    ),
})

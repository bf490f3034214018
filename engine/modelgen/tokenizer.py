"""Train a byte-level BPE tokenizer in-process and write the HF tokenizer files.

Layout of the ids (total = `vocab_size`, equal to the model's vocab_size, so every id the model
can sample decodes to text):
  [0, bpe)                   byte alphabet + learned merges (bpe = bpe_vocab_size - specials)
  [bpe, vocab - specials)    filler: invented words that no merge produces (only for presets
                             whose real vocab is too large to learn from a small corpus)
  [vocab - specials, vocab)  the style's special tokens, like Llama 3 and Qwen2 put them last
Filler words live in the BPE vocabulary rather than as added tokens: 100k+ added tokens make
`AutoTokenizer.from_pretrained` take seconds, plain vocab entries load in ~0.2 s.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from raylight.engine.modelgen.corpus import corpus_lines, invented_word
from raylight.engine.modelgen.tokenizer_styles import TokenizerStyle

_BYTE_LEVEL_SPACE = "\u0120"  # "Ġ", how ByteLevel spells a leading space


def _train_bpe(num_tokens: int) -> Tokenizer:
    # ~1.25 lines per wanted token gives every merge enough pair counts; trains in ~1 s at 16k.
    num_lines = max(3000, num_tokens * 5 // 4)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=num_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(num_lines, lexicon_size=num_lines), trainer)
    return tok


def _pad_with_filler(tok: Tokenizer, num_tokens: int) -> Tokenizer:
    """Return a copy whose BPE vocab has exactly `num_tokens` entries (adds unreachable words)."""
    state = json.loads(tok.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    rng = random.Random(1)
    while len(vocab) < num_tokens:
        word = _BYTE_LEVEL_SPACE + invented_word(rng)
        if word not in vocab:
            vocab[word] = len(vocab)
    return Tokenizer.from_str(json.dumps(state))


def build_tokenizer(style: TokenizerStyle, bpe_vocab_size: int, vocab_size: int) -> Tokenizer:
    """Deterministic: the same arguments give the same tokenizer.json on every machine."""
    num_special = len(style.special_tokens)
    tok = _train_bpe(bpe_vocab_size - num_special)
    # Training may learn fewer merges than asked for; filler then makes up the difference.
    tok = _pad_with_filler(tok, vocab_size - num_special)
    tok.add_special_tokens(list(style.special_tokens))
    if tok.get_vocab_size() != vocab_size:
        raise AssertionError(f"tokenizer has {tok.get_vocab_size()} ids, wanted {vocab_size}")
    byte_level = processors.ByteLevel(trim_offsets=False)
    if style.add_bos:
        assert style.bos_token is not None
        bos = (style.bos_token, tok.token_to_id(style.bos_token))
        template = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B:1", special_tokens=[bos]
        )
        tok.post_processor = processors.Sequence([byte_level, template])
    else:
        tok.post_processor = byte_level
    return tok


def special_token_id(tok: Tokenizer, token: str) -> int:
    token_id = tok.token_to_id(token)
    if token_id is None:
        raise KeyError(token)
    return token_id


def _tokenizer_config(tok: Tokenizer, style: TokenizerStyle, model_max_length: int) -> dict:
    added: dict[str, Any] = {
        str(special_token_id(tok, t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for t in style.special_tokens
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": style.bos_token,
        "eos_token": style.eos_token,
        "pad_token": style.pad_token,
        "add_bos_token": style.add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "chat_template": style.chat_template,
    }


def write_tokenizer_files(
    tok: Tokenizer, style: TokenizerStyle, out_dir: Path, model_max_length: int
) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir."""
    tok.save(str(out_dir / "tokenizer.json"))
    config = _tokenizer_config(tok, style, model_max_length)
    special_map = {
        key: config[key] for key in ("bos_token", "eos_token", "pad_token") if config[key]
    }
    for name, payload in (
        ("tokenizer_config.json", config), ("special_tokens_map.json", special_map)
    ):
        (out_dir / name).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")

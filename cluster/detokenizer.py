"""Incremental detokenization for streaming: token ids in, UTF-8-safe text deltas out.

The emitted text, deltas plus `finish()`, equals `tokenizer.decode(output_ids,
skip_special_tokens=...)` exactly for any chunking of the ids (cut at the first stop string, if
any). Each token costs two decodes of a short window, never a decode of the whole output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from raylight.cluster.stop_strings import StopStringBuffer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_REPLACEMENT_CHAR = "\ufffd"  # what decode() makes of bytes that are not (yet) a whole character


@dataclass(frozen=True, slots=True)
class DetokenizeParams:
    skip_special_tokens: bool = True
    stop: tuple[str, ...] = ()  # stop strings, each non-empty
    include_stop_str_in_output: bool = False
    # Passed to tokenizer.decode; fast (Rust) tokenizers ignore it, as HF decode does.
    spaces_between_special_tokens: bool = True

    def __post_init__(self) -> None:
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")


@dataclass(slots=True)
class DetokenizeDelta:
    text: str  # text to send now (may be "")
    # Set only in the delta where a stop string is found: the caller must end the request
    # (abort it in the engine) and report finish_reason "stop".
    stop_matched: str | None
    # How many of the tokens given so far belong to the output: all of them until a stop string
    # hits, then the tokens up to and including the one that completed it (fixed from then on).
    num_tokens_used: int


class WindowDecoder:
    """The prefix-offset/read-offset technique (vLLM, HF TextStreamer) over one id sequence.

    Invariants: ids[:read_offset] has been turned into text, and that text ended in a whole
    character; prefix_text == decode(ids[prefix_offset:read_offset]). Decoding the window
    ids[prefix_offset:] rather than ids[read_offset:] keeps context-dependent decoders (a
    SentencePiece leading space, byte-level merges) consistent with decoding everything.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text = ""

    def push(self, token_id: int) -> str:
        """Add one id; return the text that became final (held while it ends in U+FFFD)."""
        self._ids.append(token_id)
        window = self._decode(self._ids[self._prefix_offset:])
        if len(window) <= len(self._prefix_text) or window.endswith(_REPLACEMENT_CHAR):
            return ""
        return self._advance(window)

    def flush(self) -> str:
        """No more ids: return what is held, trailing U+FFFD included (as decode() gives it)."""
        if self._read_offset == len(self._ids):
            return ""
        window = self._decode(self._ids[self._prefix_offset:])
        return self._advance(window) if len(window) > len(self._prefix_text) else ""

    def _advance(self, window: str) -> str:
        new_text = window[len(self._prefix_text):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        return new_text


class IncrementalDetokenizer:
    """One request's output text, built as its token ids stream in.

    `prompt_token_ids` is accepted for the vLLM-shaped interface but not put in the decode
    window: the text must equal decode(output_ids) alone (what OpenAI-compatible servers
    return), and prompt context would add a SentencePiece leading space to the first token or
    join a prompt's trailing partial character to the output's first bytes.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_token_ids: list[int],
        params: DetokenizeParams,
    ) -> None:
        del prompt_token_ids  # see the class docstring

        def decode(ids: list[int]) -> str:
            text = tokenizer.decode(
                ids,
                skip_special_tokens=params.skip_special_tokens,
                spaces_between_special_tokens=params.spaces_between_special_tokens,
            )
            assert isinstance(text, str)
            return text

        self._decoder = WindowDecoder(decode)
        self._stops = StopStringBuffer(params.stop, params.include_stop_str_in_output)
        self._chunks: list[str] = []
        self._num_tokens = 0
        self._finished = False

    @property
    def text(self) -> str:
        """All text emitted so far."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    @property
    def stopped(self) -> str | None:
        """The stop string that matched, if any."""
        return self._stops.matched

    def add_tokens(self, token_ids: list[int]) -> DetokenizeDelta:
        """Feed newly generated ids; return the text that is safe to send now."""
        if self._finished:
            raise RuntimeError("add_tokens after finish")
        if self._stops.matched is not None:
            return DetokenizeDelta("", None, self._num_tokens)
        pieces: list[str] = []
        for token_id in token_ids:
            # One id at a time, so that a stop string is charged to the token that completed it.
            self._num_tokens += 1
            pieces.append(self._stops.append(self._decoder.push(token_id)))
            if self._stops.matched is not None:
                break
        return self._delta("".join(pieces))

    def finish(self) -> DetokenizeDelta:
        """The request ended: flush held text (a trailing partial character becomes U+FFFD).

        A stop string can still hit here, inside text held for an incomplete character; then
        `stop_matched` is set, the finish reason is "stop", and every token given counts as used.
        Later calls return an empty delta; add_tokens after finish raises.
        """
        if self._finished or self._stops.matched is not None:
            self._finished = True
            return DetokenizeDelta("", None, self._num_tokens)
        self._finished = True
        text = self._stops.append(self._decoder.flush())
        if self._stops.matched is None:
            text += self._stops.flush()
        return self._delta(text)

    def _delta(self, text: str) -> DetokenizeDelta:
        # Callers return early once a stop has hit, so a stop seen here was found just now.
        if text:
            self._chunks.append(text)
        return DetokenizeDelta(text, self._stops.matched, self._num_tokens)

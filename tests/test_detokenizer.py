"""Incremental detokenizer: emitted text against `tokenizer.decode` of all ids, stop strings
against a brute-force search of the full text, for random chunkings (hypothesis)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from raylight.cluster.detokenizer import (
    DetokenizeDelta,
    DetokenizeParams,
    IncrementalDetokenizer,
)
from raylight.cluster.stop_strings import StopStringBuffer

ARCHS = ("llama", "qwen2")  # llama3-style and chatml-style byte-level BPE
WORDS = (" the", " quick", "brown", " fox", "\n", "  ", "ab", "世界", "日本語", "テキスト",
         "😀", "👍🏽", "🎉", "é", "naïve", " café", "—", "中", "!", "12")
ALPHABET = "ab c\n世界日本😀👍🏽🎉éñ—"
SPECIAL = "<special>"  # placeholder drawn among the pieces, replaced by a special token id
HYPO = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def toks(tiny_models: dict[str, Path]) -> dict[str, PreTrainedTokenizerBase]:
    return {arch: AutoTokenizer.from_pretrained(tiny_models[arch]) for arch in ARCHS}


def special_ids(tok: PreTrainedTokenizerBase) -> list[int]:
    return sorted(i for i, t in tok.added_tokens_decoder.items() if t.special)


def run(
    tok: PreTrainedTokenizerBase,
    ids: list[int],
    cuts: list[int],
    params: DetokenizeParams,
    prompt: list[int] | None = None,
) -> tuple[list[DetokenizeDelta], IncrementalDetokenizer]:
    """Feed `ids` split at `cuts` (sorted; repeats give empty chunks), then finish."""
    detok = IncrementalDetokenizer(tok, prompt or [], params)
    bounds = [0, *sorted(cuts), len(ids)]
    deltas = [detok.add_tokens(ids[a:b]) for a, b in zip(bounds, bounds[1:])]
    deltas.append(detok.finish())
    return deltas, detok


def first_stop(text: str, stops: tuple[str, ...]) -> tuple[int, int] | None:
    """Brute force: (start, end) of the occurrence that ends first (ties: starts first)."""
    hits = [(i + len(s), i) for s in stops for i in range(len(text)) if text.startswith(s, i)]
    return (min(hits)[1], min(hits)[0]) if hits else None


def expected_output(text: str, stops: tuple[str, ...], include: bool) -> str:
    hit = first_stop(text, stops)
    return text if hit is None else text[: hit[1] if include else hit[0]]


@st.composite
def text_ids(draw: st.DrawFn, tok: PreTrainedTokenizerBase, with_special: bool) -> list[int]:
    piece = st.one_of(st.sampled_from(WORDS), st.text(ALPHABET, max_size=4))
    if with_special:
        piece = st.one_of(piece, st.just(SPECIAL))
    ids: list[int] = []
    for p in draw(st.lists(piece, max_size=12)):
        if p == SPECIAL:
            ids.append(draw(st.sampled_from(special_ids(tok))))
        else:
            ids.extend(tok.encode(p, add_special_tokens=False))
    return ids


def draw_cuts(data: st.DataObject, n: int) -> list[int]:
    return data.draw(st.lists(st.integers(0, n), max_size=n + 2))


@pytest.mark.parametrize("arch", ARCHS)
@HYPO
@given(data=st.data(), skip=st.booleans())
def test_text_equals_decode_for_any_chunking(toks, arch, data, skip) -> None:
    tok = toks[arch]
    ids = data.draw(text_ids(tok, with_special=True))
    deltas, detok = run(tok, ids, draw_cuts(data, len(ids)), DetokenizeParams(skip))
    full = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(d.text for d in deltas) == detok.text == full
    # The ids come from whole strings: no delta may carry a piece of a character.
    assert all("\ufffd" not in d.text for d in deltas)
    assert all(d.stop_matched is None for d in deltas)
    assert deltas[-1].num_tokens_used == len(ids)


@pytest.mark.parametrize("arch", ARCHS)
@HYPO
@given(data=st.data(), skip=st.booleans())
def test_random_ids_including_invalid_utf8(toks, arch, data, skip) -> None:
    tok = toks[arch]
    ids = data.draw(st.lists(st.integers(0, len(tok) - 1), max_size=40))
    deltas, detok = run(tok, ids, draw_cuts(data, len(ids)), DetokenizeParams(skip))
    assert "".join(d.text for d in deltas) == tok.decode(ids, skip_special_tokens=skip)


def stable_prefix_tokens(tok, ids: list[int], skip: bool, stops: tuple[str, ...]) -> int:
    """Brute force: the fewest ids whose decode ends in a whole character and holds a stop."""
    for k in range(1, len(ids) + 1):
        text = tok.decode(ids[:k], skip_special_tokens=skip)
        if not text.endswith("\ufffd") and first_stop(text, stops) is not None:
            return k
    return len(ids)  # found only by finish(), in text held for a partial character


@pytest.mark.parametrize("arch", ARCHS)
@HYPO
@given(data=st.data(), skip=st.booleans(), include=st.booleans())
def test_stop_strings_against_brute_force(toks, arch, data, skip, include) -> None:
    tok = toks[arch]
    ids = data.draw(text_ids(tok, with_special=True))
    full = tok.decode(ids, skip_special_tokens=skip)
    substring = st.integers(0, len(full)).flatmap(
        lambda i: st.integers(i + 1, i + 6).map(lambda j: full[i:j]))
    stop_text = st.one_of(substring, st.text(ALPHABET, min_size=1, max_size=3))
    stops = tuple(s for s in data.draw(st.lists(stop_text, min_size=1, max_size=3)) if s)
    params = DetokenizeParams(skip, stops, include)
    deltas, detok = run(tok, ids, draw_cuts(data, len(ids)), params)

    assert "".join(d.text for d in deltas) == detok.text
    assert detok.text == expected_output(full, stops, include)
    hit = first_stop(full, stops)
    matched = [d.stop_matched for d in deltas if d.stop_matched is not None]
    if hit is None:
        assert matched == [] and detok.stopped is None
        assert deltas[-1].num_tokens_used == len(ids)
    else:
        assert matched == [full[hit[0]:hit[1]]] and detok.stopped == matched[0]
        assert deltas[-1].num_tokens_used == stable_prefix_tokens(tok, ids, skip, stops)


def ids_of(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("arch", ARCHS)
def test_stop_in_first_token_and_spanning_tokens(toks, arch) -> None:
    tok = toks[arch]
    ids = ids_of(tok, "The quick brown fox jumps over the lazy dog 世界")
    pieces = [tok.decode([i]) for i in ids]
    # A stop inside the very first token, fed as one chunk and one by one.
    for cuts in ([], list(range(1, len(ids)))):
        deltas, detok = run(tok, ids, cuts, DetokenizeParams(stop=(pieces[0][1:],)))
        assert detok.text == pieces[0][:1] and deltas[0].stop_matched == pieces[0][1:]
        assert deltas[-1].num_tokens_used == 1
    # A stop that starts inside token 4 ("ick") and ends inside token 9 (" f"): 6 tokens.
    span = "".join(pieces[4:10])[1:-1]
    assert len(pieces[4]) > 1 and len(pieces[9]) > 1
    deltas, detok = run(tok, ids, list(range(1, len(ids))), DetokenizeParams(stop=(span,)))
    before = "".join(pieces[:4]) + pieces[4][:1]
    assert detok.text == before and deltas[-1].num_tokens_used == 10
    assert deltas[9].stop_matched == span
    # Nothing past the stop's start was sent before the stop completed.
    assert "".join(d.text for d in deltas[:9]) == before
    deltas, detok = run(tok, ids, [], DetokenizeParams(stop=(span,),
                                                     include_stop_str_in_output=True))
    assert detok.text == before + span


def test_after_stop_deltas_are_empty_and_usage_is_fixed(toks) -> None:
    tok = toks["llama"]
    detok = IncrementalDetokenizer(tok, [], DetokenizeParams(stop=("fox",)))
    first = detok.add_tokens(ids_of(tok, " the quick brown fox jumps"))
    assert first.text == " the quick brown " and first.stop_matched == "fox"
    used = first.num_tokens_used
    assert used < len(ids_of(tok, " the quick brown fox jumps"))
    later = detok.add_tokens(ids_of(tok, " more text"))
    assert later == DetokenizeDelta("", None, used)
    assert detok.finish() == DetokenizeDelta("", None, used)
    assert detok.stopped == "fox" and detok.text == " the quick brown "


def test_empty_lists_and_special_first_token(toks) -> None:
    tok = toks["qwen2"]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for skip, want in ((True, " hi"), (False, "<|im_end|> hi")):
        detok = IncrementalDetokenizer(tok, [], DetokenizeParams(skip_special_tokens=skip))
        assert detok.add_tokens([]) == DetokenizeDelta("", None, 0)
        assert detok.add_tokens([eos]).text == want[: len(want) - 3]
        assert detok.add_tokens(ids_of(tok, " hi")).text == " hi"
        assert detok.add_tokens([]).text == "" and detok.finish().text == ""
        assert detok.text == want == tok.decode([eos, *ids_of(tok, " hi")],
                                                skip_special_tokens=skip)
    assert IncrementalDetokenizer(tok, [], DetokenizeParams()).finish().text == ""


@pytest.mark.parametrize("arch", ARCHS)
def test_partial_character_held_then_flushed_by_finish(toks, arch) -> None:
    tok = toks[arch]
    ids = ids_of(tok, "ok 世")
    assert tok.decode(ids[-1:]).endswith("\ufffd")  # the character spans several ids
    detok = IncrementalDetokenizer(tok, [], DetokenizeParams(stop=("\ufffd",)))
    sent = "".join(detok.add_tokens([i]).text for i in ids[:-1])
    assert sent == "ok " and detok.add_tokens(ids[-1:]).text == "世"
    # Cut mid-character: finish emits U+FFFD as decode does (and a stop string can hit there).
    for params in (DetokenizeParams(), DetokenizeParams(stop=("\ufffd",))):
        deltas, detok = run(tok, ids[:-1], list(range(1, len(ids) - 1)), params)
        assert all(not d.text.endswith("\ufffd") for d in deltas[:-1])
        assert detok.text == expected_output(tok.decode(ids[:-1]), params.stop, False)
        assert deltas[-1].stop_matched == (params.stop[0] if params.stop else None)


@pytest.mark.parametrize("arch", ARCHS)
def test_prompt_tail_does_not_leak_into_output(toks, arch) -> None:
    tok = toks[arch]
    # The prompt ends mid-character and mid-word; the output is its own decode regardless.
    whole = ids_of(tok, "Hello wor世界ld")
    for split in range(1, len(whole)):
        prompt, output = whole[:split], whole[split:]
        deltas, detok = run(tok, output, [], DetokenizeParams(), prompt=prompt)
        assert detok.text == tok.decode(output, skip_special_tokens=True)


class CountingTokenizer:
    """Wraps a tokenizer and records the length of every window it decodes."""

    def __init__(self, tok: PreTrainedTokenizerBase) -> None:
        self.tok = tok
        self.window_lens: list[int] = []

    def decode(self, ids: list[int], **kwargs: bool) -> str:
        self.window_lens.append(len(ids))
        text = self.tok.decode(ids, **kwargs)
        assert isinstance(text, str)
        return text


def test_two_thousand_tokens_one_at_a_time_is_linear_and_fast(toks) -> None:
    tok = toks["llama"]
    ids = (ids_of(tok, "The quick brown fox 世界 jumps over 😀 the lazy dog. ") * 60)[:2000]
    assert len(ids) == 2000
    counting = CountingTokenizer(tok)
    detok = IncrementalDetokenizer(counting, [], DetokenizeParams(stop=("STOP", "lazy cat")))
    out = "".join(detok.add_tokens([i]).text for i in ids) + detok.finish().text
    assert out == tok.decode(ids)
    # O(n): two decodes per token, of windows that stay short.
    assert len(counting.window_lens) <= 2 * len(ids) and max(counting.window_lens) <= 8
    best = float("inf")
    for _ in range(5):  # best of 5: the CI machine's two cores may be busy
        detok = IncrementalDetokenizer(tok, [], DetokenizeParams(stop=("STOP", "lazy cat")))
        start = time.perf_counter()
        for i in ids:
            detok.add_tokens([i])
        detok.finish()
        best = min(best, time.perf_counter() - start)
    print(f"2000 tokens one at a time: {best * 1e3:.1f} ms")
    # ~25 ms here; re-decoding the whole text per token (O(n^2)) takes seconds.
    assert best < 0.1


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.text("ab\n", max_size=5), max_size=8),
    stops=st.lists(st.text("ab\n", min_size=1, max_size=4), max_size=3).map(tuple),
    include=st.booleans(),
)
def test_stop_buffer_against_brute_force(chunks, stops, include) -> None:
    buf = StopStringBuffer(stops, include)
    released, seen = "", ""
    longest = max((len(s) for s in stops), default=1)
    for chunk in chunks:
        released += buf.append(chunk)
        seen += chunk
        if buf.matched is None:
            # Holds back at most max(len(stop)) - 1 characters (none when the stop is included).
            assert len(seen) - len(released) <= (0 if include else longest - 1)
        assert expected_output("".join(chunks), stops, include).startswith(released)
    released += buf.flush()
    assert released == expected_output("".join(chunks), stops, include)
    hit = first_stop("".join(chunks), stops)
    assert buf.matched == (None if hit is None else "".join(chunks)[hit[0]:hit[1]])


def test_stop_that_ends_first_wins_within_one_chunk() -> None:
    # "abc" starts first but "b" has fully appeared one character earlier: generation would
    # have stopped there had the text come one character at a time, so "b" wins in any chunking.
    for include, want in ((False, "xa"), (True, "xab")):
        buf = StopStringBuffer(("abc", "b"), include)
        assert buf.append("xabcd") == want and buf.matched == "b"
    buf = StopStringBuffer(("bc", "c"), False)  # same end: the one that starts first
    assert buf.append("abcd") == "a" and buf.matched == "bc"


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError):
        DetokenizeParams(stop=("",))


@pytest.fixture(scope="module")
def metaspace_tok() -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE: a word's leading space is part of its token ("▁world") and
    decode drops the space of the first token, so decoding ids one by one loses spaces."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    lines = [" ".join(WORDS[(i * 7 + j) % len(WORDS)].strip() or "x" for j in range(6))
             for i in range(60)]
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"],
                                                        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@HYPO
@given(data=st.data())
def test_sentencepiece_style_leading_spaces(metaspace_tok, data) -> None:
    tok = metaspace_tok
    words = data.draw(st.lists(st.sampled_from(["the", "quick", "brown", "fox", "世界", "ab"]),
                               min_size=1, max_size=8))
    ids = ids_of(tok, " ".join(words))
    one_by_one = "".join(str(tok.decode([i])) for i in ids)
    assert one_by_one != tok.decode(ids) or len(words) == 1  # the window is needed here
    deltas, detok = run(tok, ids, draw_cuts(data, len(ids)), DetokenizeParams())
    assert detok.text == tok.decode(ids)

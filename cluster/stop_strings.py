"""Stop strings over a growing text: find the first match, hold back what could start one.

Semantics (chunking-independent): generation stops at the first point of the text where any stop
string has fully appeared, i.e. at the occurrence with the smallest end offset (ties: the one that
starts first, so the longer stop wins). The output is the text before that occurrence (or up to
its end when the stop string is included). A server cannot wait for more tokens after a stop has
appeared, so an occurrence that starts earlier but ends later never wins.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StopMatch:
    stop: str
    start: int  # offset in the text searched
    end: int  # start + len(stop)


def find_first_stop(text: str, stops: tuple[str, ...], new_from: int) -> StopMatch | None:
    """The earliest-ending occurrence of a stop string that ends after offset `new_from`.

    Invariant the caller keeps: no occurrence ends at or before `new_from` (already searched).
    """
    best: StopMatch | None = None
    for stop in stops:
        start = text.find(stop, max(0, new_from - len(stop) + 1))
        if start < 0:
            continue
        match = StopMatch(stop, start, start + len(stop))
        if best is None or (match.end, match.start) < (best.end, best.start):
            best = match
    return best


def stop_prefixes(stops: tuple[str, ...]) -> frozenset[str]:
    """Every non-empty proper prefix of every stop string."""
    return frozenset(stop[:k] for stop in stops for k in range(1, len(stop)))


def held_suffix_len(text: str, prefixes: frozenset[str], max_len: int) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string.

    `max_len` bounds the search (the longest stop string's length minus one).
    """
    for k in range(min(max_len, len(text)), 0, -1):
        if text[-k:] in prefixes:
            return k
    return 0


class StopStringBuffer:
    """Takes decoded text in pieces; releases the part that can no longer be cut by a stop string.

    Invariants: released text is never retracted; without `include_stop`, released text never
    reaches into the start of a stop string; after a match nothing more is released. Holds only
    the longest suffix that is a prefix of some stop string (at most max(len(stop)) - 1 chars),
    so ordinary text is not delayed. Keeps only a bounded tail of the text, never all of it.
    """

    def __init__(self, stops: tuple[str, ...], include_stop: bool) -> None:
        if any(not stop for stop in stops):
            raise ValueError("stop strings must be non-empty")
        self._stops = stops
        self._include_stop = include_stop
        self._prefixes = stop_prefixes(stops)
        self._max_hold = max((len(s) for s in stops), default=1) - 1
        self._buf = ""  # the text from absolute offset _buf_start to _total
        self._buf_start = 0
        self._total = 0  # characters appended so far
        self._released = 0  # characters released so far (absolute)
        self.matched: str | None = None

    def append(self, text: str) -> str:
        """Add text; return the newly releasable text. Sets `matched` when a stop string hits."""
        if self.matched is not None or not text:
            return ""
        new_from = self._total - self._buf_start
        self._buf += text
        self._total += len(text)
        match = find_first_stop(self._buf, self._stops, new_from)
        if match is not None:
            self.matched = match.stop
            cut = match.end if self._include_stop else match.start
            return self._release_upto(self._buf_start + cut)
        hold = 0 if self._include_stop else held_suffix_len(self._buf, self._prefixes,
                                                           self._max_hold)
        released = self._release_upto(self._total - hold)
        # Keep what is unreleased plus enough context for a stop string that ends in later text.
        keep_from = min(self._released, self._total - self._max_hold)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:]
            self._buf_start = keep_from
        return released

    def flush(self) -> str:
        """The text is complete: release everything held (no stop string can complete now)."""
        if self.matched is not None:
            return ""
        return self._release_upto(self._total)

    def _release_upto(self, upto: int) -> str:
        if upto <= self._released:
            return ""
        out = self._buf[self._released - self._buf_start:upto - self._buf_start]
        self._released = upto
        return out

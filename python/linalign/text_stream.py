"""Turns generated token pieces into text that is safe to emit: whole UTF-8
characters only, and never any part of a stop string.

A token can end in the middle of a multi-byte character, and a stop string
can span several tokens, so text is held back until it is known to be final.
"""
from __future__ import annotations

import codecs
from typing import Sequence

__all__ = ["TextAssembler"]


class TextAssembler:
    """Accumulates token bytes; :meth:`push` returns the newly final text."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._stops = [s for s in stop if s]
        self._longest_stop = max((len(s) for s in self._stops), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """The text emitted so far."""
        return self._text[: self._emitted]

    @property
    def decoded_length(self) -> int:
        """Characters decoded so far (emitted or held back; after a stop,
        the text before it)."""
        return len(self._text)

    @property
    def emitted_length(self) -> int:
        """Characters emitted so far."""
        return self._emitted

    @property
    def pending_bytes(self) -> bool:
        """Whether the last pieces ended inside a multi-byte character (its
        bytes wait for the next piece)."""
        return bool(self._decoder.getstate()[0])

    def push(self, piece: bytes) -> str:
        """Adds one token's bytes; returns the text that became final.

        After a stop string is found, :attr:`stopped` is true and the text
        before it has been returned; the stop string itself never is.
        """
        if self.stopped:
            return ""
        if not self._stops:
            # nothing to hold back but an incomplete character (the decoder keeps it)
            delta = self._decoder.decode(piece)
            self._text += delta
            self._emitted = len(self._text)
            return delta
        search_from = max(0, len(self._text) - self._longest_stop + 1)
        self._text += self._decoder.decode(piece)
        cut = self._find_stop(search_from)
        if cut is not None:
            self.stopped = True
            self._text = self._text[:cut]
            return self._emit(cut)
        return self._emit(len(self._text) - self._held_back())

    def finish(self) -> str:
        """Flushes what was held back (the generation ended without a stop)."""
        if not self.stopped:
            self._text += self._decoder.decode(b"", final=True)
            cut = self._find_stop(max(0, self._emitted - self._longest_stop + 1))
            if cut is not None:
                self.stopped = True
                self._text = self._text[:cut]
        return self._emit(len(self._text))

    def _emit(self, end: int) -> str:
        end = max(end, self._emitted)
        delta = self._text[self._emitted : end]
        self._emitted = end
        return delta

    def _find_stop(self, search_from: int) -> int | None:
        hits = [i for i in (self._text.find(s, search_from) for s in self._stops) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could begin a stop string."""
        text = self._text
        longest = 0
        for stop in self._stops:
            # a tail that begins ``stop`` starts with its first character:
            # only those positions (usually none) are compared
            i = text.find(stop[0], max(len(text) - len(stop) + 1, 0))
            while i != -1 and len(text) - i > longest:
                if stop.startswith(text[i:]):
                    longest = len(text) - i
                    break
                i = text.find(stop[0], i + 1)
        return longest

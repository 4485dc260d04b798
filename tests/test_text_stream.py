"""TextAssembler (linalign.text_stream): token pieces in, text out, whole
UTF-8 characters only and never any part of a stop string. Checked against a
plain statement of the rules on random pieces: multi-byte characters split
anywhere, stop strings that span pieces, share prefixes or overlap.
"""
from __future__ import annotations

import codecs

from hypothesis import given, settings, strategies as st

from linalign.text_stream import TextAssembler


class ReferenceAssembler:
    """The rules, stated plainly: decode everything so far, cut at the first
    stop string, and hold back the longest tail that could begin one."""

    def __init__(self, stop):
        self.stops = [s for s in stop if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text, self.emitted, self.stopped = "", 0, False

    def _cut(self):
        hits = [i for i in (self.text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None

    def _emit(self, end):
        end = max(end, self.emitted)
        delta, self.emitted = self.text[self.emitted:end], end
        return delta

    def push(self, piece):
        if self.stopped:
            return ""
        self.text += self.decoder.decode(piece)
        cut = self._cut()
        if cut is not None:
            self.stopped, self.text = True, self.text[:cut]
            return self._emit(cut)
        held = max((n for n in range(1, len(self.text) + 1)
                    for s in self.stops if len(s) > n and s.startswith(self.text[-n:])), default=0)
        return self._emit(len(self.text) - held)

    def finish(self):
        if not self.stopped:
            self.text += self.decoder.decode(b"", final=True)
            cut = self._cut()
            if cut is not None:
                self.stopped, self.text = True, self.text[:cut]
        return self._emit(len(self.text))


ALPHABET = "ab<|>é€🙂\n "
text_of = st.text(alphabet=ALPHABET, min_size=0, max_size=40)
stops_of = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=6), max_size=3)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=400, deadline=None)
@given(text=text_of, stops=stops_of, cuts=st.lists(st.integers(0, 200), max_size=30))
def test_assembler_follows_the_rules(text, stops, cuts):
    pieces = _pieces(text.encode(), cuts)
    got, want = TextAssembler(stops), ReferenceAssembler(stops)
    for piece in pieces:
        assert got.push(piece) == want.push(piece), (pieces, stops)
        assert got.stopped == want.stopped
        assert got.emitted_length == want.emitted
    assert got.finish() == want.finish()
    assert got.text == want.text[:want.emitted]


@settings(max_examples=100, deadline=None)
@given(text=text_of, cuts=st.lists(st.integers(0, 200), max_size=30))
def test_without_stop_strings_everything_decoded_comes_out(text, cuts):
    assembler = TextAssembler(())
    out = "".join(assembler.push(p) for p in _pieces(text.encode(), cuts)) + assembler.finish()
    assert out == text
    assert not assembler.stopped


def test_a_stop_string_split_over_pieces_is_held_back_then_cut():
    assembler = TextAssembler(["<|im_end|>"])
    assert assembler.push(b"Hello <|im") == "Hello "
    assert assembler.push(b"_en") == ""
    assert assembler.push(b"d|> more") == ""
    assert assembler.stopped and assembler.text == "Hello "

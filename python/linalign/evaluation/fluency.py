"""How fluent generated answers are, measured by how much they repeat
themselves: a steered decoder that loops ("the ocean is the ocean is the
ocean...") can pass a checker while reading badly.

The main figure is **rep-4**: the share of an answer's word 4-grams that
repeat an earlier 4-gram of the same answer (seq-rep-4 of Welleck et al.,
"Neural Text Generation with Unlikelihood Training", ICLR 2020), averaged
over a method's answers. 0 is an answer that never repeats a 4-gram; a loop
approaches 1. Lower is better. Alongside it, **distinct-2** (Li et al., NAACL
2016): unique word bigrams over all bigrams of a method's answers (higher is
more varied).

Words are runs of letters and digits, lowercased; an answer of fewer than
four words has no 4-grams and counts as 0.
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

__all__ = ["distinct_n", "fluency", "repeated_ngram_share"]

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """The share of ``text``'s word n-grams that repeat an earlier one (0 when it has none)."""
    grams = _ngrams(_words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(texts: Iterable[str], n: int = 2) -> float:
    """Unique word n-grams over all word n-grams of ``texts`` (1.0 when there are none)."""
    grams = [g for t in texts for g in _ngrams(_words(t), n)]
    return len(set(grams)) / len(grams) if grams else 1.0


def fluency(texts: Sequence[str]) -> dict[str, float]:
    """``rep4`` (the mean rep-4 of the answers, the main figure) and ``distinct2``."""
    rep4 = sum(repeated_ngram_share(t) for t in texts) / len(texts) if texts else 0.0
    return {"rep4": rep4, "distinct2": distinct_n(texts)}

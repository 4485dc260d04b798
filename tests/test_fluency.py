"""The fluency column of the eval reports (linalign.evaluation.fluency):
rep-4, the share of an answer's word 4-grams that repeat an earlier one,
and distinct-2."""
from __future__ import annotations

import pytest

from linalign.evaluation.fluency import distinct_n, fluency, repeated_ngram_share


@pytest.mark.parametrize("text, share", [
    ("", 0.0),
    ("too short here", 0.0),                                   # fewer than four words: no 4-grams
    ("the cat sat on the mat", 0.0),                           # 3 distinct 4-grams
    ("a b c d a b c d", 1 / 5),                                # 5 4-grams, "a b c d" twice
    ("the sea " * 10, 1 - 2 / 17),                             # a loop: 17 4-grams, 2 distinct
    ("The Sea, the sea. THE SEA the sea", 1 - 2 / 5),          # case and punctuation do not separate words
])
def test_rep4_is_the_share_of_repeated_4grams(text, share) -> None:
    assert repeated_ngram_share(text) == pytest.approx(share)


def test_distinct2_counts_unique_bigrams_over_all_answers() -> None:
    assert distinct_n(["a b c", "a b d"]) == pytest.approx(3 / 4)  # a-b twice, b-c, b-d
    assert distinct_n([]) == 1.0


def test_fluency_averages_rep4_over_answers() -> None:
    result = fluency(["a b c d a b c d", "one two three four five"])
    assert result["rep4"] == pytest.approx((1 / 5 + 0.0) / 2)
    assert 0 < result["distinct2"] <= 1
    assert fluency([]) == {"rep4": 0.0, "distinct2": 1.0}

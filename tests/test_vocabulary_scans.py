"""The vocabulary scans of greedy decoding (cpp/linear_alignment_lanes.h):
the argmax, and the best combined logit among a nucleus's candidates, each a
max over four chains of 8 lanes then a search for its first position. They
must give numpy's answer, the first index among equals, wherever the equals
fall (the same lane, different chains, a later round, the scalar tail, a
later segment of 4096), with NaN and -inf never winning, on arrays of every
length. No model involved."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linalign import _core


def first_max(values: np.ndarray) -> int:
    """First index of the largest value that is not NaN, or -1 if none is
    above -inf."""
    ok = ~np.isnan(values) & (values > -np.inf)
    if not ok.any():
        return -1
    best = values[ok].max()
    return int(np.flatnonzero(ok & (values == best))[0])


@st.composite
def rows(draw, min_size: int = 1, max_size: int = 300):
    n = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    levels = draw(st.sampled_from([0, 1, 2, 3]))  # 0: continuous; else that many distinct values (ties)
    values = rng.normal(0, 2, n) if not levels else rng.integers(0, levels, n).astype(np.float64)
    values = values.astype(np.float32)
    for special in (np.nan, -np.inf):
        if draw(st.booleans()):
            values[rng.random(n) < draw(st.sampled_from([0.05, 0.5, 1.0]))] = special
    return values


@settings(max_examples=300, deadline=None)
@given(rows())
def test_argmax_is_the_first_index_of_the_max(values):
    want = first_max(values)
    got = _core.scan_argmax(values)
    if want >= 0:
        assert got == want
    else:  # nothing finite: std::max_element's answer, some index of the array
        assert 0 <= got < values.size


SEGMENT = 4096  # lanes_argmax searches only the first segment that holds the max


def _maxima_pairs(n: int, positions: set[int]):
    """Rows of n with two equal maxima at each pair a < b of the positions."""
    rng = np.random.default_rng(n)
    positions = sorted(p for p in positions if 0 <= p < n)
    for a in positions:
        for b in positions:
            if a < b:
                values = rng.normal(0, 1, n).astype(np.float32)
                values[[a, b]] = 50.0
                yield a, values


@pytest.mark.parametrize("n", [1, 7, 8, 31, 32, 33, 64, 95, 1000, 49152, 49155])
def test_argmax_ties_in_every_place(n):
    """Two equal maxima anywhere: the first wins, whichever chain, round or
    tail holds each."""
    for a, values in _maxima_pairs(n, {0, n - 1, n // 2, 8, 31, 32}):
        assert _core.scan_argmax(values) == a


@pytest.mark.parametrize("n", [SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 33, 49152])
def test_argmax_ties_across_segments(n):
    """Equal maxima in different segments, at their edges: the first wins;
    a segment of NaN or -inf before it changes nothing."""
    for a, values in _maxima_pairs(n, {0, SEGMENT - 1, SEGMENT, 2 * SEGMENT - 1, 2 * SEGMENT, n - 1}):
        assert _core.scan_argmax(values) == a
        values[: a - a % SEGMENT] = np.nan if a % 2 else -np.inf  # whole segments before a's
        assert _core.scan_argmax(values) == a


@settings(max_examples=30, deadline=None)
@given(rows(min_size=SEGMENT - 40, max_size=3 * SEGMENT + 40))
def test_argmax_over_several_segments(values):
    want = first_max(values)
    if want >= 0:
        assert _core.scan_argmax(values) == want


@settings(max_examples=300, deadline=None)
@given(rows(), st.floats(-1.0, 4.0, width=32), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_best_combined_is_the_first_index_of_the_best_candidate(logits_p, ratio, threshold, seed):
    rng = np.random.default_rng(seed)
    n = logits_p.size
    logits_b = (np.nan_to_num(logits_p, nan=0.0, neginf=0.0) + rng.normal(0, 1, n)).astype(np.float32)
    weight = rng.random(n).astype(np.float32)
    # the combine in float32 with the sampler's rounding: (1 + r) once, then
    # each product and the difference rounded (no fused multiply-add)
    r = np.float32(ratio)
    keep = np.float32(1.0) + r
    with np.errstate(invalid="ignore", over="ignore"):
        combined = keep * logits_p - r * logits_b
    # with no weights, every token is a candidate
    assert _core.scan_best_combined(logits_p, logits_b, ratio, None, threshold) == first_max(combined)
    combined = np.where(weight >= np.float32(threshold), combined, np.float32(-np.inf))
    assert _core.scan_best_combined(logits_p, logits_b, ratio, weight, threshold) == first_max(combined)


@pytest.mark.parametrize("n", [SEGMENT + 1, 3 * SEGMENT + 33])
def test_best_combined_ties_across_segments(n):
    rng = np.random.default_rng(n)
    logits_p = rng.normal(0, 1, n).astype(np.float32)
    logits_b = rng.normal(0, 1, n).astype(np.float32)
    weight = np.ones(n, dtype=np.float32)
    for a, b in [(SEGMENT - 1, SEGMENT), (0, n - 1), (SEGMENT, n - 1)]:
        if a >= b:
            continue
        p, q = logits_p.copy(), logits_b.copy()
        p[[a, b]], q[[a, b]] = 40.0, 1.0  # the same combined logit at both
        assert _core.scan_best_combined(p, q, 2.0, weight, 0.5) == a
        w = weight.copy()
        w[a] = 0.0  # a is no candidate: b is the best
        assert _core.scan_best_combined(p, q, 2.0, w, 0.5) == b


def test_best_combined_without_candidates_is_minus_one():
    values = np.zeros(100, dtype=np.float32)
    assert _core.scan_best_combined(values, values, 2.0, values, 0.5) == -1


def test_scans_refuse_what_is_not_a_row():
    with pytest.raises(ValueError):
        _core.scan_argmax(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError):
        _core.scan_best_combined(np.zeros(4, np.float32), np.zeros(5, np.float32), 1.0, np.zeros(4, np.float32), 0.0)


@settings(max_examples=300, deadline=None)
@given(rows(max_size=3000), st.sampled_from([0.01, 1.0, 5.0, 30.0]), st.sampled_from([1.0, 0.5, 2.0]),
       st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_approx_masses_bound_the_weights_masses(values, spread, inv_t, where, seed):
    """Greedy's quick test (linear_alignment_surely_in_nucleus) trusts that
    its cheap sums, times APPROX_LOW and APPROX_HIGH, bound the masses of the
    weights exp((l - max) inv_t), clamped at -87 as the weights are: every
    token's, and those of logit >= a given one. Logits of any spread (up to
    |l| ~ 100), ties, NaN and -inf."""
    logits = (values * np.float32(spread)).astype(np.float32)
    finite = logits[np.isfinite(logits)]
    max_logit = np.float32(finite.max()) if finite.size else np.float32(0.0)
    logit_min = np.float32(np.quantile(finite, where)) if finite.size else np.float32(0.0)
    with np.errstate(invalid="ignore"):
        z = (logits.astype(np.float64) - float(max_logit)) * inv_t
    z = np.where(np.isnan(z), -87.0, np.maximum(z, -87.0))
    weight = np.exp(z)
    all_, at_least = _core.scan_approx_masses(logits, float(max_logit), inv_t, float(logit_min))
    want_all, want_at_least = weight.sum(), weight[logits >= logit_min].sum()
    assert all_ * _core.APPROX_LOW <= want_all <= all_ * _core.APPROX_HIGH
    assert at_least * _core.APPROX_LOW <= want_at_least <= at_least * _core.APPROX_HIGH


def test_approx_masses_are_within_six_percent():
    """Not just bounds that hold: the sums are near the masses (the line
    between powers of two is at most 6.2% above exp), or the quick test
    would seldom decide."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2.4, 49152).astype(np.float32)
    max_logit = float(logits.max())
    all_, at_least = _core.scan_approx_masses(logits, max_logit, 1.0, float(np.sort(logits)[-6]))
    weight = np.exp(logits.astype(np.float64) - max_logit)
    assert 0.9999 <= all_ / weight.sum() <= 1.062
    assert 0.9999 <= at_least / np.sort(weight)[-6:].sum() <= 1.062


def test_approx_exp_is_bounded_token_by_token():
    """One token at a time over a fine grid of z in [-87, 0]: each
    approximate exp is within the bounds, and the line's excess reaches
    nearly all of the 6.15% that APPROX_LOW allows for."""
    ratios = []
    for z in np.linspace(-87.0, 0.0, 20001).astype(np.float32):
        approx, _ = _core.scan_approx_masses(np.array([z], dtype=np.float32), 0.0, 1.0, 0.0)
        exact = np.exp(np.float64(z))
        assert approx * _core.APPROX_LOW <= exact <= approx * _core.APPROX_HIGH
        ratios.append(approx / exact)
    assert max(ratios) > 1.06 and min(ratios) > 0.99999

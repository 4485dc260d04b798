"""Issue 12: the composed sampler against a numpy reference written from
docs/composition.md, over random logits (hypothesis): several principles
``l = l_0 + sum_i (1 + r_i) (l_i - l_0)`` inside the union of the principled
nuclei, and the negative form (one principle over a base that holds the
negative one). Ties, -inf, huge values and nuclei of one token included;
both of the sampler's entry points (dense, and a candidate array as after a
grammar)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from linalign import _core


def nucleus_bounds(logits: np.ndarray, top_p: float, temperature: float) -> tuple[set[int], set[int]]:
    """The top-p nucleus of one stream, as two sets that any correct nucleus
    lies between: the tokens strictly above the logit where the mass reaches
    top_p, and those at or above it (they differ only by ties there)."""
    finite = np.isfinite(logits)
    if not finite.any():
        everything = set(range(logits.size))
        return everything, everything
    if top_p >= 1.0:
        everything = set(range(logits.size))
        return everything, everything
    t = temperature if temperature > 0 else 1.0
    z = np.where(finite, (logits.astype(np.float64) - logits[finite].max()) / t, -np.inf)
    w = np.exp(z)
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(w[order])
    k = int(np.searchsorted(cum, top_p * cum[-1] * (1 - 1e-9), side="left")) + 1
    k = min(k, logits.size)
    edge = logits[order[k - 1]]
    # float rounding of the native mass can move the edge by one token
    # either way when weights there are nearly equal: widen by the next one
    lo_edge = logits[order[min(k, logits.size - 1)]]
    hi_edge = logits[order[max(k - 2, 0)]]
    strict = {int(i) for i in np.flatnonzero(logits > hi_edge)} if k > 1 else set()
    loose = {int(i) for i in np.flatnonzero(logits >= min(edge, lo_edge))}
    return strict, loose


def reference_combine(ids: np.ndarray, principled: list[np.ndarray], ratios: list[float],
                      base: np.ndarray) -> np.ndarray:
    """The composed logits of the kept tokens, in float32 as the sampler computes them."""
    out = np.empty(ids.size, dtype=np.float32)
    for j, i in enumerate(ids):
        l1 = np.float32(principled[0][i])
        if not np.isfinite(l1):
            out[j] = l1
            continue
        b = np.float32(base[i])
        one = np.float32(1.0)
        value = b + (one + np.float32(ratios[0])) * (l1 - b)
        for lk, r in zip(principled[1:], ratios[1:]):
            value = value + (one + np.float32(r)) * (np.float32(lk[i]) - b)
        out[j] = value
    return out


def check_composed(principled: list[np.ndarray], ratios: list[float], base: np.ndarray, top_p: float,
                   temperature: float, dense: bool) -> None:
    ids, values = _core.linear_alignment_apply(principled[0], base, ratios[0], top_p, temperature, dense,
                                               principled[1:], ratios[1:])
    kept = set(ids.tolist())
    assert len(kept) == ids.size, "a token is kept twice"
    strict, loose = set(), set()
    for lk in principled:
        s, lo = nucleus_bounds(lk, top_p, temperature)
        strict |= s
        loose |= lo
    assert strict <= kept <= loose
    # float32 both; the compiler may fuse a multiply-add the reference rounds twice
    np.testing.assert_allclose(values, reference_combine(ids, principled, ratios, base), rtol=1e-5, atol=1e-4)


def _logits(n: int, seed: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 3.0, n).astype(np.float32)
    if kind == "ties":
        x = np.round(x).astype(np.float32)
    elif kind == "huge":
        x = (x * 1000.0).astype(np.float32)
    elif kind == "peaked":
        x[rng.integers(n)] = 60.0  # a nucleus of one token
    return x


KINDS = ["normal", "ties", "huge", "peaked"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 300), seed=st.integers(0, 2**31), kinds=st.lists(st.sampled_from(KINDS), min_size=3, max_size=3),
       r1=st.floats(-3, 8), r2=st.floats(-3, 8), top_p=st.sampled_from([0.05, 0.5, 0.8, 0.95, 1.0]),
       temperature=st.sampled_from([0.0, 0.5, 1.0, 1.7]), dense=st.booleans())
def test_two_principles_match_the_reference(n, seed, kinds, r1, r2, top_p, temperature, dense):
    l1, l2, l0 = (_logits(n, seed + i, kind) for i, kind in enumerate(kinds))
    check_composed([l1, l2], [r1, r2], l0, top_p, temperature, dense)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 200), seed=st.integers(0, 2**31), k=st.integers(3, 8), top_p=st.sampled_from([0.3, 0.8]),
       dense=st.booleans())
def test_up_to_eight_principles_match_the_reference(n, seed, k, top_p, dense):
    principled = [_logits(n, seed + i, KINDS[i % 4]) for i in range(k)]
    ratios = [float(r) for r in np.random.default_rng(seed).uniform(-1, 4, k)]
    check_composed(principled, ratios, _logits(n, seed + 99, "normal"), top_p, 1.0, dense)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 300), seed=st.integers(0, 2**31), r=st.floats(-3, 8),
       top_p=st.sampled_from([0.1, 0.8, 1.0]), dense=st.booleans())
def test_negative_form_is_one_principle_over_the_negative_stream(n, seed, r, top_p, dense):
    """(1 + r) l_pos - r l_neg inside the positive stream's nucleus: the
    one-principle sampler with the negative principle's logits as its base."""
    l_pos, l_neg = _logits(n, seed, "normal"), _logits(n, seed + 1, "ties")
    ids, values = _core.linear_alignment_apply(l_pos, l_neg, r, top_p, 1.0, dense)
    strict, loose = nucleus_bounds(l_pos, top_p, 1.0)
    assert strict <= set(ids.tolist()) <= loose
    expected = np.float32(1.0 + r) * l_pos[ids] - np.float32(r) * l_neg[ids]
    np.testing.assert_allclose(values, expected, rtol=2e-6, atol=2e-5)


def test_minus_infinity_stays_out_and_stays_minus_infinity():
    """A grammar's -inf in P's candidates: such tokens are in no nucleus
    (every principled stream is masked alike on the candidate path)."""
    rng = np.random.default_rng(3)
    l1, l2, l0 = (rng.normal(0, 2, 50).astype(np.float32) for _ in range(3))
    l1[:40] = -np.inf
    ids, values = _core.linear_alignment_apply(l1, l0, 2.0, 0.9, 1.0, False, [l2], [1.0])
    assert set(ids.tolist()) <= set(range(40, 50)) and np.isfinite(values).all()
    # all -inf: nothing is plausible, the set is left alone and stays -inf
    dead = np.full(50, -np.inf, dtype=np.float32)
    ids, values = _core.linear_alignment_apply(dead, l0, 2.0, 0.9, 1.0, False, [l2], [1.0])
    assert sorted(ids.tolist()) == list(range(50)) and np.isneginf(values).all()


def test_union_of_nuclei_of_one_token_each():
    l1 = np.zeros(20, dtype=np.float32)
    l2 = np.zeros(20, dtype=np.float32)
    l1[3], l2[11] = 50.0, 50.0
    l0 = np.zeros(20, dtype=np.float32)
    for dense in (True, False):
        ids, values = _core.linear_alignment_apply(l1, l0, 1.0, 0.8, 1.0, dense, [l2], [1.0])
        assert sorted(ids.tolist()) == [3, 11]
        np.testing.assert_allclose(values[np.argsort(ids)], [100.0, 100.0])  # 2*50 + 2*(0)


def test_one_principle_is_the_shorthand_bit_for_bit():
    """K = 1 through the composed factory is the one-principle sampler."""
    rng = np.random.default_rng(7)
    for _ in range(20):
        lp, lb = rng.normal(0, 3, 1000).astype(np.float32), rng.normal(0, 3, 1000).astype(np.float32)
        for dense in (True, False):
            a = _core.linear_alignment_apply(lp, lb, 2.0, 0.8, 0.7, dense)
            b = _core.linear_alignment_apply(lp, lb, 2.0, 0.8, 0.7, dense, [], [])
            assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


@pytest.mark.parametrize(("extra", "ratios", "message"), [
    ([np.zeros(8, np.float32)], [], "same length"),
    ([np.zeros(7, np.float32)], [1.0], "as long as"),
    ([np.zeros(8, np.float32)] * 8, [1.0] * 8, "at most 8"),
    ([np.zeros(8, np.float32)], [float("nan")], "finite"),
])
def test_bad_composed_arguments_are_value_errors(extra, ratios, message):
    z = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=message):
        _core.linear_alignment_apply(z, z, 1.0, 0.8, 1.0, True, extra, ratios)

"""The linear-alignment sampler's math, checked against ALGORITHM.md in
numpy: on synthetic logits (to 1e-5) and on a tiny real GGUF model."""
from __future__ import annotations

import math

import numpy as np
import pytest

import llama_cpp
import linalign
from linalign import _core

from conftest import last_logits
from reference import combine, nucleus_mask


def native_combined(logits_p, logits_b, ratio, top_p, temperature=1.0) -> np.ndarray:
    """The sampler's output as a dense vector (-inf where it dropped a token)."""
    ids, values = _core.linear_alignment_apply(logits_p.astype(np.float32), logits_b.astype(np.float32),
                                              ratio, top_p, temperature)
    dense = np.full(logits_p.shape, -np.inf)
    dense[ids] = values
    return dense


@pytest.mark.parametrize("ratio", [0.0, 0.5, 2.0, -1.5])
@pytest.mark.parametrize("top_p", [0.1, 0.8, 1.0])
@pytest.mark.parametrize("temperature", [0.5, 1.0])
def test_matches_numpy_formula(ratio, top_p, temperature):
    rng = np.random.default_rng(abs(int(ratio * 10 + top_p * 100 + temperature * 7)))
    logits_p = rng.normal(0, 3, 2000).astype(np.float32)
    logits_b = (logits_p + rng.normal(0, 1, 2000)).astype(np.float32)
    got = native_combined(logits_p, logits_b, ratio, top_p, temperature)
    want = combine(logits_p, logits_b, ratio, top_p, temperature)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    kept = ~np.isinf(want)
    np.testing.assert_allclose(got[kept], want[kept], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_vocab", [49152, 151936])
@pytest.mark.parametrize("shape", ["flat", "normal", "peaked", "heavy_tail"])
def test_nucleus_matches_numpy_over_large_vocabularies(n_vocab, shape):
    """The sampler looks for the nucleus among tokens above a falling weight
    threshold; flat, peaked and heavy-tailed distributions need different
    thresholds (a heavy tail needs tokens of weight ~6e-6 of the best)."""
    rng = np.random.default_rng(n_vocab)
    if shape == "heavy_tail":
        # distinct values (2e-6 apart, twice float32's step there): at a tie
        # the nucleus edge may take either token
        logits_p = -12.0 + 2e-6 * rng.permutation(n_vocab)
        logits_p[:3] = [0.0, -0.5, -1.0]
    else:
        scale = {"flat": 0.01, "normal": 3.0, "peaked": 30.0}[shape]
        logits_p = rng.normal(0, scale, n_vocab)
    logits_p = logits_p.astype(np.float32)
    logits_b = (logits_p + rng.normal(0, 1, n_vocab)).astype(np.float32)
    for top_p in (0.5, 0.8, 0.95):
        got = native_combined(logits_p, logits_b, 2.0, top_p)
        want = combine(logits_p, logits_b, 2.0, top_p)
        assert np.array_equal(np.isinf(got), np.isinf(want)), f"top_p {top_p}"
        kept = ~np.isinf(want)
        np.testing.assert_allclose(got[kept], want[kept], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("top_p", [0.3, 0.8, 1.0])
@pytest.mark.parametrize("scale", [0.01, 3.0, 30.0])
def test_dense_entry_point_equals_the_sampler_on_a_candidate_array(top_p, scale):
    """The engine hands stream P's logits to the sampler directly when no
    grammar precedes it: the same tokens, in the same order, with the same
    logits as llama_sampler_apply on the full candidate array."""
    rng = np.random.default_rng(int(scale * 10 + top_p * 100))
    logits_p = rng.normal(0, scale, 49152).astype(np.float32)
    logits_p[rng.choice(49152, 100, replace=False)] = -np.inf  # masked tokens stay out
    logits_b = (logits_p + rng.normal(0, 1, 49152)).astype(np.float32)
    ids, values = _core.linear_alignment_apply(logits_p, logits_b, 2.0, top_p, dense=False)
    dense_ids, dense_values = _core.linear_alignment_apply(logits_p, logits_b, 2.0, top_p, dense=True)
    np.testing.assert_array_equal(dense_ids, ids)
    np.testing.assert_array_equal(dense_values, values)


def test_nucleus_keeps_smallest_set_reaching_top_p():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.8 keeps the first two
    # (mass before the third is exactly 0.8, not < 0.8)
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = np.log(probs).astype(np.float32)
    ids, _ = _core.linear_alignment_apply(logits, logits, 0.0, 0.79)
    assert sorted(ids.tolist()) == [0, 1]
    ids, _ = _core.linear_alignment_apply(logits, logits, 0.0, 0.81)
    assert sorted(ids.tolist()) == [0, 1, 2]


def test_first_token_always_kept():
    logits = np.array([10.0, 0.0, 0.0], dtype=np.float32)
    ids, _ = _core.linear_alignment_apply(logits, logits, 2.0, 1e-6)
    assert ids.tolist() == [0]


def test_ratio_zero_leaves_logits_of_p():
    rng = np.random.default_rng(1)
    logits_p = rng.normal(size=500).astype(np.float32)
    logits_b = rng.normal(size=500).astype(np.float32)
    ids, values = _core.linear_alignment_apply(logits_p, logits_b, 0.0, 1.0)
    np.testing.assert_array_equal(values, logits_p[ids])


def test_masked_tokens_stay_masked_for_negative_ratio():
    # a token a grammar removed (-inf) must not come back as +inf when 1 + r < 0
    logits_p = np.array([1.0, -np.inf, 0.5], dtype=np.float32)
    logits_b = np.array([0.0, 0.0, 0.0], dtype=np.float32)
    ids, values = _core.linear_alignment_apply(logits_p, logits_b, -3.0, 1.0)
    dense = dict(zip(ids.tolist(), values.tolist()))
    assert dense.get(1, -math.inf) == -math.inf


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": float("nan"), "top_p": 0.8}, "ratio"),
    ({"ratio": float("inf"), "top_p": 0.8}, "ratio"),
    ({"ratio": 1.0, "top_p": 0.0}, "top_p"),
    ({"ratio": 1.0, "top_p": 1.5}, "top_p"),
    ({"ratio": 1.0, "top_p": 0.8, "temperature": -1.0}, "temperature"),
])
def test_native_validation(kwargs, match):
    logits = np.zeros(10, dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        _core.linear_alignment_apply(logits, logits, **kwargs)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="same length"):
        _core.linear_alignment_apply(np.zeros(10, np.float32), np.zeros(11, np.float32), 1.0, 0.8)


def test_engine_logits_on_tiny_model_match_separate_contexts(tiny_gguf):
    """The batched two-stream prefill gives each stream the logits a
    separate context gives it, and the sampler combines them per the spec."""
    prompt_p, prompt_b = "hello world the cat", "hello world no"
    with linalign.Aligner(tiny_gguf, n_ctx=128, n_threads=2) as aligner:
        tokens_p, tokens_b = aligner.tokenize(prompt_p), aligner.tokenize(prompt_b)
        lp, lb = aligner.engine.eval_logits(tokens_p, tokens_b, 1, 1)
    refs = []
    for tokens in (tokens_p, tokens_b):
        llm = linalign.load_llama(tiny_gguf, n_ctx=128, n_threads=2, verbose=False)
        llm.eval(tokens)
        refs.append(last_logits(llm))
        llm.close()
    # this model's weights are float32, and llama.cpp's float matrix kernels
    # round differently with the number of tokens in a batch (~1e-6 here); on
    # the quantized default model the streams are bit for bit equal
    # (test_equivalence.py)
    np.testing.assert_allclose(lp[0], refs[0], atol=1e-5)
    np.testing.assert_allclose(lb[0], refs[1], atol=1e-5)
    got = native_combined(lp[0], lb[0], 2.0, 0.8)
    want = combine(refs[0], refs[1], 2.0, 0.8)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_allclose(got[~np.isinf(want)], want[~np.isinf(want)], atol=1e-3)
    # the nucleus itself, worked out from the probabilities: the fewest tokens
    # by decreasing l_p whose mass reaches 0.8 (a real cut of this model's
    # 400 tokens, its edge ~7e-4 from 0.8: no rounding question)
    logits = refs[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-logits, kind="stable")
    cum = np.cumsum(probs[order])
    k = int(np.searchsorted(cum, 0.8)) + 1  # the first prefix whose mass reaches 0.8
    assert cum[k - 2] < 0.8 <= cum[k - 1]
    assert 1 < k < len(logits) // 2
    assert set(np.flatnonzero(np.isfinite(got)).tolist()) == set(order[:k].tolist())
    assert set(np.flatnonzero(nucleus_mask(refs[0], 0.8)).tolist()) == set(order[:k].tolist())

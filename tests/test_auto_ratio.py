"""ratio="auto" (docs/auto_ratio.md): each principled stream's step size at
a token is r_t = min(AUTO_RATIO_MAX, AUTO_RATIO_FLOOR + AUTO_RATIO_SCALE * JSD_t), JSD_t the
Jensen-Shannon divergence in bits between the softmaxes (temperature 1, whole
vocabulary) of that stream's and the base stream's logits, after AdaCAD
(Wang et al., NAACL 2025). The rule in numpy against the native sampler,
then through the API, logprobs, the CLI and the server."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

import linalign
from linalign import _core
from linalign.principles import compose

from reference import combine


def jsd_bits(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    def log_softmax(x):
        x = x.astype(np.float64)
        m = x.max()
        return x - (m + np.log(np.exp(x - m).sum()))

    la, lb = log_softmax(logits_a), log_softmax(logits_b)
    p, q = np.exp(la), np.exp(lb)
    lm = np.log((p + q) / 2)
    return float(0.5 * (p * (la - lm)).sum() + 0.5 * (q * (lb - lm)).sum()) / math.log(2)


def documented_ratio(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    return min(_core.AUTO_RATIO_MAX, _core.AUTO_RATIO_FLOOR + _core.AUTO_RATIO_SCALE * jsd_bits(logits_a, logits_b))


def auto_step(logits_p, logits_b, *, top_p=0.8, dense=True, extra=(), extra_auto=()):
    return _core.linear_alignment_step(logits_p, logits_b, 0.0, top_p, 1.0, dense, [e for e in extra],
                                       [0.0] * len(extra), auto_ratio=True, extra_auto=list(extra_auto))


def test_the_documented_constants() -> None:
    assert (_core.AUTO_RATIO_FLOOR, _core.AUTO_RATIO_SCALE, _core.AUTO_RATIO_MAX) == (2.0, 10.0, 4.0)


@pytest.mark.parametrize("probs_p, probs_b", [
    ([0.7, 0.2, 0.1], [0.7, 0.2, 0.1]),     # the same distribution: the floor
    ([0.7, 0.2, 0.1], [0.6, 0.3, 0.1]),     # a little apart
    ([0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]),
    ([0.98, 0.01, 0.01], [0.01, 0.01, 0.98]),  # far apart: bounded
])
def test_auto_ratio_of_tiny_distributions_is_the_rule(probs_p, probs_b) -> None:
    logits_p = np.log(np.array(probs_p)).astype(np.float32)
    logits_b = np.log(np.array(probs_b)).astype(np.float32)
    ids, values, ratios, _ = auto_step(logits_p, logits_b, top_p=1.0)
    want = documented_ratio(logits_p, logits_b)
    assert ratios[0] == pytest.approx(want, abs=1e-5)
    np.testing.assert_allclose(values, combine(logits_p, logits_b, want, 1.0)[ids], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scale", [0.01, 0.3, 1.0, 3.0])
@pytest.mark.parametrize("dense", [True, False])
def test_auto_ratio_over_a_real_sized_vocabulary_is_the_rule(scale, dense) -> None:
    rng = np.random.default_rng(int(scale * 100))
    logits_p = rng.normal(0, 3, 49152).astype(np.float32)
    logits_b = (logits_p + rng.normal(0, scale, 49152)).astype(np.float32)
    ids, values, ratios, _ = auto_step(logits_p, logits_b, dense=dense)
    want = documented_ratio(logits_p, logits_b)
    assert ratios[0] == pytest.approx(want, abs=1e-5)
    np.testing.assert_allclose(values, combine(logits_p, logits_b, want, 0.8)[ids], rtol=1e-5, atol=1e-4)


def test_auto_ratio_is_the_floor_without_divergence_and_bounded() -> None:
    logits = np.log(np.array([0.5, 0.25, 0.25])).astype(np.float32)
    assert auto_step(logits, logits)[2] == [_core.AUTO_RATIO_FLOOR]
    far = np.array([20.0, -20.0, -20.0], dtype=np.float32)
    assert auto_step(far, far[::-1].copy())[2] == [_core.AUTO_RATIO_MAX]


def test_composed_streams_each_get_their_own_divergence() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(0, 2, 500).astype(np.float32)
    near = (base + rng.normal(0, 0.1, 500)).astype(np.float32)
    far = (base + rng.normal(0, 2.0, 500)).astype(np.float32)
    _, _, ratios, _ = _core.linear_alignment_step(near, base, 0.0, 0.8, 1.0, True, [far, far], [0.0, 1.5],
                                                  auto_ratio=True, extra_auto=[True, False])
    assert ratios[0] == pytest.approx(documented_ratio(near, base), abs=1e-5)
    assert ratios[1] == pytest.approx(documented_ratio(far, base), abs=1e-5)
    assert ratios[2] == 1.5  # a fixed ratio beside automatic ones
    assert ratios[0] < ratios[1]


@pytest.mark.parametrize("bad, error", [("fast", ValueError), ("Auto ", ValueError), (float("nan"), ValueError),
                                        (float("inf"), ValueError), ([2.0], TypeError)])
def test_bad_ratio_is_an_error(bad, error) -> None:
    with pytest.raises(error, match="ratio"):
        linalign.SamplingOptions(ratio=bad)
    with pytest.raises(error, match="ratio"):
        compose(principles=[{"text": "Be brief.", "ratio": bad}])


def test_bad_ratio_through_the_api_is_a_value_error(aligner) -> None:
    with pytest.raises(ValueError, match="'auto'"):
        aligner.create_chat_completion([{"role": "user", "content": "Hi"}], principle="Be brief.", ratio="fast")


# -- on the real model ------------------------------------------------------

CHAT = [{"role": "user", "content": "Why is the sky blue?"}]


def test_auto_reports_the_mean_step_size_it_used(aligner) -> None:
    out = aligner.create_chat_completion(CHAT, principle="The user is a five-year-old child.", ratio="auto",
                                         temperature=0.0, max_tokens=16, logprobs=True)
    content = out["choices"][0]["logprobs"]["content"]
    per_token = [e["linalign"]["ratio"] for e in content]
    assert all(_core.AUTO_RATIO_FLOOR <= r <= _core.AUTO_RATIO_MAX for r in per_token) and len(set(per_token)) > 1
    assert out["linalign"]["mean_ratio"] == pytest.approx(sum(per_token) / len(per_token), abs=1e-6)
    assert out["linalign"]["mean_ratios"] == [out["linalign"]["mean_ratio"]]
    fixed = aligner.create_chat_completion(CHAT, principle="The user is a five-year-old child.", ratio=1.5,
                                           temperature=0.0, max_tokens=4)
    assert fixed["linalign"]["mean_ratio"] == 1.5


def test_auto_logprobs_are_those_of_the_distribution_sampled(aligner) -> None:
    """Sampled at temperature 1 with no other sampler after the alignment
    step: every chosen token lies in the reported distribution, and greedy
    picks its most likely token."""
    kw = dict(principle="Always answer like a pirate.", ratio="auto", max_tokens=20, logprobs=True,
              top_logprobs=5)
    sampled = aligner.create_chat_completion(CHAT, temperature=1.0, top_k=0, seed=3, **kw)
    for e in sampled["choices"][0]["logprobs"]["content"]:
        assert -50 < e["logprob"] <= 0
        tops = {t["token"]: t["logprob"] for t in e["top_logprobs"]}
        if e["token"] in tops:
            assert tops[e["token"]] == e["logprob"]
    greedy = aligner.create_chat_completion(CHAT, temperature=0.0, **kw)
    for e in greedy["choices"][0]["logprobs"]["content"]:
        assert e["top_logprobs"][0]["token"] == e["token"]


def test_composed_principles_take_auto_each(aligner) -> None:
    out = aligner.create_chat_completion(CHAT, principles=[{"text": "Answer in French.", "ratio": "auto"},
                                                           {"text": "Be concise.", "ratio": 1.0}],
                                         temperature=0.0, max_tokens=8)
    means = out["linalign"]["mean_ratios"]
    assert len(means) == 2 and means[1] == 1.0 and _core.AUTO_RATIO_FLOOR <= means[0] <= _core.AUTO_RATIO_MAX
    # a further principle (not P) takes auto too, also when it inherits the default ratio
    out = aligner.create_chat_completion(CHAT, principles=[{"text": "Be concise.", "ratio": 1.0}, "Answer in French."],
                                         temperature=0.0, max_tokens=8, logprobs=True)
    means = out["linalign"]["mean_ratios"]
    assert len(means) == 2 and means[0] == 1.0 and _core.AUTO_RATIO_FLOOR <= means[1] <= _core.AUTO_RATIO_MAX


def test_cli_flags_take_auto() -> None:
    import argparse

    from linalign.cli_common import add_sampling_options, composition, sampling_options
    from linalign.evaluation.cli import _generation_ratios, _ratios

    parser = argparse.ArgumentParser()
    add_sampling_options(parser)
    args = parser.parse_args(["--ratio", "auto", "--principle", "Be brief.", "--no-echo-guard"])
    assert sampling_options(args).ratio == "auto" and sampling_options(args).echo_guard is False
    assert composition(args).principles[0].ratio == "auto"
    args = parser.parse_args(["--principle", "Be brief.:auto", "--principle", "Be kind.:1"])
    assert [p.ratio for p in composition(args).principles] == ["auto", 1.0]
    with pytest.raises(SystemExit):
        parser.parse_args(["--ratio", "fast"])
    assert _generation_ratios("1,2,auto") == [1.0, 2.0, "auto"]
    with pytest.raises(argparse.ArgumentTypeError):
        _ratios("1,auto")  # the teacher-forced protocols score fixed ratios


def test_eval_follow_names_the_auto_method() -> None:
    from linalign.evaluation.follow import follow_methods

    assert list(follow_methods([2.0, "auto"], ["end"])) == ["plain", "prompt/end", "la@2.0/end", "la@auto/end"]


def test_preset_flag_takes_auto() -> None:
    from linalign.server.presets import parse_preset_flag

    preset = parse_preset_flag("brief=Be brief.:auto")
    assert preset.ratio == "auto" and preset.principle == "Be brief."


def test_the_evaluations_auto_ratio_is_the_native_one() -> None:
    """persona and pairs score ``auto`` in numpy, a row at a time or many
    rows at once: the same step the sampler takes."""
    from linalign.evaluation.scoring import auto_ratio

    rng = np.random.default_rng(7)
    rows_p = rng.normal(0, 3, (3, 49152)).astype(np.float32)
    rows_b = (rows_p + rng.normal(0, 1.0, (3, 49152)) * np.array([[0.01], [0.3], [3.0]])).astype(np.float32)
    native = [auto_step(p, b)[2][0] for p, b in zip(rows_p, rows_b)]
    np.testing.assert_allclose(auto_ratio(rows_p, rows_b), native, atol=1e-5)
    assert auto_ratio(rows_p[1], rows_b[1]) == pytest.approx(native[1], abs=1e-5)
    assert auto_ratio(rows_p[0], rows_p[0]) == _core.AUTO_RATIO_FLOOR

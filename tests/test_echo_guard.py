"""The echo guard (SamplingOptions.echo_guard, on by default): where the
answer's last n-1 tokens copy a run of the principle's tokens, a candidate
that would continue the run, and that the alignment favours
(r * (log p_p - log p_0) > 0, full-vocabulary log-probabilities at
temperature 1), is taken out before the nucleus is cut. Checked on tiny
arrays against numpy, then on the model."""
from __future__ import annotations

import math

import numpy as np
import pytest

import linalign
from linalign import _core

PRINCIPLE = [5, 6, 7, 8, 9]  # a principle's tokens, in a vocabulary of 12


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def rows(seed: int = 0, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits_p = rng.normal(0, 1, n).astype(np.float32)
    logits_p[8] = 3.0  # the principle's next token: P likes it, B does not
    logits_b = rng.normal(0, 1, n).astype(np.float32)
    logits_b[8] = -1.0
    return logits_p, logits_b


def step(logits_p, logits_b, history, *, ratio=2.0, n=4, principles=(PRINCIPLE,), dense=True, top_p=1.0, **kw):
    ids, values, ratios, guarded = _core.linear_alignment_step(
        logits_p, logits_b, ratio, top_p, 1.0, dense, echo_n=n, principles=[list(p) for p in principles],
        history=list(history), **kw)
    return {t: v for t, v in zip(ids.tolist(), values.tolist()) if v != -math.inf}, ratios, guarded


@pytest.mark.parametrize("dense", [True, False])
def test_guard_takes_out_a_token_that_continues_a_copied_ngram(dense) -> None:
    logits_p, logits_b = rows()
    got, _, guarded = step(logits_p, logits_b, [1, 5, 6, 7], dense=dense)
    plain, _, _ = step(logits_p, logits_b, [], dense=dense)
    assert 2.0 * (log_softmax(logits_p)[8] - log_softmax(logits_b)[8]) > 0  # the alignment favours it
    assert guarded == [(0, 8)]
    assert 8 in plain and 8 not in got
    for t in set(plain) - {8}:
        assert got[t] == pytest.approx(plain[t], abs=1e-6)


@pytest.mark.parametrize("dense", [True, False])
def test_the_nucleus_is_cut_after_the_guard(dense) -> None:
    """Where P is sure of the copy's next token its nucleus holds that token
    alone: lowering it would leave it the only candidate. Taken out first,
    the nucleus falls on what P would say instead."""
    logits_p, logits_b = rows()
    logits_p[8] = 12.0
    alone, _, _ = step(logits_p, logits_b, [], top_p=0.8, dense=dense)
    assert list(alone) == [8]
    got, _, guarded = step(logits_p, logits_b, [5, 6, 7], top_p=0.8, dense=dense)
    assert guarded == [(0, 8)] and got and 8 not in got
    rest = np.delete(np.arange(12), 8)
    assert int(rest[np.argmax(logits_p[rest])]) in got  # P's next most likely token leads the new nucleus


@pytest.mark.parametrize("dense", [True, False])
def test_the_guard_never_takes_out_the_last_candidate(dense) -> None:
    logits_p = np.full(12, -np.inf, dtype=np.float32)
    logits_p[8] = 1.0
    logits_b = np.zeros(12, dtype=np.float32)
    got, _, guarded = step(logits_p, logits_b, [5, 6, 7], dense=dense)
    assert list(got) == [8] and guarded == []


@pytest.mark.parametrize("history", [[], [7], [6, 7], [1, 6, 7], [5, 6, 9], [7, 6, 5]])
def test_guard_does_nothing_before_n_minus_1_tokens_of_a_run_are_copied(history) -> None:
    logits_p, logits_b = rows()
    got, _, guarded = step(logits_p, logits_b, history)
    plain, _, _ = step(logits_p, logits_b, history, n=0)
    assert guarded == [] and got == plain


def test_guard_never_raises_a_token_alignment_already_pushes_down() -> None:
    logits_p, logits_b = rows()
    logits_p[8], logits_b[8] = -1.0, 3.0  # P likes the continuation less than B does: its boost is negative
    got, _, guarded = step(logits_p, logits_b, [5, 6, 7])
    plain, _, _ = step(logits_p, logits_b, [5, 6, 7], n=0)
    assert guarded == [] and got == plain


def test_a_principle_shorter_than_n_is_nothing_to_guard() -> None:
    logits_p, logits_b = rows()
    got, _, guarded = step(logits_p, logits_b, [5, 6, 7], principles=([6, 7, 8],))
    assert guarded == []
    got2, _, guarded2 = step(logits_p, logits_b, [7], n=2, principles=([6, 7, 8],))
    assert guarded2 == [(0, 8)]


def test_guard_length_n_sets_how_much_must_be_copied() -> None:
    logits_p, logits_b = rows()
    assert step(logits_p, logits_b, [6, 7], n=3)[2] == [(0, 8)]
    assert step(logits_p, logits_b, [6, 7], n=4)[2] == []
    assert step(logits_p, logits_b, [5, 6, 7], n=5)[2] == []


def test_a_replayed_guard_decision_gives_the_same_logits() -> None:
    logits_p, logits_b = rows()
    found = step(logits_p, logits_b, [5, 6, 7])
    replayed = step(logits_p, logits_b, [], n=0, guarded=[(0, 8)])
    assert replayed[0] == found[0] and replayed[2] == found[2]


def test_composed_guard_takes_out_what_the_copied_principle_favours() -> None:
    rng = np.random.default_rng(3)
    l1, l2, lb = (rng.normal(0, 1, 12).astype(np.float32) for _ in range(3))
    l2[8], lb[8] = 3.0, -1.0
    r1, r2 = 1.0, 2.0
    ids, values, ratios, guarded = _core.linear_alignment_step(
        l1, lb, r1, 1.0, 1.0, True, [l2], [r2], echo_n=4, principles=[[0, 1, 2, 3], PRINCIPLE], history=[5, 6, 7])
    assert guarded == [(1, 8)] and ratios == [r1, r2]
    got = dict(zip(ids.tolist(), values.tolist()))
    lb64 = lb.astype(np.float64)
    combined = lb64 + (1 + r1) * (l1 - lb64) + (1 + r2) * (l2 - lb64)
    assert got[8] == -math.inf  # out of every stream's nucleus
    for t, v in got.items():
        if t != 8:
            assert v == pytest.approx(combined[t], abs=1e-4)


def test_guard_has_no_effect_at_ratio_0() -> None:
    logits_p, logits_b = rows()
    assert step(logits_p, logits_b, [5, 6, 7], ratio=0.0)[2] == []


# -- on the real model ------------------------------------------------------

ECHO_PRONE = [{"role": "user", "content": "Write a short note about the ocean."}]
POSTSCRIPT = "At the end of your response, please explicitly add a postscript starting with P.S."


def test_guard_is_on_by_default_and_reported(aligner) -> None:
    assert linalign.SamplingOptions().echo_guard is True and linalign.SamplingOptions().echo_guard_n == 4
    kw = dict(principle=POSTSCRIPT, principle_position="end", ratio=2.0, temperature=0.0, max_tokens=24)
    guarded = aligner.create_chat_completion(ECHO_PRONE, **kw)
    off = aligner.create_chat_completion(ECHO_PRONE, echo_guard=False, **kw)
    # greedy at r=2 this answer starts by repeating the instruction: the guard acts on it
    assert guarded["linalign"]["echo_guarded_tokens"] > 0
    assert off["linalign"]["echo_guarded_tokens"] == 0


def test_logprobs_describe_the_guarded_distribution(aligner) -> None:
    out = aligner.create_chat_completion(ECHO_PRONE, principle=POSTSCRIPT, principle_position="end", ratio=2.0,
                                         temperature=0.0, max_tokens=24, logprobs=True, top_logprobs=3)
    content = out["choices"][0]["logprobs"]["content"]
    assert sum(e["linalign"]["echo_guarded"] for e in content) > 0
    for e in content:
        assert e["top_logprobs"][0]["token"] == e["token"]  # greedy: the most likely of what was sampled from
        assert e["top_logprobs"][0]["logprob"] == e["logprob"]


@pytest.mark.parametrize("principle, answer", [
    ('Include the keyword "sunshine" in your response.', "I love the sunshine in the morning, and your response?"),
    ("Your entire response should be in French, no other language is allowed.",
     "Here is my answer in French: bonjour. The language is French."),
])
def test_guard_leaves_a_short_quote_of_the_principle_alone(aligner, principle, answer) -> None:
    """Quoting a keyword or a language name (fewer than n tokens of the
    principle in a row) is no echo: no candidate is guarded at any point of
    the answer."""
    tokens = aligner.tokenize(principle, add_bos=False, special=False)
    answer_tokens = aligner.tokenize(answer, add_bos=False)
    # logits under which alignment boosts every token of the principle
    logits_p = np.zeros(aligner.n_vocab, dtype=np.float32)
    logits_b = np.zeros(aligner.n_vocab, dtype=np.float32)
    logits_p[tokens], logits_b[tokens] = 5.0, -5.0

    def guarded_after(history: list[int]) -> list:
        return _core.linear_alignment_step(logits_p, logits_b, 2.0, 1.0, 1.0, True, echo_n=4, principles=[tokens],
                                           history=history)[3]

    for i in range(len(answer_tokens) + 1):
        assert guarded_after(answer_tokens[:i]) == [], aligner.detokenize(answer_tokens[:i])
    # while repeating the principle itself is guarded from its fourth token on
    assert [guarded_after(tokens[:i]) for i in range(3)] == [[], [], []]
    for i in range(3, len(tokens)):
        assert guarded_after(tokens[:i]) == [(0, tokens[i])]


def test_bad_echo_guard_options_are_errors() -> None:
    with pytest.raises(ValueError, match="echo_guard_n"):
        linalign.SamplingOptions(echo_guard_n=1)
    with pytest.raises(TypeError, match="echo_guard"):
        linalign.SamplingOptions(echo_guard="yes")

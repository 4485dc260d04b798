"""Each sampled token's logprob entry is computed natively in the engine's
step (cpp/token_logprobs.cpp), and equals the numpy form it replaced
(tests/reference_logprobs.py) on the same logits: the chosen token's
logprob, its alternatives in order, and what the alignment changed."""
from __future__ import annotations

import numpy as np
import pytest

from linalign import _core
from linalign.engine import BatchedEngine
from linalign.options import SamplingOptions
from reference_logprobs import compute_token_logprob

# full-vocabulary normalisers are summed from float exponentials natively
# (the vectorised log-sum-exp of ratio "auto"), from double ones in numpy
TOL = 1e-5
PRINCIPLE = "Always answer like a pirate."
GRAMMAR = 'root ::= "{" [a-z]+ "}"'

CASES = {
    "aligned": dict(options=SamplingOptions(ratio=2.0, temperature=0.8, seed=1), k=5),
    "greedy": dict(options=SamplingOptions(ratio=2.0, temperature=0.0), k=3),
    "plain": dict(options=SamplingOptions(ratio=0.0, temperature=0.8, seed=2), k=5),
    "auto": dict(options=SamplingOptions(ratio="auto", temperature=0.8, seed=3), k=5),
    "small nucleus, fillers": dict(options=SamplingOptions(ratio=2.0, top_p=0.3, temperature=0.8, seed=4), k=20),
    "grammar": dict(options=SamplingOptions(ratio=2.0, temperature=0.8, seed=5, grammar=GRAMMAR), k=4),
    "composed": dict(options=SamplingOptions(ratio=1.0, temperature=0.8, seed=6), k=5, extra=(" Be brief.", 0.5)),
    "no alternatives": dict(options=SamplingOptions(ratio=2.0, temperature=0.8, seed=7), k=0),
}


@pytest.fixture(scope="module")
def model(model_path):
    m = _core.Model(str(model_path), 0, True)
    yield m
    m.close()


def tokens(model, text: str) -> list[int]:
    return list(model.tokenize(text.encode(), True, False))


@pytest.mark.parametrize("case", list(CASES))
def test_native_entries_equal_the_numpy_reference(model, case: str) -> None:
    spec = CASES[case]
    options, k = spec["options"], spec["k"]
    question = "Once upon a time, by the sea, there"
    prompts = [tokens(model, f"{PRINCIPLE}\n\n{question}"), tokens(model, question)]
    extra_ratios = []
    if "extra" in spec:
        text, ratio = spec["extra"]
        prompts.append(tokens(model, f"{PRINCIPLE}{text}\n\n{question}"))
        extra_ratios.append(ratio)
    engine = BatchedEngine(model, n_ctx=256, n_threads=2, n_streams=len(prompts))
    native = engine._native
    params = options.to_native()
    params.extra_ratios = extra_ratios
    params.n_logprobs = k
    native.start(0, prompts, params, True, 0)
    piece_of = lambda t: model.token_to_piece(t, False)  # noqa: E731
    checked = 0
    try:
        while checked < 12:
            events = native.step()
            if not events:
                continue
            (event,) = events
            assert not event.error
            if event.eog:
                assert event.logprob is None
                break
            assert event.piece == piece_of(event.token)
            n_active = native.n_active_streams(0)
            logits_p = native.logits(0, 0)
            logits_b = native.logits(0, 1) if n_active >= 2 else logits_p
            extra = [native.logits(0, s) for s in range(2, n_active)]
            want = compute_token_logprob(event.token, event.piece, logits_p, logits_b, options, k, piece_of,
                                         logits_extra=extra, extra_ratios=extra_ratios, ratios=event.ratios,
                                         guarded=event.guarded, grammar_allowed=native.grammar_allowed(0))
            (logprob, top, plain_top, plain_top_piece, plain_top_logprob, principled, plain, ratio,
             guarded) = event.logprob
            assert logprob == pytest.approx(want.logprob, abs=TOL)
            assert [p for p, _ in top] == [p for p, _ in want.top]
            np.testing.assert_allclose([lp for _, lp in top], [lp for _, lp in want.top], atol=TOL)
            assert (plain_top, plain_top_piece) == (want.plain_top_token, want.plain_top_piece)
            assert plain_top_logprob == pytest.approx(want.plain_top_logprob, abs=TOL)
            assert principled == pytest.approx(want.logprob_principled, abs=TOL)
            assert plain == pytest.approx(want.logprob_plain, abs=TOL)
            assert ratio == pytest.approx(want.ratio)
            assert guarded == want.echo_guarded
            checked += 1
    finally:
        engine.close()
    assert checked > 0


def test_a_request_without_logprobs_gets_no_entries(model) -> None:
    engine = BatchedEngine(model, n_ctx=256, n_threads=2)
    native = engine._native
    params = SamplingOptions(seed=1).to_native()
    native.start(0, [tokens(model, "Hello"), tokens(model, "Hi")], params, True, 0)
    try:
        events = []
        while not events:
            events = native.step()
        assert events[0].logprob is None and events[0].piece
    finally:
        engine.close()


@pytest.mark.parametrize("k", [-2, 21])
def test_alternatives_out_of_range_are_refused(k: int) -> None:
    params = _core.SamplingParams()
    params.n_logprobs = k
    with pytest.raises(ValueError, match="n_logprobs"):
        params.validate()

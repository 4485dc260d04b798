"""Property-based tests of the linear-alignment sampler against a numpy
statement of ALGORITHM.md (steps 1-3), and of the chain's order (grammar
before the sampler, penalties after it) on the real model.

The arrays are drawn by numpy from a seed hypothesis picks, with the shape
of the distribution (vocabulary size, spread, ties, masked tokens, huge
values) as hypothesis parameters: shrinking then shrinks the description,
and each example stays cheap at 5000 tokens."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from linalign import _core

from reference import nucleus_mask

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
# float32 weights (a vectorised expf) summed in double, against float64: a
# nucleus edge this close to top_p may fall either way
MASS_TOL = 1e-5


@st.composite
def logit_pairs(draw):
    n = draw(st.one_of(st.integers(1, 8), st.integers(1, 300), st.integers(1, 5000)))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 0.01, 0.3, 1.0, 3.0, 30.0]))
    tie_levels = draw(st.sampled_from([0, 1, 2, 5]))  # 0: continuous values
    masked = draw(st.sampled_from([0.0, 0.0, 0.1, 0.9, 1.0]))  # fraction of -inf in stream P
    huge = draw(st.sampled_from([0.0, 0.0, 0.01, 0.5]))  # fraction of +-1e30
    base_offset = draw(st.sampled_from([0.0, 1.0, 30.0]))  # how far B is from P
    rng = np.random.default_rng(seed)
    if tie_levels:
        logits_p = rng.integers(0, tie_levels, n).astype(np.float64) * scale
    else:
        logits_p = rng.normal(0, scale, n)
    logits_b = logits_p + rng.normal(0, base_offset, n) if base_offset else logits_p.copy()
    if huge:
        for logits in (logits_p, logits_b):
            where = rng.random(n) < huge
            logits[where] = rng.choice([-1e30, 1e30], int(where.sum()))
    logits_p[rng.random(n) < masked] = -np.inf
    return logits_p.astype(np.float32), logits_b.astype(np.float32)




def f32(strategy):
    """Values as the binding receives them (C++ float)."""
    return strategy.map(lambda x: float(np.float32(x)))


ratios = f32(st.one_of(st.just(0.0), st.sampled_from([-3.0, -1.0, -0.5, 0.5, 1.0, 2.0]), st.floats(-10, 10)))
top_ps = f32(st.one_of(st.just(1.0), st.sampled_from([1e-6, 0.1, 0.5, 0.8, 0.95, 0.999]), st.floats(1e-6, 1.0)))
temperatures = f32(st.one_of(st.just(0.0), st.sampled_from([1.0, 0.5, 2.0]), st.floats(0.05, 5.0)))


def native(logits_p, logits_b, ratio, top_p, temperature, dense) -> dict[int, float]:
    ids, values = _core.linear_alignment_apply(logits_p, logits_b, ratio, top_p, temperature, dense=dense)
    assert len(ids) == len(set(ids.tolist())), "a token kept twice"
    return dict(zip(ids.tolist(), values.tolist()))


def probabilities(logits_p: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(l_p / T'), T' = T or 1 when T = 0; -inf has probability 0."""
    t = temperature if temperature > 0 else 1.0
    z = (logits_p.astype(np.float64) - logits_p.max()) / t
    p = np.exp(z)
    return p / p.sum()


def valid_nucleus_sizes(p_sorted: np.ndarray, top_p: float) -> set[int]:
    """Sizes k whose top-k mass reaches top_p while the top-(k-1) mass does
    not (ALGORITHM.md step 1), allowing MASS_TOL of rounding either way."""
    cum = np.concatenate([[0.0], np.cumsum(p_sorted)])
    return {k for k in range(1, len(p_sorted) + 1) if cum[k] >= top_p - MASS_TOL and cum[k - 1] < top_p + MASS_TOL}


def expected_combined(logits_p: np.ndarray, logits_b: np.ndarray, ratio: float) -> np.ndarray:
    """Step 2 in float64: (1 + r) l_p - r l_0; -inf (a masked token) stays -inf."""
    lp, lb = logits_p.astype(np.float64), logits_b.astype(np.float64)
    with np.errstate(invalid="ignore"):  # (1 + r) * -inf with r = -1, replaced below
        out = lp if ratio == 0 else (1 + ratio) * lp - ratio * lb
    return np.where(np.isfinite(lp), out, lp)


def check_against_spec(logits_p, logits_b, ratio, top_p, temperature, got: dict[int, float]) -> None:
    n = len(logits_p)
    assert got, "the nucleus is never empty"
    finite = np.isfinite(logits_p)
    kept = np.array(sorted(got))
    if not finite.any():
        # nothing is plausible (a grammar masked all): the set is left alone
        assert len(kept) == n
        assert all(v == -np.inf for v in got.values())
        return
    if top_p >= 1.0:
        kept_set = set(range(n))
        assert set(kept.tolist()) == kept_set
    else:
        # the nucleus: the top-k tokens by l_p for a k the spec allows
        order = np.argsort(-logits_p, kind="stable")
        p = probabilities(logits_p, temperature)
        sizes = valid_nucleus_sizes(p[order], top_p)
        assert len(kept) in sizes, f"nucleus of {len(kept)}, the spec allows {sorted(sizes)[:5]}"
        outside = np.setdiff1d(np.arange(n), kept)
        if len(outside):
            assert logits_p[kept].min() >= logits_p[outside].max(), "a kept token is less likely than a dropped one"
        assert finite[kept].all() or len(kept) == n, "a masked token kept in the nucleus"
        if len(sizes) == 1 and not (np.isin(logits_p[outside], logits_p[kept]).any() if len(outside) else False):
            # no tie at the edge, no rounding question: exactly the reference's set
            assert np.array_equal(np.flatnonzero(nucleus_mask(logits_p, top_p, temperature)), kept)
    want = expected_combined(logits_p, logits_b, ratio)[kept]
    values = np.array([got[i] for i in kept.tolist()], dtype=np.float64)
    assert np.array_equal(np.isneginf(values), np.isneginf(want)), "a masked token came back"
    assert not np.isnan(values).any()
    fin = np.isfinite(want)
    scale = (abs(1 + ratio) * np.abs(logits_p[kept][fin].astype(np.float64))
             + abs(ratio) * np.abs(logits_b[kept][fin].astype(np.float64)))
    np.testing.assert_array_less(np.abs(values[fin] - want[fin]), 1e-6 * scale + 1e-5)


@SETTINGS
@given(pair=logit_pairs(), ratio=ratios, top_p=top_ps, temperature=temperatures, dense=st.booleans())
def test_sampler_follows_the_spec(pair, ratio, top_p, temperature, dense):
    logits_p, logits_b = pair
    got = native(logits_p, logits_b, ratio, top_p, temperature, dense)
    check_against_spec(logits_p, logits_b, ratio, top_p, temperature, got)


@SETTINGS
@given(pair=logit_pairs(), ratio=ratios, top_p=top_ps, temperature=temperatures)
def test_dense_and_candidate_entry_points_agree(pair, ratio, top_p, temperature):
    """The engine's dense path (no grammar) and llama_sampler_apply on a
    candidate array (after a grammar) keep the same tokens, same logits."""
    logits_p, logits_b = pair
    a = native(logits_p, logits_b, ratio, top_p, temperature, dense=True)
    b = native(logits_p, logits_b, ratio, top_p, temperature, dense=False)
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] or (np.isnan(a[k]) and np.isnan(b[k])) for k in a)


@SETTINGS
@given(pair=logit_pairs(), top_p=top_ps, temperature=temperatures, dense=st.booleans())
def test_ratio_zero_is_plain_top_p_of_stream_p(pair, top_p, temperature, dense):
    logits_p, logits_b = pair
    got = native(logits_p, logits_b, 0.0, top_p, temperature, dense)
    for i, v in got.items():
        assert v == logits_p[i] or (np.isneginf(v) and np.isneginf(logits_p[i]))


@SETTINGS
@given(pair=logit_pairs(), ratio=ratios, top_p=top_ps, dense=st.booleans())
def test_greedy_temperature_masks_at_temperature_one(pair, ratio, top_p, dense):
    """T = 0 (greedy) takes the nucleus of softmax(l_p), as T = 1 does."""
    logits_p, logits_b = pair
    assert native(logits_p, logits_b, ratio, top_p, 0.0, dense) == native(logits_p, logits_b, ratio, top_p, 1.0, dense)


@SETTINGS
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**32 - 1), ratio=ratios,
       top_p=f32(st.floats(1e-6, 0.999)), dense=st.booleans())
@example(n=1, seed=0, ratio=2.0, top_p=1e-6, dense=False)
def test_one_dominant_token_is_a_nucleus_of_one(n, seed, ratio, top_p, dense):
    rng = np.random.default_rng(seed)
    logits_p = rng.normal(0, 1, n).astype(np.float32)
    best = int(rng.integers(n))
    logits_p[best] = logits_p.max() + 40  # all else ~4e-18 of it
    logits_b = rng.normal(0, 1, n).astype(np.float32)
    got = native(logits_p, logits_b, ratio, top_p, 1.0, dense)
    assert list(got) == [best]
    assert got[best] == pytest.approx((1 + ratio) * float(logits_p[best]) - ratio * float(logits_b[best]),
                                      rel=1e-6, abs=1e-5)


@SETTINGS
@given(n=st.integers(2, 5000), k=st.integers(1, 64), seed=st.integers(0, 2**32 - 1), dense=st.booleans(),
       top_p=f32(st.floats(0.01, 0.99)))
def test_tied_tokens_make_a_nucleus_of_the_right_size(n, k, seed, dense, top_p):
    """k tokens share the best logit, the rest are far below: the nucleus is
    ceil(top_p * k) of the tied ones, whichever they are."""
    assume(k <= n)
    rng = np.random.default_rng(seed)
    logits_p = np.full(n, -60.0, dtype=np.float32)
    tied = rng.choice(n, k, replace=False)
    logits_p[tied] = 3.0
    got = native(logits_p, logits_p, 1.5, top_p, 1.0, dense)
    sizes = valid_nucleus_sizes(np.sort(probabilities(logits_p, 1.0))[::-1], top_p)
    assert len(got) in sizes
    assert set(got) <= set(tied.tolist())
    assert all(v == pytest.approx(3.0) for v in got.values())


# -- the chain's order, on the real model --------------------------------------------

@pytest.fixture(scope="module")
def model(aligner):
    return aligner._model


def _chain(model, **kw) -> _core.SamplerChain:
    params = _core.SamplingParams()
    params.temperature = 0.0  # greedy: the argmax of what the chain leaves
    params.top_k = 0
    for name, value in kw.items():
        setattr(params, name, value)
    return _core.SamplerChain(params, model)


def _token(model, text: str) -> int:
    ids = model.tokenize(text.encode(), False, False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


def test_grammar_runs_before_the_nucleus(model):
    """A grammar allowing only 'a' and 'b' while another token dominates:
    the nucleus is taken among the allowed tokens. With it over the whole
    vocabulary it would hold only the dominant token, which the grammar
    removes."""
    n = model.n_vocab
    a, b, dominant = _token(model, "a"), _token(model, "b"), _token(model, "Hello")
    rng = np.random.default_rng(0)
    logits_p = rng.normal(0, 1, n).astype(np.float32)
    logits_p[dominant] = 30.0
    logits_p[a], logits_p[b] = 2.0, 1.9  # p(a | allowed) = 0.525
    logits_b = logits_p.copy()
    logits_b[a], logits_b[b] = 3.0, 0.0  # combined (ratio 1): a 1.0, b 3.8
    grammar = "root ::= [ab]"
    # nucleus {a}: a, though b's combined logit is higher
    assert _chain(model, grammar=grammar, ratio=1.0, top_p=0.5).sample(logits_p, logits_b, n) == a
    # nucleus {a, b}: the combine picks b
    assert _chain(model, grammar=grammar, ratio=1.0, top_p=0.6).sample(logits_p, logits_b, n) == b
    # without the grammar the dominant token is all the nucleus
    assert _chain(model, ratio=1.0, top_p=0.6).sample(logits_p, logits_b, n) == dominant


@pytest.mark.parametrize("seed", range(5))
def test_grammar_chain_picks_the_combined_argmax_of_the_allowed_nucleus(model, seed):
    """Greedy over [grammar] -> sampler: the argmax of the combined logits
    over the nucleus of softmax(l_p) restricted to the allowed tokens."""
    n = model.n_vocab
    letters = [_token(model, c) for c in "abcdefgh"]
    rng = np.random.default_rng(seed)
    logits_p = rng.normal(0, 2, n).astype(np.float32)
    logits_b = (logits_p + rng.normal(0, 2, n)).astype(np.float32)
    top_p, ratio = 0.7, 2.0
    masked = np.full(n, -np.inf, dtype=np.float32)
    masked[letters] = logits_p[letters]
    allowed_nucleus = np.flatnonzero(nucleus_mask(masked, top_p))
    combined = expected_combined(masked, logits_b, ratio)
    want = int(allowed_nucleus[np.argmax(combined[allowed_nucleus])])
    got = _chain(model, grammar="root ::= [a-h]", ratio=ratio, top_p=top_p).sample(logits_p, logits_b, n)
    assert got == want


def test_repeat_penalty_acts_on_the_combined_logits(model):
    """Penalties run after the combine. Token A was sampled before; on the
    combined logits A 8.0 > B 5.0, a repeat penalty of 2 halves A to 4.0
    and B wins. Applied to l_p before the combine it would leave A at 6.0."""
    n = model.n_vocab
    tok_a, tok_b = _token(model, "a"), _token(model, "b")
    first = np.full(n, -10.0, dtype=np.float32)
    first[tok_a] = 10.0  # the first step samples A: it enters the penalty history
    logits_p = np.full(n, -10.0, dtype=np.float32)
    logits_b = np.full(n, -10.0, dtype=np.float32)
    logits_p[tok_a], logits_b[tok_a] = 2.0, -4.0  # combined (ratio 1): 2 * 2 + 4 = 8
    logits_p[tok_b], logits_b[tok_b] = 4.5, 4.0  # combined: 9 - 4 = 5

    def second_token(repeat_penalty: float) -> int:
        chain = _chain(model, ratio=1.0, top_p=1.0, repeat_penalty=repeat_penalty)
        assert chain.sample(first, first, n) == tok_a
        return chain.sample(logits_p, logits_b, n)

    assert second_token(1.0) == tok_a
    assert second_token(2.0) == tok_b
    # the arithmetic both outcomes rest on
    assert ((1 + 1) * 2.0 - 1 * -4.0) / 2.0 < (1 + 1) * 4.5 - 1 * 4.0 < (1 + 1) * (2.0 / 2.0) - 1 * -4.0


def test_presence_penalty_acts_after_the_combine(model):
    """A presence penalty subtracts from the combined logit, not from l_p
    (where the combine would scale it by 1 + ratio)."""
    n = model.n_vocab
    tok_a, tok_b = _token(model, "a"), _token(model, "b")
    first = np.full(n, -10.0, dtype=np.float32)
    first[tok_a] = 10.0
    logits_p = np.full(n, -10.0, dtype=np.float32)
    logits_b = logits_p.copy()
    logits_p[tok_a], logits_p[tok_b] = 2.0, 1.0  # ratio 3, l_b = l_p: combined = l_p

    def second_token(presence_penalty: float) -> int:
        chain = _chain(model, ratio=3.0, top_p=1.0, presence_penalty=presence_penalty)
        assert chain.sample(first, first, n) == tok_a
        return chain.sample(logits_p, logits_p, n)

    assert second_token(0.0) == tok_a
    # after the combine A is 2 - 0.9 = 1.1 > 1.0; before it, 4 * 1.1 - 3 * 2 = -1.6 and B would win
    assert second_token(0.9) == tok_a
    assert second_token(1.5) == tok_b


@pytest.mark.parametrize("spread", [0.3, 2.4, 30.0])  # flat (a nucleus of thousands) to peaked
def test_greedy_plain_chain_takes_the_best_token_as_the_nucleus_path_does(model, spread):
    """Greedy plain decoding without penalties skips the nucleus
    (apply_dense_best): the best token is always in it. A repeat penalty on
    a fresh chain (no history: it moves nothing) takes the nucleus path; the
    two agree, and both are the argmax."""
    n = model.n_vocab
    rng = np.random.default_rng(int(spread * 10))
    for _ in range(20):
        logits_p = rng.normal(0, spread, n).astype(np.float32)
        fast = _chain(model, ratio=0.0, top_p=0.8).sample(logits_p, None, n)
        nucleus_path = _chain(model, ratio=0.0, top_p=0.8, repeat_penalty=1.3).sample(logits_p, None, n)
        assert fast == nucleus_path == int(np.argmax(logits_p))


def test_greedy_plain_chain_with_a_principle_agrees_with_the_nucleus_path(model):
    """With a principle's tokens given but one stream (ratio 0), the fast
    path and the nucleus path take the same tokens: the echo guard acts only
    where a principled stream favours a token over the base stream, and
    plain decoding has no base stream, so a copy goes through in both."""
    principle = model.tokenize(b" Always answer in French, my dear friend.", False, False)
    assert len(principle) >= 6
    n = model.n_vocab

    def run(**kw) -> list[int]:
        chain = _chain(model, ratio=0.0, top_p=0.8, principle_tokens=[principle], echo_n=4, **kw)
        out, rng = [], np.random.default_rng(0)
        for i in range(len(principle)):
            logits = rng.normal(0, 1, n).astype(np.float32)  # no ties below the copied token
            logits[principle[i]] = 20.0  # the model would copy the principle
            out.append(chain.sample(logits, None, n))
        return out

    fast, nucleus_path = run(), run(frequency_penalty=1e-6)  # a penalty too small to move a token
    assert fast == nucleus_path == list(principle)


@pytest.mark.parametrize("spread", [0.3, 2.4, 30.0])
@pytest.mark.parametrize("ratio, top_p", [(1.0, 0.8), (2.0, 0.8), (4.0, 0.5), (2.0, 0.95), (-0.5, 0.8)])
def test_greedy_aligned_chain_takes_the_best_combined_token_of_the_nucleus(model, spread, ratio, top_p):
    """Greedy aligned decoding without penalties settles the nucleus from
    bounds (apply_dense_best) instead of cutting it: the token is the one the
    exact cut gives (a penalty too small to move a token takes that path), and
    the spec's: the combined argmax over the nucleus of softmax(l_p)."""
    n = model.n_vocab
    rng = np.random.default_rng(int(spread * 10) + int(ratio * 100) + int(top_p * 1000))
    for _ in range(10):
        logits_p = rng.normal(0, spread, n).astype(np.float32)
        logits_b = (logits_p + rng.normal(0, spread / 2, n)).astype(np.float32)
        nucleus = np.flatnonzero(nucleus_mask(logits_p, top_p))
        want = int(nucleus[np.argmax(expected_combined(logits_p, logits_b, ratio)[nucleus])])
        fast = _chain(model, ratio=ratio, top_p=top_p).sample(logits_p, logits_b, n)
        exact_cut = _chain(model, ratio=ratio, top_p=top_p, frequency_penalty=1e-6).sample(logits_p, logits_b, n)
        assert fast == exact_cut == want


def test_greedy_aligned_chain_passes_over_combined_winners_outside_the_nucleus(model):
    """The best combined tokens lie outside P's nucleus (the base stream
    finds them far less likely still), the less likely the better combined:
    the fast path passes over each in turn, down to the best combined token
    inside the nucleus, as the exact cut finds it."""
    n = model.n_vocab
    rng = np.random.default_rng(11)
    logits_p = rng.normal(0, 1, n).astype(np.float32)
    logits_b = logits_p.copy()
    picked = rng.choice(n, 8, replace=False)
    top, outside = picked[:3], picked[3:]
    logits_p[top] = logits_b[top] = [20.0, 19.5, 19.0]  # the nucleus at top_p 0.9: these three
    logits_p[outside] = [17.0, 16.0, 15.0, 14.0, 13.0]
    combined_outside = np.array([101.0, 102.0, 103.0, 104.0, 105.0])  # 3 l_p - 2 l_0, exact in float
    logits_b[outside] = (3 * logits_p[outside] - combined_outside) / 2
    nucleus = np.flatnonzero(nucleus_mask(logits_p, 0.9))
    assert sorted(nucleus) == sorted(top)
    assert int(np.argmax(expected_combined(logits_p, logits_b, 2.0))) == outside[-1]
    fast = _chain(model, ratio=2.0, top_p=0.9).sample(logits_p, logits_b, n)
    exact_cut = _chain(model, ratio=2.0, top_p=0.9, frequency_penalty=1e-6).sample(logits_p, logits_b, n)
    assert fast == exact_cut == top[0]


@pytest.mark.parametrize("short", [True, False])
def test_greedy_settles_a_mass_at_the_target_with_exact_sums(model, short):
    """Greedy's fast path sums the masses in float blocks; where the mass
    above its candidate lies within those sums' roundings of the target
    (1e-4 of the total) the sums in double decide. Here the tokens more
    likely than the best combined token b hold top_p of the mass but for
    4e-6 of it, below it or above it: b is in the nucleus, or only the top
    token is, and the exact cut agrees."""
    n = model.n_vocab
    rng = np.random.default_rng(5)
    top, b = rng.choice(n, 2, replace=False)
    eps = 2e-5 if short else -2e-5
    # weights: the top token 1, b 0.25, the rest 0.75 (1 + eps) in all; top_p 0.5 of the total
    logits_p = np.full(n, np.log(0.75 * (1 + eps) / (n - 2)), dtype=np.float32)
    logits_p[top], logits_p[b] = 0.0, np.log(0.25)
    logits_b = logits_p.copy()
    logits_b[b] -= 10.0  # the base stream finds b far less likely: it combines best
    w = np.exp(logits_p.astype(np.float64))
    above = w[top] / w.sum()
    assert (above < 0.5) == short and 1e-6 < abs(above - 0.5) < 1e-5, "the construction missed the target"
    want = b if short else top
    assert want in np.flatnonzero(nucleus_mask(logits_p, 0.5))
    fast = _chain(model, ratio=2.0, top_p=0.5).sample(logits_p, logits_b, n)
    exact_cut = _chain(model, ratio=2.0, top_p=0.5, frequency_penalty=1e-6).sample(logits_p, logits_b, n)
    assert fast == exact_cut == want


@pytest.mark.parametrize("spread", [0.3, 2.4])
def test_greedy_auto_ratio_chain_agrees_with_the_exact_cut(model, spread):
    """The same under ratio "auto" (a step size per token from the divergence)."""
    n = model.n_vocab
    rng = np.random.default_rng(int(spread * 10))
    for _ in range(10):
        logits_p = rng.normal(0, spread, n).astype(np.float32)
        logits_b = (logits_p + rng.normal(0, spread, n)).astype(np.float32)
        fast = _chain(model, ratio=2.0, auto_ratio=True, top_p=0.8).sample(logits_p, logits_b, n)
        exact_cut = _chain(model, ratio=2.0, auto_ratio=True, top_p=0.8, frequency_penalty=1e-6).sample(
            logits_p, logits_b, n)
        assert fast == exact_cut

"""The prompt cache and the shared prefix on llama.cpp's other kinds of
memory: a sliding-window KV cache (gemma3), whose cells past the window
llama.cpp may drop, and a recurrent state (mamba), which holds only its last
position, cannot be cut back, and is copied whole. Whatever the cache holds,
a request's logits are those of a fresh prefill of its prompts: reused where
the memory still holds the prefix, recomputed where it does not.

"Those of a fresh prefill" is within 1e-3 in log-probability: a reuse decodes
the rest of a prompt in batches of another shape than a fresh prefill does,
and llama.cpp's kernels may round differently by batch shape on other CPUs.
A wrong cache moves them by far more: 0.09 where the sliding-window test
reused the dropped cells; on a recurrent state copied from past the prefix
llama.cpp refused the decode.
"""
from __future__ import annotations

import numpy as np
import pytest

import linalign

from conftest import load_model_writer

N_SWA = 8
ATOL = 1e-3


def tokens(first: int, n: int) -> list[int]:
    """n distinct word-piece ids (no control tokens: none ends the text)."""
    return list(range(first, first + n))


A = [1] + tokens(260, 23)  # a shared start: BOS and 23 tokens, three windows long
X, Y, Z, W = tokens(300, 6), tokens(310, 6), tokens(320, 6), tokens(330, 6)


def log_softmax(logits) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


@pytest.fixture(scope="module")
def gemma3_path(tmp_path_factory):
    return load_model_writer()(tmp_path_factory.mktemp("gemma3") / "gemma3.gguf", arch="gemma3", n_swa=N_SWA, seed=1)


@pytest.fixture(scope="module")
def mamba_path(tmp_path_factory):
    return load_model_writer()(tmp_path_factory.mktemp("mamba") / "mamba.gguf", arch="mamba", seed=1)


def prime(aligner, prompt, base=None, *, slot=None) -> None:
    """Runs a request whose cache the next one finds: its slot then holds
    exactly its prompts (the one token it samples is not decoded)."""
    engine = aligner.engine
    gen = engine.submit(aligner.completion_request(prompt, base, ratio=2.0, max_tokens=1, temperature=0.0), slot=slot)
    while not gen.done:
        engine.step()


def first_logprobs(aligner, prompt, base=None, *, slot=None):
    """Each stream's log-probabilities of its first token (P, and B where it
    is decoded), and what the request took from its slot's cache."""
    engine = aligner.engine
    gen = engine.submit(aligner.completion_request(prompt, base, ratio=2.0, max_tokens=2, temperature=0.0), slot=slot)
    while not gen.tokens:
        engine.step()
    out = [log_softmax(engine.logits(gen, s)) for s in range(engine.active_streams(gen))]
    stats = engine.last_prefill(gen.slot)
    while not gen.done:
        engine.step()
    return out, stats


def fresh_logprobs(aligner, prompt, base=None, *, slot=None):
    aligner.reset()
    return first_logprobs(aligner, prompt, base, slot=slot)[0]


def assert_close(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)


# -- sliding window (gemma3) ---------------------------------------------------

def test_a_sliding_window_cache_cut_back_far_is_reused_as_a_fresh_prefill_computes(gemma3_path):
    # swa_full: the sliding layers keep every cell, so a cache of 300 tokens
    # cut back to 40 still holds the window before position 40. (Without it
    # they would hold n_swa + n_batch cells, padded to 256: positions 32..39
    # written over, and the 40 tokens recomputed.)
    start = [1] + [260 + i % 130 for i in range(299)]
    with linalign.Aligner(gemma3_path, n_ctx=512, n_batch=32, n_threads=2) as aligner:
        prime(aligner, start + X, start + Y)
        got, stats = first_logprobs(aligner, start[:40] + W, start[:40] + Z)
        assert stats["reused"] == (40, 40)
        assert_close(got, fresh_logprobs(aligner, start[:40] + W, start[:40] + Z))


def test_cells_the_sliding_window_dropped_are_recomputed_not_reused(gemma3_path):
    # In a unified pool llama.cpp writes a sequence's new tokens over the
    # cells another sequence's window has left behind (swa_full or not) and
    # drops those positions: here slot 0's tokens take the cells of slot 1's
    # positions 0..19, of which reusing 24 tokens would need 17..23.
    with linalign.Aligner(gemma3_path, n_ctx=128, n_parallel=2, n_threads=2, kv_unified=True) as aligner:
        other = [1] + tokens(340, 39)
        prime(aligner, [1] + tokens(260, 39), slot=0)
        prime(aligner, other, slot=1)
        prime(aligner, [1] + tokens(260, 9) + tokens(200, 50), slot=0)
        prompt = other[:24] + W
        got, stats = first_logprobs(aligner, prompt, slot=1)
        assert stats["reused"][0] == 0
        assert_close(got, fresh_logprobs(aligner, prompt, slot=1))


# -- recurrent state (mamba) ---------------------------------------------------

@pytest.fixture(scope="module")
def mamba(mamba_path):
    with linalign.Aligner(mamba_path, n_ctx=128, n_threads=2) as aligner:
        yield aligner


@pytest.mark.parametrize("prompt, base, reused", [
    # the state after the cached prompt is where the new one goes on from
    (A + X + W, A + Y + W, (len(A + X), len(A + Y))),
    # the prompts leave the cache inside it: a state cannot be cut back
    (A + Z, A + W, (0, 0)),
    # the same prompts: their last token is decoded again, which the state is past
    (A + X, A + Y, (0, 0)),
], ids=["extends", "diverges", "repeats"])
def test_recurrent_state_is_reused_only_where_the_new_prompt_extends_it(mamba, prompt, base, reused):
    mamba.reset()
    prime(mamba, A + X, A + Y)
    got, stats = first_logprobs(mamba, prompt, base)
    assert stats["reused"] == reused
    assert_close(got, fresh_logprobs(mamba, prompt, base))


def test_a_stream_takes_the_shared_prefix_from_a_recurrent_state_that_ends_there(mamba):
    mamba.reset()
    got, stats = first_logprobs(mamba, A + X, A + Y)
    assert stats["shared"] == len(A)  # P stopped at the prefix; B took its state
    mamba.reset()
    alone = first_logprobs(mamba, A + Y)[0][0]  # B's prompt as a request of its own
    np.testing.assert_allclose(got[1], alone, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kv_unified", [False, True], ids=["per-stream", "unified"])
def test_a_stream_decodes_the_shared_prefix_itself_where_the_donor_state_is_past_it(mamba_path, kv_unified):
    # P's cached state is past the prefix P and B share; the copy would be
    # of that state (llama.cpp copies a recurrent state whole), not the prefix's
    with linalign.Aligner(mamba_path, n_ctx=128, n_threads=2, kv_unified=kv_unified) as aligner:
        prime(aligner, A + X, A + Y)
        got, stats = first_logprobs(aligner, A + X + W, A + Z)
        assert stats["shared"] == 0 and stats["decoded"][1] == len(A + Z)
        assert_close(got, fresh_logprobs(aligner, A + X + W, A + Z))


def test_evaluation_decodes_the_shared_prefix_itself_where_the_donor_state_is_past_it(mamba):
    engine = mamba.engine
    mamba.reset()
    engine.eval_logits(A + X, A + Y)
    got = engine.eval_logits(A + X + W, A + Z, 3, 3)
    mamba.reset()
    want = engine.eval_logits(A + X + W, A + Z, 3, 3)
    for g, w in zip(got, want):
        for row_g, row_w in zip(g, w):
            np.testing.assert_allclose(log_softmax(row_g), log_softmax(row_w), atol=ATOL, rtol=0)

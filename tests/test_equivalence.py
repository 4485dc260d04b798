"""The native path against llama-cpp-python and against an independent numpy
implementation of ALGORITHM.md over two separate llama_cpp.Llama contexts."""
from __future__ import annotations

import numpy as np
import pytest

import linalign

from conftest import (CHAT_PAIRS, LOGPROB_TOL, N_GPU_LAYERS, TOP_ENTRIES, assert_logits_close,
                      assert_streams_are_separate_contexts,
                      entries_of_completion, last_logits)
from reference import combine, greedy_reference

GREEDY = {"temperature": 0.0, "top_k": 40, "repeat_penalty": 1.0}

@pytest.fixture(scope="module")
def aligner(model_path):
    """A KV buffer per stream: each stream laid out as in a context of its
    own, as the references are (the pool places cells where it has room)."""
    with linalign.Aligner(model_path, n_ctx=1024, n_threads=2, seed=0, kv_unified=False,
                          n_gpu_layers=N_GPU_LAYERS) as a:
        yield a


# Equality with separate contexts holds bit for bit only where llama.cpp's
# kernels compute a stream's rows the same way whatever else is in the batch
# (x86-64 without AVX-512 here); AVX-512 CPUs and CUDA pick other kernels for
# other batch shapes, so the native path (P and B in one batch) and the
# reference (one context each) are held to each other within rounding
# (conftest.LOGPROB_TOL, docs/exactness.md).


@pytest.mark.parametrize("prompt", ["The capital of France is", "Once upon a time, a little robot"])
def test_ratio_zero_top_p_one_is_llama_cpp_greedy(aligner, reference_llama, prompt):
    """Plain decoding of one stream: the same batches as llama-cpp-python's
    (the prompt in one batch, then a token a step), so the same text
    exactly, on any hardware."""
    aligner.reset()
    ours = aligner.create_completion(prompt, "unrelated base prompt", ratio=0.0, top_p=1.0, max_tokens=32, **GREEDY)
    theirs = reference_llama.create_completion(prompt, max_tokens=32, temperature=0.0, repeat_penalty=1.0)
    assert ours["choices"][0]["text"] == theirs["choices"][0]["text"]
    assert {k: ours["usage"][k] for k in theirs["usage"]} == theirs["usage"]


@pytest.mark.parametrize("question, principle", CHAT_PAIRS)
def test_greedy_tokens_match_numpy_reference(aligner, reference_llama, second_llama, question, principle):
    """The reference's tokens, up to a token where the native path's top
    two are within rounding of each other (a near tie the other batch shape
    may break the other way)."""
    ratio, top_p = 2.0, 0.8
    messages = [{"role": "user", "content": question}]
    text_p, text_b = aligner.render_chat(messages, principle)
    tokens_p = aligner.tokenize(text_p, add_bos=False)
    tokens_b = aligner.tokenize(text_b, add_bos=False)
    want, _ = greedy_reference(reference_llama, second_llama, tokens_p, tokens_b, ratio=ratio, top_p=top_p,
                                   n_tokens=48, logits_of=last_logits, eog=aligner._model.is_eog)

    # the native path from a fresh cache, through the public API
    aligner.reset()
    result = aligner.create_completion(tokens_p, tokens_b, ratio=ratio, top_p=top_p, max_tokens=48,
                                       logprobs=TOP_ENTRIES, **GREEDY)
    ours = entries_of_completion(result)
    wanted = [aligner.detokenize([t]) for t in want]
    for i, (token, logprob, top) in enumerate(ours):
        if i == len(wanted) or token != wanted[i]:
            other = wanted[i] if i < len(wanted) else None  # None: the reference ended here
            runner_up = top.get(other, min(top.values()) if len(top) >= TOP_ENTRIES else float("-inf"))
            assert logprob - runner_up <= 2 * LOGPROB_TOL, f"token {i}: {token!r} against {other!r}"
            break
    else:
        assert len(ours) == len(wanted)

    # the first step: the native logits are the separate contexts' (within
    # rounding), and the native sampler's combine of them is the reference's
    aligner.reset()
    nat_p, nat_b = aligner.eval_logits(tokens_p, tokens_b)
    for llm, tokens, native in ((reference_llama, tokens_p, nat_p[0]), (second_llama, tokens_b, nat_b[0])):
        llm.reset()
        llm.eval(tokens)
        assert_logits_close(native, last_logits(llm))
    expected = combine(nat_p[0], nat_b[0], ratio, top_p)
    ids, values = linalign.linear_alignment_apply(nat_p[0], nat_b[0], ratio, top_p)
    assert sorted(ids.tolist()) == np.flatnonzero(~np.isinf(expected)).tolist()
    np.testing.assert_allclose(values, expected[ids], atol=1e-3)


def test_each_stream_matches_a_separate_context(aligner, reference_llama, second_llama):
    """With a KV buffer per stream, both streams' logits are those of
    separate contexts (within rounding: other batches): at the prompt (B
    taking a long prefix it shares with P from P's cells) and at every step
    of the batched decode."""
    assert_streams_are_separate_contexts(aligner, reference_llama, second_llama)


def test_aligned_differs_from_plain(aligner):
    messages = [{"role": "user", "content": CHAT_PAIRS[1][0]}]
    plain = aligner.create_chat_completion(messages, principle="", max_tokens=24, **GREEDY)
    aligned = aligner.create_chat_completion(messages, principle=CHAT_PAIRS[1][1], ratio=2.0, max_tokens=24, **GREEDY)
    assert plain["choices"][0]["message"]["content"] != aligned["choices"][0]["message"]["content"]


def test_empty_principle_is_plain_decoding_of_one_stream(aligner):
    messages = [{"role": "user", "content": "Name a fruit."}]
    aligner.reset()
    gen = aligner.submit(aligner.chat_request(messages, principle="", ratio=5.0, max_tokens=8, **GREEDY))
    assert aligner.engine.active_streams(gen) == 1
    result = "".join(aligner.deltas(gen))
    aligner.reset()
    same = aligner.create_chat_completion(messages, principle="", ratio=0.0, max_tokens=8, **GREEDY)
    assert result == same["choices"][0]["message"]["content"]

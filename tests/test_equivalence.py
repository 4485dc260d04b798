"""The native path against llama-cpp-python and against an independent numpy
implementation of ALGORITHM.md over two separate llama_cpp.Llama contexts."""
from __future__ import annotations

import numpy as np
import pytest

import linalign

from conftest import CHAT_PAIRS, N_GPU_LAYERS, assert_streams_are_separate_contexts, last_logits
from reference import greedy_reference

GREEDY = {"temperature": 0.0, "top_k": 40, "repeat_penalty": 1.0}

# Bit-for-bit equality with separate contexts rests on llama.cpp's CPU
# kernels computing each of a stream's rows the same way whatever else is in
# the batch. CUDA picks other kernels for a 1-token than for a 2-token batch,
# so offloaded, the two sides differ by rounding (docs/serving.md).
cpu_only = pytest.mark.skipif(N_GPU_LAYERS != 0, reason="bit-exact only with llama.cpp's CPU kernels")


@pytest.mark.parametrize("prompt", ["The capital of France is", "Once upon a time, a little robot"])
def test_ratio_zero_top_p_one_is_llama_cpp_greedy(aligner, reference_llama, prompt):
    aligner.reset()
    ours = aligner.create_completion(prompt, "unrelated base prompt", ratio=0.0, top_p=1.0, max_tokens=32, **GREEDY)
    theirs = reference_llama.create_completion(prompt, max_tokens=32, temperature=0.0, repeat_penalty=1.0)
    assert ours["choices"][0]["text"] == theirs["choices"][0]["text"]
    assert {k: ours["usage"][k] for k in theirs["usage"]} == theirs["usage"]


@cpu_only
@pytest.mark.parametrize("question, principle", CHAT_PAIRS)
def test_greedy_tokens_equal_numpy_reference(aligner, reference_llama, second_llama, question, principle):
    ratio, top_p = 2.0, 0.8
    messages = [{"role": "user", "content": question}]
    text_p, text_b = aligner.render_chat(messages, principle)
    tokens_p = aligner.tokenize(text_p, add_bos=False)
    tokens_b = aligner.tokenize(text_b, add_bos=False)
    want, first = greedy_reference(reference_llama, second_llama, tokens_p, tokens_b, ratio=ratio, top_p=top_p,
                                   n_tokens=48, logits_of=last_logits, eog=aligner._model.is_eog)

    # the native path from a fresh cache, through the public API
    aligner.reset()
    result = aligner.create_completion(tokens_p, tokens_b, ratio=ratio, top_p=top_p, max_tokens=48, **GREEDY)
    assert result["choices"][0]["text"] == aligner.detokenize(want)
    assert result["usage"]["completion_tokens"] == len(want)

    # the first step: the native sampler on the native logits
    aligner.reset()
    nat_p, nat_b = aligner.eval_logits(tokens_p, tokens_b)
    ids, values = linalign.linear_alignment_apply(nat_p[0], nat_b[0], ratio, top_p)
    assert sorted(ids.tolist()) == np.flatnonzero(~np.isinf(first)).tolist()
    np.testing.assert_allclose(values, first[ids], atol=1e-3)


@cpu_only
def test_each_stream_is_bit_for_bit_a_separate_context(aligner, reference_llama, second_llama):
    """With a KV buffer per stream, both streams' logits are exactly those of
    separate contexts: at the prompt (B taking a long prefix it shares with P
    from P's cells) and at every step of the batched decode."""
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

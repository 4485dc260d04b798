"""The native path against llama-cpp-python and against an independent numpy
implementation of ALGORITHM.md over two separate llama_cpp.Llama contexts."""
from __future__ import annotations

import numpy as np
import pytest

import linalign

from conftest import CHAT_PAIRS, last_logits
from reference import combine

GREEDY = {"temperature": 0.0, "top_k": 40, "repeat_penalty": 1.0}


@pytest.mark.parametrize("prompt", ["The capital of France is", "Once upon a time, a little robot"])
def test_ratio_zero_top_p_one_is_llama_cpp_greedy(aligner, reference_llama, prompt):
    ours = aligner.create_completion(prompt, "unrelated base prompt", ratio=0.0, top_p=1.0, max_tokens=32, **GREEDY)
    theirs = reference_llama.create_completion(prompt, max_tokens=32, temperature=0.0, repeat_penalty=1.0)
    assert ours["choices"][0]["text"] == theirs["choices"][0]["text"]
    assert ours["usage"] == theirs["usage"]


# llama.cpp's logits depend on batch shape and KV layout at the 0.5 level on
# this Q4_1 model (measured: single-token vs batched decode of the same tokens
# differ by up to 0.48; the 8-bit rounding of activations amplifies any change
# of summation order), so exact token equality with separate contexts breaks
# at near-ties, even for the two-call path. The reference is held to what the
# math guarantees: the native sampler on the first step's logits gives the
# reference's combined logits to 1e-3, and at every step, with the reference
# teacher-forced on the native tokens, the native token is the reference's
# best up to the measured discrepancy of the two sides' logits at the two
# tokens involved: |delta combined[x]| <= (1 + r)|delta l_p[x]| + r|delta l_0[x]|.


@pytest.mark.parametrize("question, principle", CHAT_PAIRS)
def test_greedy_tokens_follow_numpy_reference(aligner, reference_llama, second_llama, question, principle):
    ratio, top_p = 2.0, 0.8
    messages = [{"role": "user", "content": question}]
    text_p, text_b = aligner.render_chat(messages, principle)
    tokens_p = aligner.tokenize(text_p, add_bos=False)
    tokens_b = aligner.tokenize(text_b, add_bos=False)
    engine = aligner.engine

    params = linalign._core.SamplingParams()
    params.ratio, params.top_p, params.temperature = ratio, top_p, 0.0
    engine.clear()  # a fresh prefill: KV reuse changes llama.cpp's rounding too
    engine.start(tokens_p, tokens_b, params)
    reference_llama.reset()
    second_llama.reset()
    reference_llama.eval(tokens_p)
    second_llama.eval(tokens_b)
    same = 0
    for step in range(48):
        ref_p, ref_b = last_logits(reference_llama), last_logits(second_llama)
        nat_p, nat_b = engine.logits(0), engine.logits(1)
        want = combine(ref_p, ref_b, ratio, top_p)
        if step == 0:
            # P's prompt sits in contiguous cells, as in a context of its own:
            # its prefill logits agree; B's cells follow P's, and that layout
            # alone moves B's logits (measured up to 0.86 on this model)
            np.testing.assert_allclose(nat_p, ref_p, atol=1e-3)
            ids, values = linalign.linear_alignment_apply(nat_p, ref_b, ratio, top_p)
            assert sorted(ids.tolist()) == np.flatnonzero(~np.isinf(want)).tolist()
            np.testing.assert_allclose(values, want[ids], atol=1e-3)
        token = engine.sample()
        best = int(np.argmax(want))
        same += token == best
        unmasked = ref_p + ratio * (ref_p - ref_b)
        bound = lambda x: (1 + ratio) * abs(nat_p[x] - ref_p[x]) + ratio * abs(nat_b[x] - ref_b[x])
        assert unmasked[best] - unmasked[token] <= bound(best) + bound(token) + 1e-3, (
            f"step {step}: native token {token} is not the reference's best {best} within the logits' discrepancy"
        )
        if aligner._model.is_eog(token):
            break
        engine.decode(token)
        reference_llama.eval([token])
        second_llama.eval([token])
    print(f"{same}/{step + 1} steps picked the reference's token exactly")


def test_aligned_differs_from_plain(aligner):
    messages = [{"role": "user", "content": CHAT_PAIRS[1][0]}]
    plain = aligner.create_chat_completion(messages, principle="", max_tokens=24, **GREEDY)
    aligned = aligner.create_chat_completion(messages, principle=CHAT_PAIRS[1][1], ratio=2.0, max_tokens=24, **GREEDY)
    assert plain["choices"][0]["message"]["content"] != aligned["choices"][0]["message"]["content"]


def test_empty_principle_is_plain_decoding_of_one_stream(aligner):
    messages = [{"role": "user", "content": "Name a fruit."}]
    result = aligner.create_chat_completion(messages, principle="", ratio=5.0, max_tokens=8, **GREEDY)
    assert aligner.engine.streams_identical
    same = aligner.create_chat_completion(messages, principle="", ratio=0.0, max_tokens=8, **GREEDY)
    assert result["choices"][0]["message"]["content"] == same["choices"][0]["message"]["content"]

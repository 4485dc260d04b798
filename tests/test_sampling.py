"""Sampling behaviour of the aligned path: seeds, grammar, stops, streaming."""
from __future__ import annotations

import json

import numpy as np
import pytest
from llama_cpp.llama_grammar import JSON_GBNF

MESSAGES = [{"role": "user", "content": "Tell me about cats."}]
PRINCIPLE = "The user is a five-year-old child."


def chat_text(result) -> str:
    return result["choices"][0]["message"]["content"]


def test_same_seed_same_text(aligner):
    # each from an empty cache: reused positions are computed by other
    # kernels than a fresh prefill (on CUDA it shows in the text)
    aligner.reset()
    a = aligner.create_chat_completion(MESSAGES, principle=PRINCIPLE, seed=42, max_tokens=24, temperature=1.0)
    aligner.reset()
    b = aligner.create_chat_completion(MESSAGES, principle=PRINCIPLE, seed=42, max_tokens=24, temperature=1.0)
    assert chat_text(a) == chat_text(b)


def test_different_seeds_differ(aligner):
    texts = {chat_text(aligner.create_chat_completion(MESSAGES, principle=PRINCIPLE, seed=s, max_tokens=24,
                                                      temperature=1.0, top_p=1.0, top_k=0))
             for s in range(4)}
    assert len(texts) > 1


def test_json_grammar_output_parses(aligner):
    result = aligner.create_chat_completion(
        [{"role": "user", "content": "Describe a cat as a JSON object with name and age."}],
        principle=PRINCIPLE, grammar=JSON_GBNF, max_tokens=120, temperature=0.0, seed=1,
    )
    assert result["choices"][0]["finish_reason"] == "stop"
    json.loads(chat_text(result))


def test_stop_string_ends_generation_without_emitting_it(aligner):
    full = aligner.create_completion("1, 2, 3, 4,", None, max_tokens=16, temperature=0.0)
    text = full["choices"][0]["text"]
    assert " 6" in text
    cut = aligner.create_completion("1, 2, 3, 4,", None, max_tokens=16, temperature=0.0, stop=[" 6"])
    assert cut["choices"][0]["text"] == text[: text.index(" 6")]
    assert cut["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_gives_length(aligner):
    result = aligner.create_completion("Once upon a time", None, max_tokens=5, temperature=0.0)
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 5


def test_filling_the_context_finishes_with_length(model_path):
    import linalign

    with linalign.Aligner(model_path, n_ctx=32, n_threads=2) as small:
        prompt = "Count: " + " ".join(str(i) for i in range(8))
        result = small.create_completion(prompt, "Count:", max_tokens=None, temperature=0.0)
        assert result["choices"][0]["finish_reason"] == "length"
        assert result["usage"]["total_tokens"] <= 32 + 1


@pytest.mark.parametrize("call", ["completion", "chat"])
def test_streamed_text_equals_non_streamed(aligner, call):
    if call == "chat":
        kwargs = dict(principle=PRINCIPLE, seed=7, max_tokens=24, temperature=0.9)
        aligner.reset()  # both from an empty cache (see test_same_seed_same_text)
        whole = chat_text(aligner.create_chat_completion(MESSAGES, **kwargs))
        aligner.reset()
        chunks = list(aligner.create_chat_completion(MESSAGES, stream=True, **kwargs))
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
        assert chunks[-1]["object"] == "chat.completion.chunk"
    else:
        kwargs = dict(seed=7, max_tokens=24, temperature=0.9)
        aligner.reset()
        whole = aligner.create_completion("Pirates are", "Sailors are", **kwargs)["choices"][0]["text"]
        aligner.reset()
        chunks = list(aligner.create_completion("Pirates are", "Sailors are", stream=True, **kwargs))
        streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len(chunks) > 2


def test_completion_shape_matches_llama_cpp_python(aligner):
    result = aligner.create_completion("Hello", None, max_tokens=3)
    assert result["object"] == "text_completion"
    assert set(result) >= {"id", "object", "created", "model", "choices", "usage"}
    assert set(result["choices"][0]) == {"text", "index", "logprobs", "finish_reason"}
    assert set(result["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details"}
    assert set(result["usage"]["prompt_tokens_details"]) == {"cached_tokens"}


PENALTIES = dict(repeat_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5)


def _greedy_text(aligner, **kwargs) -> str:
    aligner.reset()  # each from an empty cache (see test_same_seed_same_text)
    return chat_text(aligner.create_chat_completion(MESSAGES, principle=PRINCIPLE, max_tokens=32, **kwargs))


@pytest.mark.parametrize("name, value, penalised", [
    # (the penalty, its value, what it makes of a logit of 2.0 seen once before)
    ("repeat_penalty", 1.3, 2.0 / 1.3),
    ("presence_penalty", 0.5, 2.0 - 0.5),
    ("frequency_penalty", 0.5, 2.0 - 0.5 * 1),
])
def test_each_penalty_moves_a_seen_token_by_its_amount(aligner, name, value, penalised):
    """Each penalty on the sampler's own distribution, not on a text that a
    kernel may leave unchanged: the native chain (ratio 0, greedy) picks
    token A (logit 2.0) over B, then sees the same logits again with A in
    its history. B wins exactly when its logit lies between the penalised and
    the plain logit of A; without the penalty A wins again."""
    from linalign import _core

    model = aligner._model
    a, b = (model.tokenize(t.encode(), False, False)[0] for t in ("cat", "dog"))
    rng = np.random.default_rng(0)
    logits = rng.normal(-5, 1, model.n_vocab).astype(np.float32)
    for b_logit, b_wins in ((penalised + 0.05, True), (penalised - 0.05, False)):
        logits[a], logits[b] = 2.0, b_logit
        for penalty_on in (True, False):
            params = _core.SamplingParams()
            params.ratio, params.temperature, params.top_p, params.top_k = 0.0, 0.0, 1.0, 0
            if penalty_on:
                setattr(params, name, value)
            chain = _core.SamplerChain(params, model)
            assert chain.sample(logits, None, model.n_vocab) == a  # nothing seen yet: A
            want = b if penalty_on and b_wins else a
            assert chain.sample(logits, None, model.n_vocab) == want, (name, b_logit, penalty_on)


def test_penalties_and_samplers_compose(aligner):
    """top_k = 1 after the penalties leaves one token, the argmax of the
    penalised logits, so sampling with any seed (min_p on top) gives the
    greedy text with the same penalties, not the plain greedy one. At
    temperature 1: greedy decoding takes its nucleus at temperature 1 too
    (ALGORITHM.md step 1), so both chains see the same nucleus."""
    greedy = _greedy_text(aligner, temperature=0.0, **PENALTIES)
    for seed in (3, 4):
        sampled = _greedy_text(aligner, temperature=1.0, top_k=1, min_p=0.05, seed=seed, **PENALTIES)
        assert sampled == greedy

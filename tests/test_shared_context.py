"""Aligner(llama=llm) shares llm's context: llm decodes on stream P's
sequence, exactly as on a context of its own, and the two take turns."""
from __future__ import annotations

import os

import llama_cpp
import numpy as np
import pytest

import linalign
from linalign.shared_context import LentContext

from conftest import N_GPU_LAYERS, last_logits, open_reference_llama, rss_mib

PROMPT = "The capital of France is"
P, B = "Explain gravity to a child.\n", "Explain gravity."


def _plain(llm) -> str:
    return llm.create_completion(PROMPT, max_tokens=24, temperature=0.0)["choices"][0]["text"]


def _aligned(aligner, **kw) -> str:
    return aligner.create_completion(P, B, max_tokens=24, temperature=0.0, **kw)["choices"][0]["text"]


@pytest.fixture()
def llm(model_path):
    llm = open_reference_llama(model_path, n_ctx=512)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def own_context_text(model_path):
    """What an Aligner on a context of its own writes."""
    with linalign.Aligner(model_path, n_ctx=512, n_threads=2, seed=0, n_gpu_layers=N_GPU_LAYERS) as aligner:
        return _aligned(aligner)


def test_the_llama_decodes_on_the_shared_context_as_on_its_own(llm):
    text = _plain(llm)
    logits = last_logits(llm)
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        assert isinstance(llm._ctx, LentContext)
        assert aligner.n_ctx == llm.n_ctx() == 512
        assert _plain(llm) == text
        if N_GPU_LAYERS == 0:  # bit for bit with llama.cpp's CPU kernels
            np.testing.assert_array_equal(last_logits(llm), logits)


def test_aligned_text_equals_an_aligner_with_its_own_context(llm, own_context_text):
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        assert _aligned(aligner) == own_context_text


def test_turns_each_side_finds_its_results_unchanged(llm, own_context_text):
    text = _plain(llm)
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        for _ in range(2):
            assert _aligned(aligner) == own_context_text
            assert _plain(llm) == text
        # after the Llama's turn stream P is decoded again; B's sequence, which
        # the Llama does not touch, is reused
        _plain(llm)
        assert _aligned(aligner) == own_context_text
        assert aligner.last_prefill["reused"] == (0, len(aligner.tokenize(B)) - 1)
        _aligned(aligner)
        assert aligner.last_prefill["reused"][0] > 0  # its own turn: P is reused too


@pytest.mark.parametrize("base, ratio", [(B, 2.0), (B, 0.0), (None, 2.0)],
                         ids=["two streams", "ratio 0 (P only)", "identical prompts"])
def test_an_aligned_stream_goes_on_after_the_llama_decodes(llm, base, ratio):
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        uninterrupted = aligner.create_completion(P, base, ratio=ratio, max_tokens=16, temperature=0.0)
        stream = aligner.create_completion(P, base, ratio=ratio, max_tokens=16, temperature=0.0, stream=True)
        for _ in range(3):
            next(stream)
        _plain(llm)
        assert list(stream)[-1]["choices"][0]["finish_reason"] == "length"
        assert uninterrupted["choices"][0]["finish_reason"] == "length"
        n_prompt = len(aligner.tokenize(P))
        assert aligner.engine.n_past(0) == n_prompt + 15  # the last token is not decoded


@pytest.mark.parametrize("ratio", [2.0, 0.0], ids=["two streams", "P only"])
def test_stream_p_is_decoded_again_after_the_llamas_turn(model_path, llm, ratio):
    """After the Llama used sequence 0, the engine decodes P's tokens again:
    P's logits are those of a fresh Llama evaluating the same tokens."""
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        engine = aligner.engine
        tokens_p, tokens_b = aligner.tokenize(P), aligner.tokenize(B)
        params = linalign._core.SamplingParams()
        params.temperature = 0.0
        params.ratio = ratio
        engine.start(tokens_p, tokens_b, params)
        for _ in range(4):
            token = engine.sample()
            tokens_p.append(token)
            engine.decode(token)
        _plain(llm)  # evicts stream P
        reference = open_reference_llama(model_path, n_ctx=512)
        reference.eval(tokens_p)
        if N_GPU_LAYERS == 0:
            np.testing.assert_array_equal(engine.logits(0), last_logits(reference))
        else:
            np.testing.assert_allclose(engine.logits(0), last_logits(reference), atol=0.5)
        reference.close()


def test_clearing_the_context_ends_an_aligned_stream_clearly(llm):
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        stream = aligner.create_completion(P, B, max_tokens=16, temperature=0.0, stream=True)
        next(stream)
        llm._ctx.kv_cache_clear()  # every sequence, stream B's too
        with pytest.raises(linalign.GenerationSuperseded, match="cleared or restored"):
            list(stream)
        assert _aligned(aligner)  # the next call starts afresh


def test_the_llama_and_the_aligner_in_two_threads(llm, own_context_text):
    """Their steps take one lock and each finds its cache as it left it:
    no crash, no error, full-length results."""
    import threading

    errors, results = [], {"llama": [], "aligner": []}
    start = threading.Barrier(2)

    def llama_side():
        try:
            start.wait()
            for _ in range(2):
                out = llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)
                results["llama"].append(out["choices"][0]["finish_reason"])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    with linalign.Aligner(llama=llm, seed=0) as aligner:
        def aligner_side():
            try:
                start.wait()
                for _ in range(2):
                    out = aligner.create_completion(P, B, max_tokens=8, temperature=0.0)
                    results["aligner"].append(out["choices"][0]["finish_reason"])
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=llama_side), threading.Thread(target=aligner_side)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert results == {"llama": ["length"] * 2, "aligner": ["length"] * 2}


def test_the_llama_finds_its_cached_tokens_after_the_aligners_turn(model_path, llm):
    """Its cached tokens are decoded into sequence 0 again when its turn comes:
    the logits are those of a fresh Llama evaluating the same tokens."""
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        _plain(llm)
        tokens = llm.input_ids[:llm.n_tokens].tolist()
        _aligned(aligner)
        llm.eval([])  # its turn: keeps all of its cached tokens
        assert llm.n_tokens == len(tokens)
        reference = open_reference_llama(model_path, n_ctx=512)
        reference.eval(tokens)
        if N_GPU_LAYERS == 0:
            np.testing.assert_array_equal(last_logits(llm), last_logits(reference))
        reference.close()


def test_a_paused_llama_stream_goes_on_from_its_own_tokens(model_path, llm):
    prompt = llm.tokenize(PROMPT.encode())
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        stream = llm.create_completion(prompt, max_tokens=12, temperature=0.0, stream=True)
        for _ in range(4):
            next(stream)
        n_at_pause = llm.n_tokens
        _aligned(aligner)
        assert list(stream)[-1]["choices"][0]["finish_reason"] == "length"
        assert llm.n_tokens == len(prompt) + 11  # the last sampled token is not evaluated
        mem = llama_cpp.llama_get_memory(llm.ctx)
        assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == llm.n_tokens - 1
        # what it computed: its tokens up to the pause decoded again, then one at a time
        tokens = llm.input_ids[:llm.n_tokens].tolist()
        reference = open_reference_llama(model_path, n_ctx=512)
        reference.eval(tokens[:n_at_pause])
        for token in tokens[n_at_pause:]:
            reference.eval([token])
        if N_GPU_LAYERS == 0:
            np.testing.assert_array_equal(last_logits(llm), last_logits(reference))
        reference.close()


def test_a_restored_llama_state_is_noticed(llm, own_context_text):
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        text = _plain(llm)
        state = llm.save_state()
        _aligned(aligner)
        llm.load_state(state)  # writes the whole context, not through its calls
        assert _aligned(aligner) == own_context_text
        llm.load_state(state)
        assert _plain(llm) == text


def test_close_gives_the_llama_a_context_of_its_own(llm):
    text = _plain(llm)
    aligner = linalign.Aligner(llama=llm, seed=0)
    _aligned(aligner)
    aligner.close()
    assert type(llm._ctx).__name__ == "LlamaContext" and not isinstance(llm._ctx, LentContext)
    assert llm.n_ctx() == 512
    assert _plain(llm) == text


def test_a_dropped_aligner_gives_the_context_back(llm):
    text = _plain(llm)
    aligner = linalign.Aligner(llama=llm, seed=0)
    _aligned(aligner)
    del aligner
    import gc
    gc.collect()
    assert not isinstance(llm._ctx, LentContext)
    assert _plain(llm) == text


def test_a_second_aligner_on_the_same_llama_gets_its_own_context(llm, own_context_text):
    with linalign.Aligner(llama=llm, seed=0) as first, linalign.Aligner(llama=llm, seed=0) as second:
        assert llm._ctx.ctx == first.engine.context_address != second.engine.context_address
        assert _aligned(second) == _aligned(first) == own_context_text


def test_a_larger_n_ctx_is_kept_and_the_llama_keeps_its_own_limit(llm):
    with linalign.Aligner(llama=llm, n_ctx=1024, seed=0) as aligner:
        assert aligner.n_ctx == 1024
        assert llm.n_ctx() == 512
        with pytest.raises(ValueError, match="exceed context window"):
            llm.create_completion([504] * 600, max_tokens=1)
    with linalign.Aligner(llama=llm, n_ctx=64, seed=0) as aligner:
        assert aligner.n_ctx == 512  # never smaller than the Llama's, whose sequence is stream P


@pytest.mark.skipif(N_GPU_LAYERS != 0, reason="host memory; a GPU keeps the KV cache on the device")
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_the_process_holds_one_kv_cache_more_than_the_llama(model_path):
    """4096 cells of the default model's KV cache are 90 MiB: sharing adds one
    (stream B), an Aligner with a context of its own would add two."""
    llm = open_reference_llama(model_path, n_ctx=4096)
    _plain(llm)
    kv_mib = 30 * 4096 * (192 + 192) * 2 / 2**20  # layers * cells * (K + V) * f16
    before = rss_mib()
    with linalign.Aligner(llama=llm, seed=0) as aligner:
        _aligned(aligner)
        grown = rss_mib() - before
    llm.close()
    assert 0.8 * kv_mib < grown < 1.3 * kv_mib, (grown, kv_mib)

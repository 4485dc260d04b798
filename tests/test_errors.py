"""Bad input raises a clear Python exception and the object stays usable."""
from __future__ import annotations

import math

import pytest

import linalign

from conftest import rss_mib

MESSAGES = [{"role": "user", "content": "Hello"}]


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        linalign.Aligner(tmp_path / "nope.gguf")


def test_non_gguf_file(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"this is not a model" * 10)
    with pytest.raises(ValueError, match="not a GGUF"):
        linalign.Aligner(bogus)


def test_truncated_gguf(tmp_path, model_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(model_path.read_bytes()[:4096])
    with pytest.raises((ValueError, RuntimeError), match="load"):
        linalign.Aligner(broken)


@pytest.mark.parametrize("kwargs, error", [
    ({"ratio": math.nan}, ValueError),
    ({"ratio": math.inf}, ValueError),
    ({"temperature": math.nan}, ValueError),
    ({"temperature": -1.0}, ValueError),
    ({"top_p": 0.0}, ValueError),
    ({"top_p": 1.5}, ValueError),
    ({"top_p": math.nan}, ValueError),
    ({"min_p": 2.0}, ValueError),
    ({"repeat_penalty": 0.0}, ValueError),
    ({"seed": -1}, ValueError),
    ({"ratio": "2"}, ValueError),   # a string is a ratio only when it is "auto"
    ({"ratio": "fast"}, ValueError),
    ({"ratio": [2.0]}, TypeError),
    ({"echo_guard_n": 1}, ValueError),
    ({"max_tokens": 1.5}, TypeError),
    ({"grammar": "root ::= ("}, ValueError),
    ({"stop": 3}, TypeError),
])
def test_bad_parameters(aligner, kwargs, error):
    with pytest.raises(error):
        aligner.create_chat_completion(MESSAGES, principle="Be kind.", **kwargs)
    assert aligner.create_chat_completion(MESSAGES, principle="Be kind.", max_tokens=2)["choices"]


def test_prompt_longer_than_context(aligner):
    with pytest.raises(ValueError, match="context window"):
        aligner.create_completion("word " * 2000, None, max_tokens=4)
    assert aligner.create_completion("Still works", None, max_tokens=2)["choices"]


def test_invalid_utf8(aligner):
    with pytest.raises(ValueError, match="UTF-8"):
        aligner.create_completion(b"\xff\xfe bad bytes", None, max_tokens=2)
    with pytest.raises(ValueError, match="Unicode"):
        aligner.create_completion("lone surrogate \ud800", None, max_tokens=2)


@pytest.mark.parametrize("messages, error", [
    ([], ValueError),
    ([{"role": "wizard", "content": "hi"}], ValueError),
    ([{"role": "user", "content": 5}], TypeError),
    (["hello"], TypeError),
    ("hello", ValueError),
])
def test_bad_messages(aligner, messages, error):
    with pytest.raises(error):
        aligner.create_chat_completion(messages, principle="x")


def test_token_ids_outside_vocabulary(aligner):
    with pytest.raises(ValueError, match="vocabulary"):
        aligner.create_completion([1, 2, 10**9], None, max_tokens=2)


def test_empty_principle_is_not_an_error(aligner):
    assert aligner.create_chat_completion(MESSAGES, principle="", max_tokens=2)["choices"]


def test_closed_aligner(model_path):
    aligner = linalign.Aligner(model_path, n_ctx=128)
    stream = aligner.create_completion("Hello there", None, max_tokens=8, stream=True)
    next(stream)
    aligner.close()
    aligner.close()  # idempotent
    with pytest.raises(linalign.AlignerClosedError):
        aligner.create_completion("Hello", None)
    with pytest.raises(linalign.AlignerClosedError):
        next(stream)


def test_newer_call_supersedes_an_abandoned_stream(aligner):
    stream = aligner.create_completion("One two three", None, max_tokens=8, stream=True)
    next(stream)
    aligner.create_completion("Another prompt", None, max_tokens=2)
    with pytest.raises(linalign.GenerationSuperseded):
        list(stream)


def test_closed_llama_is_detected(model_path):
    llm = linalign.load_llama(model_path, n_ctx=64, verbose=False)
    aligner = linalign.Aligner(llama=llm, n_ctx=128)
    assert aligner.create_completion("Hi", None, max_tokens=2)["choices"]
    llm.close()
    with pytest.raises(linalign.AlignerClosedError):
        aligner.create_completion("Hi", None, max_tokens=2)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_nothing_leaks_over_open_generate_fail_close(tiny_gguf):
    """Models, contexts, samplers and batches are freed on every path: a leaked
    context alone (KV cache and compute buffers) would grow RSS by megabytes
    per cycle."""
    def cycle():
        with linalign.Aligner(tiny_gguf, n_ctx=256, n_threads=1) as aligner:
            aligner.create_completion("hello world the cat", "hello world", max_tokens=8, temperature=0.8, seed=1)
            for bad in ({"ratio": math.nan}, {"top_p": 2.0}, {"grammar": "root ::= ("}):
                with pytest.raises(ValueError):
                    aligner.create_completion("hello", "world", max_tokens=2, **bad)
            with pytest.raises(ValueError, match="context window"):
                aligner.create_completion("hello " * 300, "world", max_tokens=2)

    for _ in range(20):  # allocator pools and caches settle first
        cycle()
    before = rss_mib()
    for _ in range(100):
        cycle()
    assert rss_mib() - before < 8


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_nothing_leaks_when_a_llama_lends_its_weights_over_and_over(tiny_gguf):
    """Each Aligner(llama=...) makes a context on the Llama's weights and
    registers its close with the Llama's model: none may be left behind."""
    llm = linalign.load_llama(tiny_gguf, n_ctx=256, n_threads=1, verbose=False)

    def cycle():
        with linalign.Aligner(llama=llm, seed=1) as aligner:
            aligner.create_completion("hello world the cat", "hello world", max_tokens=4, temperature=0.8)
            llm.create_completion("hello world", max_tokens=4)
        llm.create_completion("hello world", max_tokens=2)

    for _ in range(20):
        cycle()
    before = rss_mib()
    for _ in range(100):
        cycle()
    assert rss_mib() - before < 8
    llm.close()


@pytest.mark.skipif(not linalign._core.cpu_has_amx_weight_buffers(), reason="a CPU whose llama.cpp offers AMX buffers")
def test_a_llama_with_weights_in_amx_buffers_is_refused_clearly(model_path):
    """llama.cpp's AMX matrix product segfaults here (llama.cpp issue 20824):
    such a Llama is refused before anything decodes on it."""
    import llama_cpp

    llm = llama_cpp.Llama(str(model_path), n_ctx=64, verbose=False)
    with pytest.raises(ValueError, match="load_llama"):
        linalign.Aligner(llama=llm)
    llm.close()


def test_load_llama_keeps_weights_out_of_amx_buffers(model_path):
    from linalign.llama_loader import weights_in_amx_buffers

    llm = linalign.load_llama(model_path, n_ctx=64, verbose=False)
    assert not weights_in_amx_buffers(llm)
    assert llm.create_completion("Hello", max_tokens=2)["choices"]
    llm.close()


@pytest.mark.parametrize("kwargs", [{"n_ctx": 2**40}, {"n_ctx": 2**23, "n_parallel": 64}, {"n_ctx": 4},
                                    {"n_parallel": 0}, {"n_batch": 1}, {"n_threads": 0}])
def test_sizes_beyond_what_fits_are_a_value_error(tiny_gguf, kwargs):
    """Checked before any 32-bit arithmetic: never an overflow or a crash."""
    with pytest.raises(ValueError):
        linalign.Aligner(tiny_gguf, **kwargs)

"""Lifetimes at the Python/C++ seam: a borrowed model outlives every context
made on it, whatever order things are closed or collected in; the GIL is
released while llama.cpp decodes. Run under valgrind by .ci/valgrind."""
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import linalign
from linalign import Aligner, AlignerClosedError


@pytest.fixture()
def llm(tiny_gguf):
    llama = linalign.load_llama(tiny_gguf, n_ctx=64, n_threads=1, verbose=False)
    yield llama
    llama.close()


def generate(aligner: Aligner) -> str:
    return aligner.create_completion("hello world", "world", max_tokens=3, temperature=0.0)["choices"][0]["text"]


def test_closing_the_llama_first_closes_the_aligner_before_the_weights(llm):
    a = Aligner(llama=llm, n_ctx=64, n_threads=1)
    generate(a)
    llm.close()
    assert a.closed
    with pytest.raises(AlignerClosedError):
        generate(a)
    a.close()
    a.close()


def test_closing_the_aligner_first_leaves_the_llama_working(llm):
    a = Aligner(llama=llm, n_ctx=64, n_threads=1)
    generate(a)
    a.close()
    a.close()
    llm.create_completion("hello", max_tokens=2)
    llm.close()
    llm.close()


def test_a_stream_in_progress_fails_cleanly_when_the_llama_is_closed(llm):
    a = Aligner(llama=llm, n_ctx=64, n_threads=1)
    chunks = a.create_completion("hello world", max_tokens=20, stream=True)
    next(chunks)
    llm.close()
    with pytest.raises(AlignerClosedError):
        list(chunks)


@pytest.mark.parametrize("first", ["llama", "aligner"])
def test_garbage_collection_in_either_order(tiny_gguf, first):
    llm = linalign.load_llama(tiny_gguf, n_ctx=64, n_threads=1, verbose=False)
    a = Aligner(llama=llm, n_ctx=64, n_threads=1)
    generate(a)
    # a reference cycle through each, so that the collector (not reference
    # counting) finalises them, in an order of its own
    llm._cycle = llm
    a._cycle = a
    if first == "llama":
        del llm
        gc.collect()
        del a
    else:
        del a
        gc.collect()
        del llm
    gc.collect()


def test_several_aligners_on_one_llama(llm):
    aligners = [Aligner(llama=llm, n_ctx=64, n_threads=1) for _ in range(3)]
    for a in aligners:
        generate(a)
    aligners[1].close()
    llm.close()
    assert all(a.closed for a in aligners)


def test_interpreter_shutdown_with_everything_open(tiny_gguf):
    script = textwrap.dedent(f"""
        import linalign
        llm = linalign.load_llama({str(tiny_gguf)!r}, n_ctx=64, n_threads=1, verbose=False)
        a = linalign.Aligner(llama=llm, n_ctx=64, n_threads=1)
        b = linalign.Aligner({str(tiny_gguf)!r}, n_ctx=64, n_threads=1)
        stream = a.create_completion("hello", max_tokens=5, stream=True)
        next(stream)
        b.create_completion("hello", max_tokens=2)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_another_thread_runs_while_a_long_prompt_is_prefilled(model_path):
    with Aligner(model_path, n_ctx=2048, n_batch=1024, n_threads=1) as a:
        prompt = a.tokenize("The river runs to the sea. " * 150)  # ~1000 tokens in one llama_decode
        ticks = 0
        stop = threading.Event()

        def count() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                time.sleep(0.001)

        counter = threading.Thread(target=count)
        counter.start()
        start = time.monotonic()
        a.eval_logits(prompt, prompt)
        elapsed = time.monotonic() - start
        stop.set()
        counter.join()
        # with the GIL held for the whole decode the counter would tick ~once
        assert elapsed > 0.05
        assert ticks >= 10

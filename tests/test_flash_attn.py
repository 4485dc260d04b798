"""Flash attention (``flash_attn=True``/``"auto"``, ``linalign serve
--flash-attn``): each stream is still exactly a context of its own with the
same setting, and a request's greedy text does not depend on what else is in
the batch."""
from __future__ import annotations

import numpy as np
import pytest

import linalign
from linalign.server.cli import _flash_attn, main as serve_main

from conftest import CHAT_PAIRS, N_GPU_LAYERS, last_logits

GREEDY = {"temperature": 0.0, "top_k": 40, "repeat_penalty": 1.0}
cpu_only = pytest.mark.skipif(N_GPU_LAYERS != 0, reason="bit-exact only with llama.cpp's CPU kernels")


@pytest.fixture(scope="module")
def fa_aligner(model_path):
    with linalign.Aligner(model_path, n_ctx=1024, n_parallel=4, n_batch=256, n_threads=2, seed=0,
                          n_gpu_layers=N_GPU_LAYERS, flash_attn="auto") as a:
        yield a


@pytest.fixture(scope="module")
def fa_llamas(model_path):
    pair = [linalign.load_llama(model_path, n_ctx=1024, n_threads=2, n_threads_batch=2, n_gpu_layers=N_GPU_LAYERS,
                                flash_attn=True, verbose=False) for _ in range(2)]
    yield pair
    for llm in pair:
        llm.close()


@cpu_only
def test_each_stream_is_bit_for_bit_a_flash_attention_context(fa_aligner, fa_llamas):
    shared = "A long shared introduction that both prompts start with, about rivers, mountains and the sea. " * 2
    tokens_p = fa_aligner.tokenize(shared + "Be terse. Describe a river:")
    tokens_b = fa_aligner.tokenize(shared + "Describe a river:")
    fa_aligner.reset()
    engine = fa_aligner.engine
    gen = fa_aligner.submit(fa_aligner.completion_request(tokens_p, tokens_b, ratio=2.0, max_tokens=9, **GREEDY))
    ref_p, ref_b = fa_llamas
    ref_p.reset()
    ref_b.reset()
    ref_p.eval(tokens_p)
    ref_b.eval(tokens_b)
    for i in range(8):
        while len(gen.tokens) <= i:
            engine.step()
        np.testing.assert_array_equal(engine.logits(gen, 0), last_logits(ref_p))
        np.testing.assert_array_equal(engine.logits(gen, 1), last_logits(ref_b))
        ref_p.eval([gen.tokens[-1]])
        ref_b.eval([gen.tokens[-1]])
    gen.cancel()


@cpu_only
def test_four_concurrent_greedy_requests_equal_each_alone_with_flash_attention(fa_aligner):
    questions = CHAT_PAIRS + [("Tell me about cats.", "Answer in one short sentence.")]
    options = linalign.SamplingOptions(temperature=0.0, max_tokens=32)
    alone = []
    for question, principle in questions:
        fa_aligner.reset()
        alone.append(fa_aligner.create_chat_completion([{"role": "user", "content": question}], principle=principle,
                                                       options=options)["choices"][0]["message"]["content"])
    fa_aligner.reset()
    gens = [fa_aligner.submit(fa_aligner.chat_request([{"role": "user", "content": q}], principle=p, options=options))
            for q, p in questions]
    while not all(g.done for g in gens):
        fa_aligner.engine.step()
    assert ["".join(iter(g.pop_delta, None)) for g in gens] == alone


@pytest.mark.parametrize("value", ["yes", "on", 1, None, 0.0])
def test_flash_attn_takes_true_false_or_auto(value):
    with pytest.raises(ValueError, match="flash_attn must be True, False or 'auto'"):
        linalign.Aligner(flash_attn=value)


def test_serve_refuses_an_unknown_flash_attn(capsys):
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--flash-attn", "maybe"])
    assert exit_info.value.code == 2
    assert "--flash-attn" in capsys.readouterr().err


def test_serve_defaults_to_off_on_the_cpu_and_auto_when_offloading():
    assert _flash_attn(None, 0) is False
    assert _flash_attn(None, -1) == "auto" and _flash_attn(None, 20) == "auto"
    assert _flash_attn("on", 0) is True and _flash_attn("off", -1) is False and _flash_attn("auto", 0) == "auto"

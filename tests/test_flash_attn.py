"""Flash attention (``flash_attn=True``/``"auto"``, ``linalign serve
--flash-attn``): each stream is still a context of its own with the same
setting, and a request's greedy decoding does not depend on what else is in
the batch, within rounding (conftest.LOGPROB_TOL: the batches differ)."""
from __future__ import annotations

import pytest

import linalign
from linalign.server.cli import _flash_attn, main as serve_main

from conftest import (CHAT_PAIRS, CLOSENESS_RATIO, N_GPU_LAYERS, assert_same_greedy_decoding,
                      assert_streams_are_separate_contexts, greedy_alone_and_together)


@pytest.fixture(scope="module")
def fa_aligner(model_path):
    # a KV buffer per stream: each stream a context of its own, as fa_llamas are
    with linalign.Aligner(model_path, n_ctx=1024, n_parallel=4, n_batch=256, n_threads=2, seed=0, kv_unified=False,
                          n_gpu_layers=N_GPU_LAYERS, flash_attn="auto") as a:
        yield a


@pytest.fixture(scope="module")
def fa_llamas(model_path):
    pair = [linalign.load_llama(model_path, n_ctx=1024, n_threads=2, n_threads_batch=2, n_gpu_layers=N_GPU_LAYERS,
                                flash_attn=True, verbose=False) for _ in range(2)]
    yield pair
    for llm in pair:
        llm.close()


def test_each_stream_matches_a_flash_attention_context(fa_aligner, fa_llamas):
    assert_streams_are_separate_contexts(fa_aligner, *fa_llamas)


def test_four_concurrent_greedy_requests_match_each_alone_with_flash_attention(fa_aligner):
    questions = CHAT_PAIRS + [("Tell me about cats.", "Answer in one short sentence.")]
    options = linalign.SamplingOptions(ratio=CLOSENESS_RATIO, temperature=0.0, max_tokens=32)
    alone, together = greedy_alone_and_together(fa_aligner, questions, options)
    for each_alone, each_together in zip(alone, together):
        assert_same_greedy_decoding(each_together, each_alone)


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

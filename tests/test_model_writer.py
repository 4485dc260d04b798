"""linalign.synthetic_model (and its command, models/make_tiny_gguf.py): its
architectures, each with its kind of memory in llama.cpp, and its options for
stand-ins of larger models (the synthetic 0.5B-class benchmark model and
``linalign bench overhead`` use them): a vocabulary filled past the built-in
pieces, F16 weights, a tied output layer, an end token greedy never picks."""
from __future__ import annotations

import subprocess
import sys

import gguf
import llama_cpp
import numpy as np
import pytest

import linalign

from linalign.synthetic_model import EOS_ID

from conftest import ROOT, load_model_writer


def test_filled_f16_tied_model_loads_and_runs(tmp_path):
    path = load_model_writer()(tmp_path / "m.gguf", n_vocab=5000, n_embd=64, n_layer=2, f16=True, tie_output=True, seed=1)
    reader = gguf.GGUFReader(path)
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    assert "output.weight" not in names  # tied to token_embd
    assert names["token_embd.weight"] == "F16" and names["blk.0.attn_q.weight"] == "F16"

    with linalign.Aligner(path, n_ctx=128, n_threads=2) as aligner:
        tokens = aligner.tokenize("hello world the cat")
        assert max(tokens) < 1091  # text never tokenizes into the filler pieces
        logits_p, logits_b = aligner.engine.eval_logits(tokens, aligner.tokenize("hello world"), 1, 1)
        assert logits_p.shape == (1, 5000) and np.isfinite(logits_p).all()
        assert 1.0 < float(np.std(logits_p)) < 10.0  # spread like the untied tiny model's, not saturated
        out = aligner.create_completion("hello world", "hello", max_tokens=4, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("arch, n_swa, recurrent", [
    ("llama", 0, False),   # a KV cache
    ("gemma3", 16, False),  # sliding-window layers beside global ones
    ("mamba", 0, True),    # a recurrent state
])
def test_each_architecture_loads_with_its_kind_of_memory_and_generates(tmp_path, arch, n_swa, recurrent):
    path = load_model_writer()(tmp_path / f"{arch}.gguf", arch=arch, n_swa=16, seed=1)
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, verbose=False)
    try:
        assert llama_cpp.llama_model_n_swa(llm.model) == n_swa
        assert llama_cpp.llama_model_is_recurrent(llm.model) == recurrent
    finally:
        llm.close()
    with linalign.Aligner(path, n_ctx=128, n_threads=2) as aligner:
        out = aligner.create_chat_completion([{"role": "user", "content": "hello world"}], principle="Be brief.",
                                             max_tokens=4, temperature=0.0)
        assert out["usage"]["completion_tokens"] >= 1


def test_gemma3_model_carries_gemma3_chat_template(tmp_path):
    path = load_model_writer()(tmp_path / "g.gguf", arch="gemma3")
    with linalign.Aligner(path, n_ctx=64, n_threads=2) as aligner:
        p, b = aligner.render_chat([{"role": "user", "content": "hello"}], "Be brief.", principle_position="system")
        end, _ = aligner.render_chat([{"role": "user", "content": "hello"}], "Be brief.")
    # Gemma folds a system message into the first user turn
    assert p.endswith("<start_of_turn>user\nBe brief.\n\nhello<end_of_turn>\n<start_of_turn>model\n")
    assert end.endswith("<start_of_turn>user\nhello\n\nBe brief.<end_of_turn>\n<start_of_turn>model\n")
    assert b.endswith("<start_of_turn>user\nhello<end_of_turn>\n<start_of_turn>model\n")


def _output_rows(path) -> np.ndarray:
    reader = gguf.GGUFReader(path)
    return np.array(next(t.data for t in reader.tensors if t.name == "output.weight"))


def test_eos_never_chosen_zeroes_only_the_end_tokens_output_row(tmp_path):
    plain = _output_rows(load_model_writer()(tmp_path / "a.gguf", n_vocab=1000, seed=2))
    quiet = _output_rows(load_model_writer()(tmp_path / "b.gguf", n_vocab=1000, seed=2, eos_never_chosen=True))
    assert not quiet[EOS_ID].any() and plain[EOS_ID].any()
    others = np.arange(len(plain)) != EOS_ID
    assert np.array_equal(plain[others], quiet[others])  # the same seed gives the same weights otherwise


def test_the_command_writes_a_wide_vocabulary_model(tmp_path):
    out = tmp_path / "wide.gguf"
    subprocess.run([sys.executable, str(ROOT / "models" / "make_tiny_gguf.py"), str(out), "--n-vocab", "49152",
                    "--eos-never-chosen"], check=True, capture_output=True)
    assert gguf.GGUFReader(out).fields["llama.vocab_size"].parts[-1][0] == 49152


def test_a_favoured_token_is_added_whole_and_chosen_wherever_it_may_be(tmp_path):
    path = load_model_writer()(tmp_path / "f.gguf", seed=2, favoured_token="<tool_call>")
    with linalign.Aligner(path, n_ctx=128, n_threads=2) as aligner:
        out = aligner.create_completion("the cat", max_tokens=4, temperature=0, ratio=0)
        assert out["choices"][0]["text"] == "<tool_call>" * 4
        # a grammar that leaves it out: the others are chosen as ever
        other = aligner.create_completion("the cat", max_tokens=4, temperature=0, ratio=0, grammar='root ::= [a-z]+')
        assert other["choices"][0]["text"].isalpha()
    with pytest.raises(ValueError, match="favoured_token"):
        load_model_writer()(tmp_path / "t.gguf", favoured_token="<x>", tie_output=True)
    with pytest.raises(ValueError, match="added tokens"):
        load_model_writer()(tmp_path / "d.gguf", favoured_token="a")  # a letter: already a piece

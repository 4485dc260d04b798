"""models/make_tiny_gguf.py's options for stand-ins of larger models (the
synthetic 0.5B-class benchmark model uses them): a vocabulary filled past the
built-in pieces, F16 weights, a tied output layer."""
from __future__ import annotations

import gguf
import numpy as np

import linalign

from conftest import load_model_writer


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

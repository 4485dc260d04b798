"""Forward-pass counting is for a context made for measuring: off by default
(its eval callback makes a GPU synchronize after every graph split), and
then not reported; on when asked, one pass per llama_decode here."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

import linalign
from linalign.server.app import create_app
from linalign.server.cli import _parser
from linalign.server.presets import Presets
from linalign.server.scheduler import Scheduler


def _completion(aligner: linalign.Aligner) -> None:
    aligner.create_completion("hello world", "the cat", max_tokens=8, temperature=0.0, ratio=2.0)


def test_passes_are_not_counted_by_default(tiny_gguf):
    with linalign.Aligner(tiny_gguf, n_ctx=128, n_threads=2) as aligner:
        _completion(aligner)
        assert aligner.engine.counts_passes is False
        assert aligner.engine.n_forward_passes is None
        assert aligner.engine.n_decode_calls > 0  # steps are still counted


def test_counted_passes_move_by_one_per_llama_decode(tiny_gguf):
    """In the KV pool llama.cpp splits no batch of n_batch tokens or fewer,
    so a step's one llama_decode is one forward pass, prefill included."""
    with linalign.Aligner(tiny_gguf, n_ctx=128, n_threads=2, count_passes=True) as aligner:
        engine = aligner.engine
        assert engine.counts_passes is True and engine.n_forward_passes == 0
        _completion(aligner)
        assert engine.n_forward_passes == engine.n_decode_calls > 0


@pytest.mark.parametrize("count_passes", [False, True])
def test_health_reports_forward_passes_only_when_counted(tiny_gguf, count_passes):
    with linalign.Aligner(tiny_gguf, n_ctx=128, n_threads=2, count_passes=count_passes) as aligner:
        _completion(aligner)
        scheduler = Scheduler(aligner.engine, queue_size=2)
        try:
            model_id = aligner.model_path.name
            with TestClient(create_app(aligner, scheduler, model_id=model_id, presets=Presets(model_id))) as client:
                health = client.get("/health").json()
        finally:
            scheduler.close()
        expected = aligner.engine.n_decode_calls if count_passes else None
        assert health["forward_passes"] == expected and health["decode_calls"] > 0


def test_serve_counts_passes_only_with_its_flag():
    assert _parser().parse_args([]).count_passes is False
    assert _parser().parse_args(["--count-passes"]).count_passes is True

"""`linalign bench` runs end to end with tiny settings (on the tiny random GGUF) and writes a JSON
document with the expected keys. A smoke test: no speed is asserted here."""
from __future__ import annotations

import json

import pytest

from linalign.bench import main as bench_main
from linalign.benchmarking.methods import METHOD_NAMES


@pytest.fixture(scope="module")
def bench_doc(tmp_path_factory, tiny_gguf):
    out = tmp_path_factory.mktemp("bench")
    rc = bench_main(["--model", str(tiny_gguf), "--max-tokens", "3", "--reps", "1", "--n-ctx", "512", "--threads", "2",
                     "--multiturn-tokens", "2", "--combine-iters", "2", "--quiet",
                     "--json", str(out / "bench.json"), "--png", str(out / "bench.png")])
    assert rc == 0
    return json.loads((out / "bench.json").read_text()), out


def test_bench_writes_json_with_every_section(bench_doc):
    doc, _ = bench_doc
    assert {"config", "workload", "machine", "model", "results", "ratios", "combine", "multiturn",
            "kv_cache_one_sequence", "memory", "targets"} <= set(doc)


def test_bench_times_every_method(bench_doc):
    doc, _ = bench_doc
    assert list(doc["results"]) == list(METHOD_NAMES)
    for result in doc["results"].values():
        assert {"decode_tps", "ttft_ms", "prefill_tps"} <= set(result)
        assert result["decode_tps"]["median"] > 0
        assert result["n_generated"][0] >= 3  # llama-cpp-python may overrun on split UTF-8


def test_bench_prints_the_ratios_the_issue_asks_for(bench_doc):
    doc, _ = bench_doc
    assert set(doc["ratios"]) == {"linalign/floor", "linalign/plain", "linalign/naive", "linalign/two-call"}


def test_bench_measures_combine_memory_and_multiturn(bench_doc):
    doc, _ = bench_doc
    assert [doc["combine"][k]["n_vocab"] for k in ("model_vocab", "vocab_152k")] == [doc["model"]["n_vocab"], 151936]
    assert set(doc["memory"]) == {"plain", "linalign", "linalign+llama", "naive", "two-call"}
    assert all(m["peak_rss_bytes"] > 0 for m in doc["memory"].values())
    assert [row["turn"] for row in doc["multiturn"]] == [1, 2, 3, 4, 5]


def test_bench_writes_png(bench_doc):
    _, out = bench_doc
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_unknown_methods():
    with pytest.raises(SystemExit):
        bench_main(["--methods", "plain,warp-drive"])

"""`linalign bench server` runs end to end in a tiny configuration (the tiny
random GGUF, clients 1 and 2, 4 tokens, a 2-turn chat): it starts and stops
its own servers and writes the report. A smoke test: no speed is asserted."""
from __future__ import annotations

import json

import pytest

from linalign.bench import main as bench_main
from linalign.benchmarking.server_bench import ServerSpec, load_prompt, percentile


@pytest.fixture(scope="module")
def server_doc(tmp_path_factory, tiny_gguf):
    out = tmp_path_factory.mktemp("bench-server")
    rc = bench_main(["server", "--model", str(tiny_gguf), "--clients", "1,2", "--requests", "1", "--reps", "2", "--max-tokens", "4",
                     "--turns", "2", "--memory-parallel", "2", "--n-ctx", "256", "--threads", "1", "--quiet",
                     "--out-dir", str(out)])
    doc = json.loads((out / "bench-server.json").read_text())
    assert rc == 0, doc["errors"]
    return doc, out


def test_load_levels(server_doc):
    doc, _ = server_doc
    assert doc["errors"] == []
    entry = doc["load"]["linalign"]
    assert entry["parallel"] == 2 and entry["rss_after_bytes"] > 0
    assert [lv["clients"] for lv in entry["levels"]] == [1, 2]
    # the same load with flash attention on, for its share of the scaling; not in the chat
    assert [lv["clients"] for lv in doc["load"]["linalign -fa on"]["levels"]] == [1, 2]
    assert "linalign -fa on" not in doc["multiturn"]
    assert "--flash-attn" not in doc["servers"]["linalign"]["load"]["command"]  # the server's default
    assert "--flash-attn on" in doc["servers"]["linalign -fa on"]["load"]["command"]
    for lv in entry["levels"]:
        assert lv["good"] == lv["requests"] == 2 * lv["clients"]  # two repetitions of the sweep
        assert len(lv["tok_s_reps"]) == 2 and min(lv["tok_s_reps"]) <= lv["tok_s"] <= max(lv["tok_s_reps"])
        assert lv["passes_per_step"] >= 1
        assert lv["tokens_from_usage"] and 1 <= lv["completion_tokens"] <= 4 * lv["requests"]
        assert lv["tok_s"] > 0 and lv["ttft_s"]["p50"] > 0 and lv["ttft_s"]["p95"] >= lv["ttft_s"]["p50"]


def test_multiturn_with_and_without_the_prompt_cache(server_doc):
    doc, _ = server_doc
    cached, uncached = doc["multiturn"]["linalign"], doc["multiturn"]["linalign --no-cache-prompt"]
    assert cached["cache_prompt"] is True and uncached["cache_prompt"] is False
    assert [r["turn"] for r in cached["turns"]] == [r["turn"] for r in uncached["turns"]] == [1, 2]
    assert all(r["ok"] and r["ttft_s"] > 0 for r in cached["turns"] + uncached["turns"])
    assert cached["turns"][1]["prompt_tokens"] > cached["turns"][0]["prompt_tokens"]  # the history grows
    assert cached["turns"][1]["cached_tokens"] > 0
    assert all(r["cached_tokens"] == 0 for r in uncached["turns"])


def test_memory_targets_and_servers(server_doc):
    doc, _ = server_doc
    mem = doc["memory"]["linalign"]
    assert mem["parallel"] == 2 and mem["rss_after_load_bytes"] > 0 and mem["load_requests_good"] == 2
    assert {t["target"].split(":")[0] for t in doc["targets"]} >= {"linalign with prompt cache"}
    for runs in doc["servers"].values():
        for info in runs.values():
            assert info["alive_at_end"] and "--port" in info["command"]


def test_writes_txt_with_the_command_and_png(server_doc):
    doc, out = server_doc
    text = (out / "bench-server.txt").read_text()
    assert text.startswith("command: linalign bench server --model ")
    assert "(a) load" in text and "(b) 2-turn chat" in text and "memory:" in text
    assert (out / "bench-server.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_llama_cpp_server_command_keeps_running_requests():
    cmd = ServerSpec("llama-cpp-python", "llama-cpp-python", "python").command("m.gguf", 1234, 512)
    assert cmd[:3] == ["python", "-m", "llama_cpp.server"]
    # its default ends a running stream as soon as another request waits
    assert cmd[cmd.index("--interrupt_requests") + 1] == "False"


def test_helpers():
    assert len({load_prompt(i) for i in range(300)}) == 300
    assert percentile([], 50) is None and percentile([2.0], 95) == 2.0
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_rejects_bad_clients():
    with pytest.raises(SystemExit):
        bench_main(["server", "--clients", "0,2"])

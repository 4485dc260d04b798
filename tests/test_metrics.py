"""``GET /metrics``: Prometheus' text format, read by prometheus_client's own
parser; the counters move by what the requests did; behind the API key
unless ``--metrics-public``."""
from __future__ import annotations

import json
from typing import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from linalign.server.metrics import Histogram
from test_server import API_KEY, Server

CHAT = [{"role": "user", "content": "Name a colour."}]
PIRATE = "Always answer like a pirate."


def scrape(srv: Server, headers: dict | None = None) -> dict[str, dict]:
    """name -> {labels (frozen): value} for every sample."""
    r = httpx.get(f"{srv.url}/metrics", headers=srv.headers() if headers is None else headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(frozenset(labels.items()), 0.0)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server("--parallel", "2", api_key=API_KEY)
    yield srv
    srv.stop()


def test_metrics_need_the_key(server: Server) -> None:
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_metrics_public_needs_no_key() -> None:
    srv = Server("--parallel", "1", "--metrics-public", api_key=API_KEY)
    try:
        samples = scrape(srv, headers={})
        assert value(samples, "linalign_slots_total") == 1
        # the rest is still behind the key
        assert httpx.get(f"{srv.url}/v1/models", timeout=10).status_code == 401
    finally:
        srv.stop()


def test_counters_move_by_what_the_requests_did(server: Server) -> None:
    before = scrape(server)
    chat = server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 6, "temperature": 0,
                                                 "principle": PIRATE})
    assert chat.status_code == 200
    completion = server.post("/v1/completions", {"prompt": "The sea is", "max_tokens": 5, "temperature": 0})
    assert completion.status_code == 200
    bad = server.post("/v1/chat/completions", {"messages": CHAT, "whatever": 1})
    assert bad.status_code == 400
    streamed_usage = None
    body = {"messages": CHAT, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True},
            "principles": [{"text": PIRATE, "ratio": 2}, {"text": "Be brief.", "ratio": 1}]}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=server.headers(),
                      timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                streamed_usage = chunk.get("usage") or streamed_usage
    after = scrape(server)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("linalign_requests_total", endpoint="/v1/chat/completions", status="200") == 2
    assert moved("linalign_requests_total", endpoint="/v1/completions", status="200") == 1
    assert moved("linalign_requests_total", endpoint="/v1/chat/completions", status="400") == 1
    assert moved("linalign_requests_total", endpoint="/metrics", status="200") == 1  # the first scrape
    usages = [chat.json()["usage"], completion.json()["usage"], streamed_usage]
    assert moved("linalign_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usages)
    assert moved("linalign_generated_tokens_total") == sum(u["completion_tokens"] for u in usages)
    assert moved("linalign_cached_prompt_tokens_total") == sum(
        u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    # three requests held a slot, each with a first token
    assert moved("linalign_time_to_first_token_seconds_count") == 3
    assert moved("linalign_time_to_first_token_seconds_sum") > 0
    n_tokens = sum(u["completion_tokens"] for u in usages)
    assert 0 < moved("linalign_inter_token_latency_seconds_count") <= n_tokens
    assert moved("linalign_principles_per_request_count") == 3
    assert moved("linalign_principles_per_request_bucket", le="0.0") == 1  # the plain completion
    assert moved("linalign_principles_per_request_bucket", le="1.0") == 2  # and the pirate chat
    assert moved("linalign_principles_per_request_sum") == 0 + 1 + 2
    # the plain completion decodes no base stream: only the aligned ones count
    aligned = moved("linalign_aligned_tokens_total")
    assert 0 < aligned <= chat.json()["usage"]["completion_tokens"] + streamed_usage["completion_tokens"]
    assert 0 <= moved("linalign_alignment_changed_tokens_total") <= aligned


def test_gauges_read_the_engine(server: Server) -> None:
    samples = scrape(server)
    health = server.health()
    assert value(samples, "linalign_slots_total") == 2
    assert value(samples, "linalign_slots_busy") == 0
    assert value(samples, "linalign_queue_length") == 0
    total = value(samples, "linalign_kv_cells_total")
    assert total == health["kv_cells_total"] > 0
    assert value(samples, "linalign_kv_cells_used") + value(samples, "linalign_kv_cells_free") == total
    assert value(samples, "linalign_kv_cells_used") > 0  # the idle slots' prompt caches


def test_busy_slot_is_seen_while_a_stream_runs(server: Server) -> None:
    body = {"prompt": "Count: 1, 2, 3, 4,", "max_tokens": 200, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=server.headers(),
                      timeout=120) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                break
        assert value(scrape(server), "linalign_slots_busy") == 1  # the scrape did not wait for the stream
    server.wait_idle()


def test_unknown_path_is_counted_as_other(server: Server) -> None:
    before = value(scrape(server), "linalign_requests_total", endpoint="other", status="404")
    assert httpx.get(f"{server.url}/no/such/path", timeout=10).status_code == 404
    assert value(scrape(server), "linalign_requests_total", endpoint="other", status="404") == before + 1


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((1.0, 2.0))
    for x in (0.5, 1.0, 1.5, 3.0):
        h.observe(x)
    text = "# TYPE t histogram\n" + "\n".join(h.lines("t")) + "\n"
    (family,) = text_string_to_metric_families(text)
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "t_bucket"}
    assert buckets == {"1.0": 2, "2.0": 3, "+Inf": 4}
    assert {s.name: s.value for s in family.samples if s.name != "t_bucket"} == {"t_sum": 6.0, "t_count": 4}

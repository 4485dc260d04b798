"""``linalign serve --rpc`` on two loopback workers: the prompt cache and
concurrent requests over RPC, and what happens when a worker is SIGKILLed
mid-request: the supervised engine dies (ggml-rpc aborts it), the front
answers 503 naming the worker, /health says the engine is down and why, and
the engine comes back once the worker does. Also the Python API's end: the
process aborts, having named the lost worker on stderr.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import httpx
import pytest

from linalign.benchmarking.processes import stop_process
from linalign.benchmarking.rpc_workers import LoopbackWorker, free_port

from conftest import CLOSENESS_RATIO, POOL_LOGPROB_TOL, TOP_ENTRIES, assert_same_greedy_decoding, require_rpc_build

STARTUP_TIMEOUT_S = 180
# greedy continuation of this prompt counts on for hundreds of tokens
LONG_PROMPT = "Count: 1, 2, 3, 4,"


class SupervisedServer:
    """``linalign serve --rpc ...`` (the front and its engine child)."""

    def __init__(self, endpoints: list[str], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, "-m", "linalign", "serve", "--port", str(self.port), "--n-ctx", "1024",
               "--threads", "2", "--rpc", ",".join(endpoints), *args]
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        self.wait_until_up()

    def wait_until_up(self, timeout_s: float = STARTUP_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the front exited:\n{self.output()}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=5)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"not up in {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()[-6000:]

    def post(self, path: str, body: dict, **kw) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=120, **kw)

    def stop(self) -> None:
        stop_process(self.process, 20)
        self.log.close()


@pytest.fixture(scope="module")
def server(workers):
    s = SupervisedServer([w.endpoint for w in workers], "--parallel", "2", "--n-gpu-layers", "20")
    yield s
    s.stop()


def _chat(server, content: str, history=(), max_tokens: int = 12, logprobs: bool = False) -> dict:
    body = {"messages": [*history, {"role": "user", "content": content}], "principle": "Answer in one word.",
            "alignment_ratio": CLOSENESS_RATIO, "max_tokens": max_tokens, "temperature": 0}
    if logprobs:
        body.update(logprobs=True, top_logprobs=TOP_ENTRIES)
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    return r.json()


def _entries(response: dict) -> list[tuple]:
    return [(e["token"], e["logprob"], {t["token"]: t["logprob"] for t in e["top_logprobs"]})
            for e in response["choices"][0]["logprobs"]["content"]]


def test_health_lists_the_devices_and_the_engine(server, workers):
    health = server.wait_until_up()
    assert health["status"] == "ok" and health["engine"]["state"] == "up"
    assert [d["description"] for d in health["devices"] if d["type"] == "rpc"] == [w.endpoint for w in workers]


def test_the_prompt_cache_works_over_rpc(server):
    first = _chat(server, "Name a colour.")
    history = [{"role": "user", "content": "Name a colour."}, first["choices"][0]["message"]]
    second = _chat(server, "And another?", history)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 10


def test_concurrent_requests_over_rpc(server):
    """Two requests at once share each batched step (--parallel 2), greedy:
    each decodes what it decodes alone, within the KV pool's closeness (its
    cells lie elsewhere beside another request: docs/exactness.md)."""
    questions = ("Name a fruit.", "Name a tree.")
    alone = [_entries(_chat(server, q, max_tokens=16, logprobs=True)) for q in questions]
    together: list = [None, None]

    def ask(i: int, q: str) -> None:
        together[i] = _entries(_chat(server, q, max_tokens=16, logprobs=True))
    threads = [threading.Thread(target=ask, args=(i, q)) for i, q in enumerate(questions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for each_together, each_alone in zip(together, alone):
        assert each_together, "a concurrent request failed"
        assert_same_greedy_decoding(each_together, each_alone, POOL_LOGPROB_TOL)


def _both_slots_busy(server) -> bool:
    return httpx.get(f"{server.url}/health", timeout=5).json().get("slots_idle") == 0


def test_a_worker_killed_mid_request_fails_it_with_a_503_naming_it_and_the_engine_comes_back(server, workers):
    victim = workers[1]
    # a stream and a plain request in flight
    outcome: dict = {}

    def plain() -> None:
        r = server.post("/v1/completions", {"prompt": LONG_PROMPT, "max_tokens": 600, "temperature": 0})
        outcome["plain"] = r

    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=120,
                      json={"prompt": LONG_PROMPT, "max_tokens": 600, "temperature": 0, "stream": True}) as stream:
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert "choices" in first
        thread = threading.Thread(target=plain)
        thread.start()
        deadline = time.monotonic() + 30
        while not _both_slots_busy(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.kill()
        events = [line for line in lines if line.startswith("data: ")]
    thread.join(60)

    last = json.loads(events[-1][len("data: "):])
    assert last["error"]["code"] == "engine_down" and victim.endpoint in last["error"]["message"]
    plain_response = outcome["plain"]
    assert plain_response.status_code == 503
    assert victim.endpoint in plain_response.json()["error"]["message"]

    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "down" and body["engine"]["lost_workers"] == [victim.endpoint]
    assert victim.endpoint in body["error"]["message"]
    refused = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 503 and victim.endpoint in refused.json()["error"]["message"]

    victim.start()
    health = server.wait_until_up(timeout_s=120)
    assert health["engine"]["restarts"] >= 1
    assert _chat(server, "Name a colour.")["choices"][0]["message"]["content"]


def test_the_python_api_names_the_lost_worker_before_ggml_aborts(tmp_path, model_path):
    """In-process there is no recovering from ggml-rpc's abort: the process
    ends (SIGABRT), having said which worker it lost."""
    require_rpc_build()
    with LoopbackWorker(threads=1, log=tmp_path / "worker.log") as worker:
        script = textwrap.dedent(f"""
            import sys, linalign
            a = linalign.Aligner({str(model_path)!r}, n_ctx=512, n_threads=2, rpc_servers=[{worker.endpoint!r}])
            chunks = a.create_completion({LONG_PROMPT!r}, max_tokens=2000, temperature=0, stream=True)
            next(chunks)
            print("streaming", flush=True)
            sys.stdin.readline()
            for _ in chunks:
                pass
            print("finished", flush=True)
        """)
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "streaming"
            worker.kill()
            _, err = child.communicate("go\n", timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == -signal.SIGABRT
    assert f"lost the RPC worker {worker.endpoint}" in err

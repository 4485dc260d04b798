"""The OpenAI-compatible server (``linalign serve``), run as a real process on
loopback with the default model and driven by the official ``openai`` client
(raw ``httpx`` where the client would refuse to send a bad request)."""
from __future__ import annotations

import math
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator

import httpx
import openai
import pytest

from linalign.benchmarking.processes import stop_process

from conftest import CLOSENESS_RATIO, POOL_LOGPROB_TOL, TOP_ENTRIES, assert_same_greedy_decoding, entries_of_chat_response

API_KEY = "test-key"
STARTUP_TIMEOUT_S = 90
# greedy continuation of this prompt counts on for hundreds of tokens: a request that stays busy
LONG_PROMPT = "Count: 1, 2, 3, 4,"


class Server:
    """A ``linalign serve`` process on a free loopback port. Its output goes
    to a file: a pipe nobody reads would fill up and block the server on its
    next write to stderr."""

    def __init__(self, *args: str, api_key: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, "-m", "linalign", "serve", "--port", str(self.port), "--n-ctx", "1024", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.process = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at startup:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not answer /health in time")

    def output(self) -> str:
        """The last of what the server printed."""
        self.log.seek(0)
        return self.log.read()[-4000:]

    def assert_alive(self) -> None:
        assert self.process.poll() is None, f"the server died ({self.process.returncode}):\n{self.output()}"
        assert httpx.get(f"{self.url}/health", timeout=10).status_code == 200

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key or "unused", max_retries=0, timeout=120)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, json: object = None, content: str | None = None, **kw) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=json, content=content,
                          headers={**self.headers(), "Content-Type": "application/json"}, timeout=120, **kw)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def wait_idle(self, timeout: float = 30) -> float:
        """Seconds until every slot is idle; fails after ``timeout``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            h = self.health()
            if h["slots_idle"] == h["slots_total"] and h["queued"] == 0:
                return time.monotonic() - start
            time.sleep(0.05)
        pytest.fail(f"slots still busy after {timeout} s: {self.health()}")

    def stop(self) -> None:
        stop_process(self.process, 15)
        self.log.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server("--parallel", "2", "--queue", "4", api_key=API_KEY)
    yield srv
    srv.stop()
    assert srv.process.returncode is not None


@pytest.fixture(scope="module")
def one_slot_server() -> Iterator[Server]:
    """One slot and no queue: a second request while one runs is refused."""
    srv = Server("--parallel", "1", "--queue", "0")
    yield srv
    srv.stop()


CHAT = [{"role": "user", "content": "Name a colour."}]


# -- shapes -------------------------------------------------------------------

def test_health_needs_no_key_and_reports_slots(server: Server) -> None:
    r = httpx.get(f"{server.url}/health", timeout=10)
    assert r.status_code == 200
    assert r.json()["slots_total"] == 2


def test_models_lists_the_model_file_name(server: Server) -> None:
    models = server.client().models.list().data
    assert [m.id for m in models] == ["SmolLM2-135M-Instruct.Q4_1.gguf"]


def test_chat_completion_has_openai_shape(server: Server) -> None:
    r = server.client().chat.completions.create(model="any", messages=CHAT, max_tokens=8, seed=1)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str) and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_has_openai_shape(server: Server) -> None:
    r = server.client().completions.create(model="any", prompt=LONG_PROMPT, max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.choices[0].text.startswith(" 5")


def test_max_completion_tokens_limits_the_answer(server: Server) -> None:
    r = server.client().chat.completions.create(model="any", messages=CHAT, max_completion_tokens=3, seed=1)
    assert r.usage.completion_tokens <= 3


# -- streaming ----------------------------------------------------------------

# With the prompt cache a request reuses the KV a slot kept and decodes only
# the rest of its prompt; llama.cpp's rounding depends on how positions were
# batched, so on this model a prompt's first run and a run from the cache can
# differ (docs/serving.md). Requests compared for equality are each made
# after the same prompt has been seen once, so that both run from the cache.

def test_streamed_chat_equals_non_streamed_for_the_same_seed(server: Server) -> None:
    args = dict(model="any", messages=CHAT, max_tokens=16, seed=7, extra_body={"principle": "Answer like a pirate."})
    client = server.client()
    client.chat.completions.create(**args)
    whole = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, **args))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole


def test_streamed_completion_equals_non_streamed_and_reports_usage(server: Server) -> None:
    args = dict(model="any", prompt="Once upon a time", max_tokens=16, seed=11)
    client = server.client()
    client.completions.create(**args)
    whole = client.completions.create(**args)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stream_ends_with_done(server: Server) -> None:
    body = {"messages": CHAT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers=server.headers(),
                      timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"


# -- principles ---------------------------------------------------------------

def test_principle_in_extra_body_steers_the_answer(server: Server) -> None:
    client = server.client()
    args = dict(model="any", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, temperature=0)
    client.chat.completions.create(**args)
    plain = client.chat.completions.create(**args).choices[0].message.content
    empty = client.chat.completions.create(extra_body={"principle": ""}, **args).choices[0].message.content
    pirate = client.chat.completions.create(
        extra_body={"principle": "Always talk like a pirate.", "alignment_ratio": 2.0}, **args
    ).choices[0].message.content
    assert empty == plain
    assert pirate != plain


def test_auto_alignment_ratio_is_accepted_and_its_mean_reported(server: Server) -> None:
    body = {"model": "any", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8,
            "temperature": 0, "principle": "Always talk like a pirate.", "alignment_ratio": "auto"}
    r = server.post("/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert 2.0 <= r.json()["linalign"]["mean_ratio"] <= 4.0  # the floor and the bound of auto
    r = server.post("/v1/completions", {"prompt": "The sea is", "max_tokens": 4, "principle": "Be a poet.",
                                        "alignment_ratio": "auto", "echo_guard": False})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion" and "mean_ratio" in r.json()["linalign"]


def test_completion_principle_prefixes_the_prompt_of_stream_p(server: Server) -> None:
    client = server.client()
    principle, prompt = "Write like a poet.", "The sea is"
    args = dict(model="any", max_tokens=12, temperature=0)
    client.completions.create(prompt=f"{principle}\n\n{prompt}", extra_body={"base_prompt": prompt}, **args)
    with_principle = client.completions.create(prompt=prompt, extra_body={"principle": principle}, **args)
    explicit = client.completions.create(prompt=f"{principle}\n\n{prompt}", extra_body={"base_prompt": prompt}, **args)
    assert with_principle.choices[0].text == explicit.choices[0].text


def test_json_object_response_format_constrains_the_output(server: Server) -> None:
    r = server.client().chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
        max_tokens=24, seed=3, response_format={"type": "json_object"})
    assert r.choices[0].message.content.lstrip().startswith("{")


def test_unknown_field_is_400_and_harmless_ones_are_accepted(server: Server) -> None:
    r = server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2, "user": "u", "whatever": [1]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "whatever"
    r = server.post("/v1/chat/completions", {"messages": CHAT, "max_tokens": 2, "user": "u", "store": False})
    assert r.status_code == 200  # tests/test_request_fields.py has the whole list


# -- errors -------------------------------------------------------------------

BAD_CHAT = [
    ("temperature", {"temperature": math.nan}),
    ("alignment_ratio", {"alignment_ratio": math.inf}),
    ("alignment_ratio", {"alignment_ratio": "fast"}),
    ("echo_guard_n", {"echo_guard_n": 1}),
    ("echo_guard", {"echo_guard": "yes"}),
    ("temperature", {"temperature": "hot"}),
    ("max_tokens", {"max_tokens": 0}),
    ("top_p", {"top_p": 0}),
    ("seed", {"seed": -1}),
    ("n", {"n": 2}),
    ("stop", {"stop": [1]}),
    ("principle", {"principle": 3}),
    ("messages", {"messages": [{"role": "wizard", "content": "hi"}]}),
    ("messages", {"messages": []}),
    ("messages", {"messages": "hi"}),
    ("response_format", {"response_format": {"type": "xml"}}),
]


@pytest.mark.parametrize(("param", "fields"), BAD_CHAT, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD_CHAT)])
def test_bad_chat_field_is_400_naming_it(server: Server, param: str, fields: dict) -> None:
    import json
    body = json.dumps({"messages": CHAT, "max_tokens": 2, **fields})  # Python's json writes NaN and Infinity
    r = server.post("/v1/chat/completions", content=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", ""])
def test_body_that_is_not_a_json_object_is_400(server: Server, content: str) -> None:
    r = server.post("/v1/completions", content=content)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_role_raises_bad_request_in_the_client(server: Server) -> None:
    with pytest.raises(openai.BadRequestError, match="role"):
        server.client().chat.completions.create(model="any", messages=[{"role": "robot", "content": "hi"}])


@pytest.mark.parametrize("endpoint", ["chat", "completion"])
def test_prompt_over_the_context_is_400(server: Server, endpoint: str) -> None:
    long_text = "word " * 2000
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="context window"):
        if endpoint == "chat":
            client.chat.completions.create(model="any", messages=[{"role": "user", "content": long_text}])
        else:
            client.completions.create(model="any", prompt=long_text)


def test_token_id_outside_the_vocabulary_is_400(server: Server) -> None:
    r = server.post("/v1/completions", {"prompt": [10**9], "max_tokens": 2})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "prompt"


def test_server_keeps_serving_after_bad_requests(server: Server) -> None:
    for _ in range(3):
        server.post("/v1/completions", content='{"prompt": "x", "top_k": NaN}')
    r = server.client().completions.create(model="any", prompt="Hello", max_tokens=2)
    assert r.usage.completion_tokens <= 2
    assert server.process.poll() is None


def test_unknown_path_is_404_with_error_body(server: Server) -> None:
    r = httpx.get(f"{server.url}/v1/nothing", headers=server.headers(), timeout=10)
    assert r.status_code == 404
    assert "error" in r.json()


# -- auth ---------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {API_KEY}"}])
def test_missing_or_wrong_key_is_401(server: Server, headers: dict) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": CHAT}, headers=headers, timeout=10)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_wrong_key_raises_authentication_error_in_the_client(server: Server) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


# -- slots, queue, disconnects ------------------------------------------------

def _open_long_stream(srv: Server) -> tuple[httpx.Client, httpx.Response, Iterator[str]]:
    """A stream that would run for many seconds, its first chunk read. Keep
    the line iterator: dropping it closes the connection."""
    client = httpx.Client(timeout=60)
    body = {"prompt": LONG_PROMPT, "max_tokens": 900, "temperature": 0, "stream": True}
    request = client.build_request("POST", f"{srv.url}/v1/completions", json=body)
    response = client.send(request, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    assert next(line for line in lines if line).startswith("data: {")
    return client, response, lines


def test_full_queue_answers_503(one_slot_server: Server) -> None:
    one_slot_server.wait_idle(30)
    client, stream, _lines = _open_long_stream(one_slot_server)
    try:
        r = one_slot_server.post("/v1/completions", {"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "queue_full"
    finally:
        stream.close()
        client.close()


def test_disconnect_mid_stream_frees_the_slot_at_once(one_slot_server: Server) -> None:
    one_slot_server.wait_idle(30)
    client, stream, _lines = _open_long_stream(one_slot_server)
    assert one_slot_server.health()["slots_idle"] == 0
    stream.close()
    client.close()
    # 900 tokens take many seconds on a CPU: the slot comes back long before
    assert one_slot_server.wait_idle(5) < 3
    r = one_slot_server.client().completions.create(model="any", prompt="Hi", max_tokens=2)
    assert r.usage.completion_tokens <= 2


def test_disconnect_while_waiting_for_a_whole_answer_frees_the_slot(one_slot_server: Server) -> None:
    one_slot_server.wait_idle(30)
    body = {"prompt": LONG_PROMPT, "max_tokens": 900, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{one_slot_server.url}/v1/completions", json=body, timeout=1.0)
    # noticed by polling, so less promptly than a stream, yet well before the ~20 s answer
    assert one_slot_server.wait_idle(10) < 8


# -- one batched engine, prompt cache ------------------------------------------

@pytest.fixture(scope="module")
def four_slot_server() -> Iterator[Server]:
    # a buffer per stream: these tests are about what other requests may not
    # change, which the pool's cell placement changes by rounding
    srv = Server("--parallel", "4", "--queue", "8", "--kv-layout", "per-stream")
    yield srv
    srv.stop()


QUESTIONS = [("Why is the sky blue?", "The user is a five-year-old child."),
             ("Give me a tip for cooking pasta.", "Always answer like a pirate."),
             ("What is a good way to learn programming?", "The user is a retired professor of mathematics."),
             ("Tell me about cats.", "Answer in one short sentence.")]


def _ask(srv: Server, question: str, principle: str, **kw) -> openai.types.chat.ChatCompletion:
    return srv.client().chat.completions.create(
        model="any", messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0,
        extra_body={"principle": principle, **kw.pop("extra_body", {})}, **kw)


def test_four_concurrent_greedy_clients_get_what_each_gets_alone(four_slot_server: Server) -> None:
    """Within rounding: the batches differ, and the server's KV pool places
    cells by what else runs (conftest.POOL_LOGPROB_TOL)."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(question: str, principle: str) -> list[tuple]:
        return entries_of_chat_response(_ask(four_slot_server, question, principle, logprobs=True,
                                             top_logprobs=TOP_ENTRIES,
                                             extra_body={"alignment_ratio": CLOSENESS_RATIO}))
    # a long system message in front of each question, so that every request
    # runs from the cache both times (see the note above the streaming tests)
    for q, p in QUESTIONS:
        _ask(four_slot_server, q, p, extra_body={"alignment_ratio": CLOSENESS_RATIO})
    alone = [ask(q, p) for q, p in QUESTIONS]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda qp: ask(*qp), QUESTIONS))
    for each_alone, each_together in zip(alone, together):
        assert each_alone
        assert_same_greedy_decoding(each_together, each_alone, POOL_LOGPROB_TOL)


def test_cached_tokens_are_reported_from_the_second_turn(four_slot_server: Server) -> None:
    client = four_slot_server.client()
    history = [{"role": "user", "content": "Hi! Who are you?"}]
    extra = {"principle": "Always answer like a pirate."}
    first = client.chat.completions.create(model="any", messages=history, max_tokens=12, extra_body=extra)
    history += [{"role": "assistant", "content": first.choices[0].message.content},
                {"role": "user", "content": "What do you eat?"}]
    second = client.chat.completions.create(model="any", messages=history, max_tokens=12, extra_body=extra)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1
    chunks = list(client.chat.completions.create(model="any", messages=history, max_tokens=4, extra_body=extra,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens - 1


def test_no_cache_prompt_recomputes_every_prompt() -> None:
    srv = Server("--no-cache-prompt")
    try:
        for _ in range(2):
            r = _ask(srv, "Name a colour.", "Be brief.")
            assert r.usage.prompt_tokens_details.cached_tokens == 0
    finally:
        srv.stop()


def test_a_prompt_longer_than_a_slot_is_400_and_the_slots_go_on(four_slot_server: Server) -> None:
    r = four_slot_server.post("/v1/completions", {"prompt": "word " * 1100, "max_tokens": 2})
    assert r.status_code == 400
    assert "context window" in r.json()["error"]["message"]
    assert _ask(four_slot_server, "Say hi.", "").usage.completion_tokens > 0


def test_disconnect_mid_prefill_frees_the_slot(four_slot_server: Server) -> None:
    four_slot_server.wait_idle(30)
    body = {"prompt": "The river runs to the sea. " * 120, "max_tokens": 400, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{four_slot_server.url}/v1/completions", json=body, timeout=0.05)
    assert four_slot_server.wait_idle(10) < 8
    assert _ask(four_slot_server, "Say hi.", "").usage.completion_tokens > 0

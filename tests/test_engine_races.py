"""The engine and the server under concurrency: what runs on another thread
while a step decodes, a cancel or an error in the middle of a step, and the
context's end. Each test failed before its fix; .ci/sanitize runs this file
under AddressSanitizer (the out-of-bounds and use-after-free cases show
there), and .ci/valgrind skips the tests that start threads."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

import linalign
from linalign.engine import BatchedEngine
from linalign.server.app import create_app
from linalign.server.presets import Presets
from linalign.server.scheduler import Scheduler

from conftest import N_GPU_LAYERS, open_reference_llama

GREEDY = dict(temperature=0.0, top_k=40, repeat_penalty=1.0)
# A wait that only a hang reaches: the tests prove ordering, not speed.
HANG_S = 60


@pytest.fixture(scope="module")
def pool(model_path):
    # a pool with room for both slots' streams at full context (a request at
    # n_ctx beside a running one)
    with linalign.Aligner(model_path, n_ctx=96, n_parallel=2, n_threads=2, seed=0, kv_cells=96 * 2 * 2,
                          n_gpu_layers=N_GPU_LAYERS) as a:
        yield a


def _request(aligner, text: str, **options):
    tokens = aligner.tokenize(text)
    return aligner.completion_request(tokens, tokens[1:] if len(tokens) > 2 else tokens,
                                      **{**GREEDY, "ratio": 2.0, **options})


def test_slot_at_full_context_beside_a_running_one(pool):
    """A request in the higher slot reaches n_ctx while the lower one runs on:
    the step after has a smaller batch, and the full slot's rows from the
    step before lie past its end (an out-of-bounds read before the fix,
    seen by ASan). The full one ends with "length", the other goes on."""
    engine = pool.engine
    pool.reset()
    running = engine.submit(_request(pool, "Tell me a long story about a lighthouse keeper.", max_tokens=40), slot=0)
    long_prompt = pool.tokenize("word " * 200)[: pool.n_ctx - 3]
    full = engine.submit(pool.completion_request(long_prompt, long_prompt[1:], ratio=2.0, max_tokens=0, **GREEDY),
                         slot=1)
    while not (running.done and full.done):
        engine.step()
    assert full.finish_reason == "length" and full.error is None
    assert running.error is None and running.finish_reason in ("length", "stop")
    assert running.completion_tokens == 40 or running.finish_reason == "stop"


def test_cancel_during_submit_frees_the_slot_within_one_step(pool):
    """A client gone while the engine thread starts its request (after the
    ticket was read as not cancelled, before the Generation exists) is
    freed at the next step, not run to max_tokens unattended."""
    engine = pool.engine
    pool.reset()
    scheduler = Scheduler(engine, queue_size=2)
    loop = asyncio.new_event_loop()
    holder: dict[str, object] = {}
    ticket_known = threading.Event()
    real_submit = engine.submit

    def submit_then_cancel(request, **kw):
        gen = real_submit(request, **kw)
        ticket_known.wait(HANG_S)
        holder["ticket"].cancel()  # lands after start, before the scheduler records gen
        holder["gen"] = gen
        return gen

    engine.submit = submit_then_cancel
    try:
        calls = engine.n_decode_calls
        holder["ticket"] = scheduler.submit(_request(pool, "Count to a hundred.", max_tokens=80), loop)
        ticket_known.set()
        deadline = time.monotonic() + HANG_S
        while "gen" not in holder or not holder["gen"].done:
            assert time.monotonic() < deadline, "the cancelled request is still running"
            time.sleep(0.01)
        gen = holder["gen"]
        assert gen.finish_reason == "cancelled"
        assert gen.completion_tokens <= 1 and engine.n_decode_calls - calls <= 1
        assert engine.n_busy == 0
    finally:
        del engine.submit
        scheduler.close()
        loop.close()


def test_a_callback_error_fails_its_request_and_no_other(pool):
    """A notify callback that raises in a step fails its own request; the
    request after it in the same step keeps the token it sampled there.
    Both runs have the same batch shapes (the first request leaves after its
    second token either way), so the other's tokens are equal by construction."""
    engine = pool.engine

    def run(fail: bool) -> tuple[object, object]:
        pool.reset()
        seen = []

        def notify() -> None:
            seen.append(1)
            if fail and len(seen) == 2:
                raise RuntimeError("the client's callback failed")
        # without the failure it ends at its second token, as the failure ends it
        first = engine.submit(_request(pool, "Name three rivers.", max_tokens=3 if fail else 2), notify=notify,
                              slot=0)
        second = engine.submit(_request(pool, "Name three mountains.", max_tokens=10), slot=1)
        while not (first.done and second.done):
            engine.step()
        return first, second

    _, second_alone = run(fail=False)
    first, second = run(fail=True)
    assert isinstance(first.error, RuntimeError) and "callback failed" in str(first.error)
    assert second.error is None and second.tokens == second_alone.tokens
    assert second.completion_tokens == 10


def test_closing_the_llama_while_another_thread_streams(model_path):
    """The borrowed Llama closed while another thread streams: the close waits
    for the step in progress, then frees the context; the stream ends with
    AlignerClosedError (a use-after-free before the fix)."""
    llm = open_reference_llama(model_path, n_ctx=256)
    aligner = linalign.Aligner(llama=llm, n_threads=2)
    started, outcome = threading.Event(), {}

    def stream() -> None:
        try:
            for _ in aligner.create_completion("Count: 1, 2, 3, 4,", principle="Count slowly.",
                                               max_tokens=200, stream=True, **GREEDY):
                started.set()
            outcome["end"] = "finished"
        except linalign.AlignerClosedError as e:
            outcome["end"] = e
        finally:
            started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(HANG_S)
    llm.close()
    thread.join(HANG_S)
    assert not thread.is_alive()
    assert isinstance(outcome["end"], linalign.AlignerClosedError), outcome
    assert aligner.closed


# -- the server's event loop ---------------------------------------------------

class _HeldStep:
    """Stands in for the engine's native object, step_by_slot() and run_by_slot() waiting on
    an event: a decode step held open for as long as the test wants."""

    def __init__(self, native) -> None:
        self._native = native
        self.entered = threading.Event()
        self.release = threading.Event()

    def _enter(self) -> None:
        self.entered.set()
        assert self.release.wait(HANG_S), "the test never released the step"

    def step_by_slot(self):
        self._enter()
        return self._native.step_by_slot()

    def run_by_slot(self, budget_us, seen):  # the engine loop's call
        self._enter()
        return self._native.run_by_slot(budget_us, seen)

    def __getattr__(self, name):
        return getattr(self._native, name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def in_process_server(model_path):
    """linalign serve's app and scheduler in this process (uvicorn on a
    thread), so that a test can hold the engine's step."""
    import uvicorn

    aligner = linalign.Aligner(model_path, n_ctx=256, n_parallel=2, n_threads=2, seed=0,
                               n_gpu_layers=N_GPU_LAYERS)
    scheduler = Scheduler(aligner.engine, queue_size=4)
    model_id = aligner.model_path.name
    app = create_app(aligner, scheduler, model_id=model_id, presets=Presets(model_id))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + HANG_S
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", aligner.engine
    finally:
        server.should_exit = True
        thread.join(HANG_S)
        scheduler.close()
        aligner.close()


def test_health_and_a_new_stream_answer_while_a_step_is_held(in_process_server):
    """While a decode step is held open on the engine thread, GET /health
    answers and a new streaming request gets its headers and first chunk:
    the event loop never waits for the engine's lock. (Before the fix both
    waited for the step; the test proves the order, not a latency.)"""
    base, engine = in_process_server
    held = _HeldStep(engine._native)
    engine._native = held
    body = {"model": "any", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4,
            "temperature": 0, "principle": "Be brief.", "stream": True}
    with httpx.Client(base_url=base, timeout=HANG_S) as client:
        first = threading.Thread(target=lambda: httpx.post(f"{base}/v1/chat/completions", timeout=HANG_S,
                                                           json={**body, "stream": False}))
        first.start()
        try:
            assert held.entered.wait(HANG_S), "the first request never reached a step"
            health = client.get("/health")
            assert health.status_code == 200 and health.json()["slots_idle"] == 1
            with client.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                lines = r.iter_lines()
                assert next(line for line in lines if line).startswith("data: ")
                assert not held.release.is_set()  # all of the above while the step was held
                held.release.set()
                rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"
        finally:
            held.release.set()
            first.join(HANG_S)
        engine._native = held._native


def test_bad_input_in_a_stream_is_still_a_400(in_process_server):
    """Streams answer before they have a slot, so what the engine would refuse
    is checked before the headers go out."""
    base, _ = in_process_server
    with httpx.Client(base_url=base, timeout=HANG_S) as client:
        r = client.post("/v1/completions", json={"model": "any", "prompt": "word " * 400, "stream": True})
        assert r.status_code == 400 and "context window" in r.json()["error"]["message"]

"""The unified KV pool, the default KV layout: it holds n_ctx cells per slot
(what plain decoding allocates; the Aligner grows it for a request that cannot
fit alone),
a prefix the streams share is held once, a request starts when its prompts'
cells and a reserve for its answer fit (else it waits), a request whose
prompts alone do not fit is refused up front, and a request the pool runs
out of room for is preempted and resumes where it was, never failed
(cpp/engine.h, "KV pool")."""
from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest

import linalign
from linalign.server.cli import _kv_unified, main as serve_main

from conftest import CLOSENESS_RATIO, N_GPU_LAYERS, assert_same_greedy_decoding, entries_of_generation

PIRATE = "Always answer like a pirate."
HISTORY = [{"role": "user", "content": "Tell me about the sea. " * 30}]
# greedy continuations of these count on, peaked enough that batch shapes
# only move their logprobs by rounding
COUNT_A, COUNT_B = "Count: 1, 2, 3, 4,", "Count: 101, 102, 103,"
COUNT_PRINCIPLE = "Count carefully, one number at a time."


def run_all(aligner, gens) -> None:
    while not all(g.done for g in gens):
        aligner.engine.step()


def count(aligner, prompt: str, max_tokens: int, **kw):
    return aligner.completion_request(prompt, principle=COUNT_PRINCIPLE, max_tokens=max_tokens, temperature=0.0,
                                      ratio=CLOSENESS_RATIO, **kw)


@pytest.fixture(scope="module")
def one_slot(model_path):
    with linalign.Aligner(model_path, n_ctx=512, n_threads=2, seed=0, n_gpu_layers=N_GPU_LAYERS) as a:
        yield a


# -- size and accounting -----------------------------------------------------------

def test_the_pool_is_the_default_and_holds_n_ctx_per_slot(model_path, one_slot) -> None:
    """What a plain context allocates: llama.cpp rounds it up to a multiple
    of 256, for the pool as for a plain context."""
    assert one_slot.engine.kv_unified
    assert one_slot.engine.n_cells_total == 512
    with linalign.Aligner(model_path, n_ctx=300, n_parallel=2, n_threads=2) as a:
        assert a.engine.n_cells_total == 768  # 600, rounded up
    with linalign.Aligner(model_path, n_ctx=256, n_parallel=2, n_threads=2, kv_unified=False) as a:
        assert not a.engine.kv_unified
        assert a.engine.n_cells_total == 256 * 2 * 2  # a buffer per stream of every slot


def test_an_end_chat_holds_its_history_once(one_slot) -> None:
    """With the principle after the history the streams share it: the chat
    holds one stream's tokens, the principle's, and each stream's answer."""
    one_slot.reset()
    request = one_slot.chat_request(HISTORY, principle=PIRATE, principle_position="end", max_tokens=6,
                                    temperature=0.0)
    gen = one_slot.submit(request)
    run_all(one_slot, [gen])
    engine = one_slot.engine
    p, b, n = len(request.prompt), len(request.base_prompt), gen.completion_tokens
    own = p - gen.prefill["shared"]  # P's tokens after the history: the principle and the template around it
    assert own < 24 < b
    # the last token sampled is not decoded
    assert engine.n_cells_used == b + own + 2 * (n - 1) == engine.cells_alone(request) + 2 * (n - 1)
    assert engine.n_cells_used < 1.2 * (b + n)  # a plain chat's, and the principle's few tokens
    assert engine.n_cells_idle == engine.n_cells_used  # done: its slot's cache is idle
    system = one_slot.chat_request(HISTORY, principle=PIRATE, principle_position="system")
    assert engine.cells_alone(system) > len(system.prompt) + len(system.base_prompt) - 8  # two histories


# -- admission ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_pool(model_path):
    """Two slots, 256 cells: room for one counting request's prompts and
    reserve of 60 tokens a stream, not for two."""
    with linalign.Aligner(model_path, n_ctx=256, n_parallel=2, kv_cells=256, n_threads=2, seed=0,
                          n_gpu_layers=N_GPU_LAYERS) as a:
        yield a


def test_a_request_waits_until_the_pool_has_room_then_starts(short_pool) -> None:
    a, engine = short_pool, short_pool.engine
    a.reset()
    first = a.submit(count(a, COUNT_A, 60))
    second = count(a, COUNT_B, 60)
    assert engine.cells_alone(second) + 2 * 60 > engine.n_cells_total - engine.cells_alone(first.request) - 2 * 60
    assert engine.n_free == 1
    assert engine.submit(second) is None  # a server keeps it queued
    waiting = a.submit(second)            # the Aligner waits in the free slot
    assert engine.n_waiting == 1 and waiting.slot >= 0
    while not first.done:
        engine.step()
        assert not waiting.tokens
    run_all(a, [waiting])
    assert first.completion_tokens == waiting.completion_tokens == 60
    assert engine.n_waiting == 0 and engine.n_preemptions == 0 and waiting.preemptions == 0
    assert waiting.prefill["decoded"][0] > 0  # its stats are those of the prefill it waited for


def test_requests_that_fit_together_start_together(short_pool) -> None:
    a, engine = short_pool, short_pool.engine
    a.reset()
    gens = [a.submit(count(a, prompt, 20)) for prompt in (COUNT_A, COUNT_B)]
    assert engine.n_waiting == 0
    while not any(g.tokens for g in gens):
        engine.step()
    assert all(g.tokens for g in gens)  # in the same step
    run_all(a, gens)


def test_prompts_that_do_not_fit_a_pool_of_given_size_are_a_value_error(model_path) -> None:
    """Each stream of a system-placement chat holds the history: three of
    them (two principles) do not fit a pool of 2 x n_ctx cells, whatever
    waits; at the end they share it and fit."""
    history = [{"role": "user", "content": "Tell me about the sea. " * 60}]
    principles = ["The user is a child.", "Be brief."]
    with linalign.Aligner(model_path, n_ctx=512, n_threads=2, seed=0, max_principles=2, kv_cells=1024,
                          n_gpu_layers=N_GPU_LAYERS) as a:
        with pytest.raises(ValueError, match="more than the KV pool's 1024"):
            a.create_chat_completion(history, principles=principles, principle_position="system", max_tokens=4)
        out = a.create_chat_completion(history, principles=principles, principle_position="end",
                                       max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1


def test_the_default_pool_grows_for_a_request_that_cannot_fit_it_alone(model_path) -> None:
    """The default pool is n_ctx cells: an end chat shares its history and
    fits; three system-placement streams of it do not, and the Aligner
    makes its context again, while nothing runs, with n_ctx per stream."""
    history = [{"role": "user", "content": "Tell me about the sea. " * 60}]
    principles = ["The user is a child.", "Be brief."]
    with linalign.Aligner(model_path, n_ctx=512, n_threads=2, seed=0, max_principles=2,
                          n_gpu_layers=N_GPU_LAYERS) as a:
        a.create_chat_completion(history, principles=principles, principle_position="end", max_tokens=4)
        assert a.engine.n_cells_total == 512
        out = a.create_chat_completion(history, principles=principles, principle_position="system",
                                       max_tokens=4, temperature=0.0)
        assert a.engine.n_cells_total == 3 * 512
    assert out["usage"]["completion_tokens"] >= 1


# -- preemption -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tight_pool(model_path):
    """Two slots in 256 cells, with a reserve of 8 tokens a stream: two
    60-token counting requests start together and outgrow the pool."""
    with linalign.Aligner(model_path, n_ctx=128, n_parallel=2, kv_cells=128, kv_reserve=8, n_threads=2, seed=0,
                          n_gpu_layers=N_GPU_LAYERS) as a:
        yield a


def test_the_newest_request_is_preempted_and_resumes_where_it_was(tight_pool) -> None:
    """Neither fails: the newer gives its cells up when the pool is full and
    resumes from its prompts and the tokens it had, and what it decodes is
    what it decodes alone (within rounding: other batch shapes)."""
    a, engine = tight_pool, tight_pool.engine
    a.reset()
    before, calls, steps = engine.n_preemptions, engine.n_decode_calls, 0
    older, newer = (a.submit(count(a, prompt, 60, logprobs=5)) for prompt in (COUNT_A, COUNT_B))
    assert engine.n_waiting == 0
    while not (older.done and newer.done):
        engine.step()
        steps += 1
    # the engine's count of free cells is llama.cpp's: it made room before
    # each decode, and no llama_decode found the pool full
    assert engine.n_decode_calls - calls <= steps
    assert (older.error, newer.error) == (None, None)
    assert older.completion_tokens == newer.completion_tokens == 60
    assert older.preemptions == 0 and newer.preemptions >= 1
    assert engine.n_preemptions - before == newer.preemptions
    together = entries_of_generation(newer)
    a.reset()
    alone = a.submit(newer.request)
    run_all(a, [alone])
    assert_same_greedy_decoding(together, entries_of_generation(alone))


def test_a_preempted_request_keeps_its_sampler_state(tight_pool) -> None:
    """Its grammar goes on where it was: started again, it would have to
    write the grammar's opening " 104," a second time."""
    a = tight_pool
    a.reset()
    grammar = 'root ::= " 104," (" " [0-9]+ ",")*'
    older = a.submit(count(a, COUNT_A, 60))
    newer = a.submit(count(a, COUNT_B, 60, grammar=grammar))
    run_all(a, [older, newer])
    assert newer.preemptions >= 1 and newer.completion_tokens == 60
    text = a.detokenize(newer.tokens)
    assert re.fullmatch(r" 104,( [0-9]+,)*( [0-9]*)?", text), text
    assert text.count(" 104,") == 1


def test_a_request_alone_that_fills_the_pool_ends_with_length(model_path) -> None:
    """Nothing to preempt: it ends as at a full context."""
    with linalign.Aligner(model_path, n_ctx=256, kv_cells=256, kv_reserve=8, n_threads=2, seed=0,
                          n_gpu_layers=N_GPU_LAYERS) as a:
        gen = a.submit(count(a, COUNT_A, 200))
        run_all(a, [gen])
        assert gen.error is None and gen.finish_reason == "length"
        assert 100 < gen.completion_tokens < 200  # its two streams share the pool's 256 cells
        assert a.engine.n_preemptions == 0


# -- the server ------------------------------------------------------------------------

def test_kv_layout_flags() -> None:
    assert _kv_unified(None, None) is True
    assert _kv_unified("per-stream", None) is False
    assert _kv_unified(None, False) is False
    assert _kv_unified("pool", True) is True
    with pytest.raises(ValueError, match="disagree"):
        _kv_unified("pool", False)
    with pytest.raises(SystemExit) as exit_:
        serve_main(["--kv-layout", "per-stream", "--kv-unified"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        serve_main(["--no-kv-unified", "--kv-cells", "2048"])


@pytest.fixture(scope="module")
def default_server():
    from test_server import Server

    srv = Server()  # --n-ctx 1024, everything else at its default
    yield srv
    srv.stop()


def _chat(srv, messages, max_tokens: int = 4, **extra) -> httpx.Response:
    return srv.post("/v1/chat/completions", {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
                                             **extra})


@pytest.mark.parametrize("k", [2, 4])
def test_the_server_composes_principles_at_its_defaults(default_server, k: int) -> None:
    principles = [PIRATE, "Be brief.", "Answer in French.", "The user is a child."][:k]
    r = _chat(default_server, [{"role": "user", "content": "Name a fish."}], principles=principles,
              principle_position="end")
    assert r.status_code == 200, r.text
    health = default_server.health()
    assert health["kv_layout"] == "pool" and health["kv_cells_total"] == 1024  # --n-ctx: plain decoding's
    assert 0 < health["kv_cells_used"] == health["kv_cells_idle"] <= 1024


def test_the_server_answers_400_for_prompts_that_do_not_fit_its_pool(default_server) -> None:
    history = [{"role": "user", "content": "Tell me about the sea. " * 110}]
    principles = [PIRATE, "Be brief.", "Answer in French."]  # four streams of the history each
    r = _chat(default_server, history, principles=principles, principle_position="system")
    assert r.status_code == 400
    assert "KV pool" in r.json()["error"]["message"]
    r = _chat(default_server, history, principles=principles, principle_position="end")
    assert r.status_code == 200, r.text


def test_the_server_queues_a_request_until_the_pool_has_room() -> None:
    """A slot is free, but the pool (1,024 cells) holds a long answer's
    prompt and reserve beside this request's (two 250-token streams and
    256 tokens a stream of reserve), not both: it waits in the queue, and
    starts once the first is gone."""
    from test_server import Server, _open_long_stream

    srv = Server("--parallel", "2", "--kv-cells", "1024")
    try:
        client, stream, _lines = _open_long_stream(srv)
        started: dict = {}
        body = {"prompt": "The river runs to the sea. " * 30, "principle": PIRATE, "max_tokens": 300,
                "temperature": 0, "stream": True}

        def second() -> None:
            with httpx.Client(timeout=120) as c, c.stream("POST", f"{srv.url}/v1/completions", json=body) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                        started["text"] = True
                        return
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 30
        while not (health := srv.health())["queued"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health["queued"] == 1 and health["slots_idle"] == 1, health
        time.sleep(0.5)
        assert not started and srv.health()["queued"] == 1
        stream.close()
        client.close()
        thread.join(timeout=120)
        assert started.get("text"), srv.output()
    finally:
        srv.stop()

"""The engine loop's native call (``_core.Engine.run``, BatchedEngine.run):
it steps while nothing needs Python, so a fast model's steps cost no Python
each, and returns at once where Python must act: a request's first token,
its last (an end token, max_tokens), a stop string, an error, an interrupt.

On a tiny random model whose end token is never chosen, a run within a
large budget brings many steps; the tokens are those of step() by step()
(the same batches: exact), and nothing is sampled past what Python asked.
Every decode runs on the engine thread, as the engine loop's do: a second
thread that decodes would give the process a second OpenMP team and slow
every later decode (engine/loop.py).
"""
from __future__ import annotations

import threading
import time

import pytest

import linalign
from linalign import _core
from linalign.engine import BatchedEngine, run_on_engine_thread as on_engine_thread
from linalign.engine.generation import Generation, GenerationRequest
from linalign.options import SamplingOptions

from conftest import load_model_writer

BIG_BUDGET_US = 10_000_000  # ten seconds: only the rules end a run
HANG_S = 60


@pytest.fixture(scope="module")
def endless_gguf(tmp_path_factory):
    return load_model_writer()(tmp_path_factory.mktemp("endless") / "endless.gguf", n_vocab=512, seed=5,
                               n_ctx_train=1024, eos_never_chosen=True)


@pytest.fixture(scope="module")
def model(endless_gguf):
    m = _core.Model(str(endless_gguf), 0, True)
    yield m
    m.close()


def _new_engine(model) -> BatchedEngine:
    # the same engine wherever tokens are compared: the same batches, the
    # same shapes, so the same kernels on any CPU (exact by construction)
    return BatchedEngine(model, n_ctx=512, n_slots=2, n_threads=2)


@pytest.fixture
def engine(model):
    e = _new_engine(model)
    yield e
    e.close()


def _prompts(model, text: str, principle: str | None = None) -> list[list[int]]:
    base = list(model.tokenize(text.encode(), True, False))
    p = list(model.tokenize(f"{principle}\n{text}".encode(), True, False)) if principle else base
    return [p, base]


def _params(ratio: float = 2.0):
    return SamplingOptions(temperature=0.0, ratio=ratio).to_native()


def _tokens_step_by_step(model, prompts, n: int, ratio: float) -> list[int]:
    e = _new_engine(model)
    try:
        e._native.start(0, prompts, _params(ratio), True, n)
        out: list[int] = []
        while len(out) < n:
            out += [ev.token for ev in on_engine_thread(e._native.step)]
        return out
    finally:
        e.close()


@pytest.mark.parametrize("ratio", [0.0, 2.0])
def test_a_run_brings_many_steps_and_the_tokens_of_step_by_step(model, engine, ratio):
    prompts = _prompts(model, "one two three", "four")
    n = 60
    native = engine._native
    native.start(0, prompts, _params(ratio), True, n)
    run = lambda: on_engine_thread(lambda: native.run(BIG_BUDGET_US, native.n_interrupts))  # noqa: E731
    first = run()
    assert [ev.token >= 0 for ev in first] == [True]  # the first token returns at once (time to first token)
    rest = run()
    assert len(rest) == n - 1  # then one call to max_tokens, and not a token past it
    assert all(ev.slot == 0 and not ev.eog and not ev.error for ev in rest)
    assert [ev.token for ev in first + rest] == _tokens_step_by_step(model, prompts, n, ratio)
    ages = [ev.age for ev in rest]
    assert all(a >= 0 for a in ages) and ages == sorted(ages, reverse=True)  # older steps first
    assert run() and native.busy(0)  # Python has not finished it yet: the engine goes on


def test_a_run_ends_at_a_stop_string(model, engine):
    prompts = _prompts(model, "one two three")
    plain = _tokens_step_by_step(model, prompts, 40, 0.0)
    pieces = [model.token_to_piece(t, False) for t in plain]
    # a stop string the bytes first hold at token j (>= 10): a text token's piece
    def first_at(j: int) -> bool:
        piece = pieces[j]
        return piece.isascii() and piece.strip().isalnum() and piece not in b"".join(pieces[:j]) + piece[:-1]
    j = next(j for j in range(10, len(pieces)) if first_at(j))
    stop = pieces[j].decode()
    native = engine._native
    native.start(0, prompts, _params(0.0), True, 40, ["never in it", stop])
    events = on_engine_thread(lambda: native.run(BIG_BUDGET_US, native.n_interrupts)
                              + native.run(BIG_BUDGET_US, native.n_interrupts))
    assert [ev.token for ev in events] == plain[:j + 1]
    assert [ev.stop_seen for ev in events] == [False] * j + [True]


def test_an_interrupt_ends_a_run_after_its_step(model, engine):
    native = engine._native
    native.start(0, _prompts(model, "one two", "three"), _params(), True, 1000)
    on_engine_thread(lambda: native.run(BIG_BUDGET_US, native.n_interrupts))  # the first token
    seen = native.n_interrupts
    native.interrupt()
    assert len(on_engine_thread(lambda: native.run(BIG_BUDGET_US, seen))) == 1  # interrupted before it began
    # from another thread, during a run
    seen = native.n_interrupts
    timer = threading.Timer(0.01, native.interrupt)
    timer.start()
    events = on_engine_thread(lambda: native.run(BIG_BUDGET_US, seen))
    timer.join()
    assert 1 <= len(events) < 999


def test_a_run_within_its_budget_returns_before_the_step_that_would_pass_it(model, engine):
    native = engine._native
    native.start(0, _prompts(model, "one two", "three"), _params(), True, 400)
    on_engine_thread(lambda: native.run(BIG_BUDGET_US, native.n_interrupts))
    assert len(on_engine_thread(lambda: native.run(1, native.n_interrupts))) == 1  # a budget under a step: one


def test_step_events_are_of_no_age(model, engine):
    native = engine._native
    native.start(0, _prompts(model, "one"), _params(0.0), True, 5)
    events = []
    while not events:
        events = on_engine_thread(native.step)
    assert events[0].age == 0.0 and not events[0].stop_seen


def test_streaming_wakes_the_reader_once_per_run_not_per_token(endless_gguf, monkeypatch):
    """Through the public API: every token a delta, the same text as a reply
    collected whole, and at most one wake per run of steps, not one per
    token (fewer where the reader polls fast tokens). (How
    many steps a run brings depends on the machine's speed: a process where
    another thread has decoded too steps this model 30x slower, engine/loop.py.)"""
    waits, runs = [], []
    real_wait, real_run = Generation.wait, BatchedEngine.run
    monkeypatch.setattr(Generation, "wait", lambda self, timeout=None: (waits.append(1), real_wait(self, timeout)))

    def run(self, seen):
        started = time.perf_counter()
        n = real_run(self, seen)
        runs.append((n, round((time.perf_counter() - started) * 1e6)))
        return n
    monkeypatch.setattr(BatchedEngine, "run", run)
    with linalign.Aligner(endless_gguf, n_ctx=512, n_threads=2) as aligner:
        n = 200
        whole = aligner.create_completion("one two", principle="three", max_tokens=n, temperature=0.0, ratio=2.0)
        runs.clear()
        chunks = list(aligner.create_completion("one two", principle="three", max_tokens=n, temperature=0.0,
                                                ratio=2.0, stream=True))
    text = "".join(c["choices"][0]["text"] for c in chunks)
    assert text == whole["choices"][0]["text"]
    assert whole["usage"]["completion_tokens"] == n
    assert len(waits) <= len(runs) + 1, f"{len(waits)} wakes for {len(runs)} runs (tokens, µs): {runs}"
    assert sum(k for k, _ in runs) == n


def test_a_cancel_ends_the_run_and_frees_the_slot(endless_gguf):
    with linalign.Aligner(endless_gguf, n_ctx=1024, n_threads=2) as aligner:
        stream = aligner.create_completion("one two", max_tokens=1000, temperature=0.0, stream=True)
        next(stream)
        stream.close()
        deadline = time.monotonic() + HANG_S
        while aligner.engine.n_busy:
            assert time.monotonic() < deadline, "the cancelled request kept its slot"
            time.sleep(0.001)


def test_events_by_slot_hold_every_event_of_a_run(model):
    """run_by_slot (what BatchedEngine takes) groups the events run() returns
    per slot: a slot's plain tokens as lists, the rest (its end here, every
    token of a request with logprobs) as events, in order. Two engines made
    alike, the same requests: the same batches, so the same tokens."""
    def start(native) -> None:
        native.start(0, _prompts(model, "one two three", "four"), _params(2.0), True, 30)
        with_logprobs = _params(2.0)
        with_logprobs.n_logprobs = 2
        native.start(1, _prompts(model, "five six", "seven"), with_logprobs, True, 20)

    by_event, by_slot = _new_engine(model), _new_engine(model)
    try:
        events, groups = [], []
        limits = (30, 20)
        for engine, out, call in ((by_event, events, "run"), (by_slot, groups, "run_by_slot")):
            native = engine._native
            start(native)
            made = [0, 0]
            while made != list(limits):
                got = on_engine_thread(lambda: getattr(native, call)(BIG_BUDGET_US, native.n_interrupts))
                out += got
                for slot, n in ([(e.slot, 1) for e in got] if call == "run" else
                                [(g[0], len(g[1]) + len(g[7])) for g in got]):
                    made[slot] += n
                    if made[slot] == limits[slot]:
                        native.finish(slot)  # as Python does at max_tokens
        for slot in (0, 1):
            expected = [e for e in events if e.slot == slot]
            mine = [g for g in groups if g[0] == slot]
            tokens = [t for g in mine for t in g[1]] + [e.token for g in mine for e in g[7]]
            assert tokens == [e.token for e in expected]
            if slot == 0:  # all plain: every field as its event's
                assert all(not g[7] for g in mine)
                assert [p for g in mine for p in g[2]] == [e.piece for e in expected]
                assert [t for g in mine for t in g[4]] == [e.plain_top for e in expected]
                assert [r for g in mine for r in g[5][0]] == [e.ratios[0] for e in expected]
                assert all(a >= 0 for g in mine for a in g[3])
            else:  # logprobs asked: events, each with its entry
                assert all(not g[1] for g in mine)
                assert all(e.logprob is not None for g in mine for e in g[7])
    finally:
        by_event.close()
        by_slot.close()


def test_a_stop_that_python_finds_within_a_run_ends_the_request_there(model, engine):
    """Python's text may find a stop string the engine's byte watch did not
    (one that holds U+FFFD): the tokens after it in the same run are dropped,
    from the text, the tokens and the totals."""
    gen = Generation(request=GenerationRequest([1], [1], SamplingOptions(), stop=("c",)), limit=10)
    engine._on_tokens(gen, [1, 2, 3, 4], [b"a", b"b", b"xcx", b"d"], [1.0, 2.0, 3.0, 4.0], [1, 5, -1, 4],
                      [[2.0, 2.0, 2.0, 2.0]], [1, 3])
    assert gen.finish_reason == "stop" and gen.tokens == [1, 2, 3] and gen.completion_tokens == 3
    assert gen.assembler.text == "abx" and gen.token_times == [1.0, 2.0, 3.0]
    assert (gen.aligned_tokens, gen.changed_tokens) == (2, 1)  # token 3 had no base stream
    assert gen.alignment() == {"mean_ratio": 2.0, "mean_ratios": [2.0], "echo_guarded_tokens": 1}


def test_a_run_of_tokens_keeps_the_totals_of_token_by_token():
    """_record_steps (a run's tokens at once) sums in the order _record_step
    (one token) does: the same floats to the bit."""
    ratios = [[0.1 * (i % 7) + 1.3 for i in range(50)], [2.0 / (i + 1) for i in range(50)]]
    tokens, tops = list(range(50)), [t if t % 3 else t + 1 for t in range(50)]
    one, run = (Generation(request=GenerationRequest([1], [1], SamplingOptions()), limit=100) for _ in range(2))
    for i in range(50):
        one._record_step([ratios[0][i], ratios[1][i]], [(0, 1)] if i % 10 == 0 else [], tokens[i], tops[i], float(i))
    run._record_steps(tokens[:20], tops[:20], [r[:20] for r in ratios], 2, [float(i) for i in range(20)])
    run._record_steps(tokens[20:], tops[20:], [r[20:] for r in ratios], 3, [float(i) for i in range(20, 50)])
    assert run.alignment() == one.alignment() and run.token_times == one.token_times
    assert (run.aligned_tokens, run.changed_tokens) == (one.aligned_tokens, one.changed_tokens)

"""How a streaming reader waits for its request's deltas (Generation.read):
one delta per token either way; woken at each notify when tokens come
slowly, and looking every STREAM_POLL_S when they come faster than
STREAM_COALESCE_S apart, with the end still waking it at once.

A thread plays the engine's part on a real Generation (the calls the engine
makes for each sampled token: _record_step, _push_token, then the notify),
so the timing of the tokens is the test's to choose.
"""
from __future__ import annotations

import threading
import time

import pytest

from linalign import SamplingOptions
from linalign.engine import generation as generation_module
from linalign.engine.generation import STREAM_COALESCE_S, STREAM_POLL_S, Generation, GenerationRequest


class _CountingEvent(threading.Event):
    """The request's end event, noting the reader's timed waits (its polls)."""

    def __init__(self) -> None:
        super().__init__()
        self.polls: list[float] = []

    def wait(self, timeout=None):
        if timeout is not None:
            self.polls.append(timeout)
        return super().wait(timeout)


def _generation(n: int) -> Generation:
    gen = Generation(request=GenerationRequest([1], [1], SamplingOptions()), limit=n)
    gen._ended = _CountingEvent()
    return gen


def _add_token(gen: Generation, i: int) -> None:
    gen._record_step([0.0], [], token=i)
    gen.completion_tokens += 1
    gen._push_token(f"t{i} ".encode())


def _end(gen: Generation) -> None:
    gen._finish("length")
    gen._changed.set()


def _produce(gen: Generation, n: int, interval_s: float) -> threading.Thread:
    def run() -> None:
        for i in range(n):
            time.sleep(interval_s)
            _add_token(gen, i)
            gen._changed.set()
        _end(gen)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _read_counting_wakes(monkeypatch, n: int, interval_s: float) -> tuple[list[str], list[float], int]:
    gen = _generation(n)
    waits = []
    real_wait = Generation.wait
    monkeypatch.setattr(Generation, "wait", lambda self, timeout=None: (waits.append(1), real_wait(self, timeout)))
    producer = _produce(gen, n, interval_s)
    deltas = [delta for delta, _ in gen.read()]
    producer.join()
    monkeypatch.undo()
    return deltas, gen._ended.polls, len(waits)


def test_fast_tokens_are_read_several_per_wake_one_delta_each(monkeypatch):
    n = 400
    deltas, polls, waits = _read_counting_wakes(monkeypatch, n, interval_s=0.0002)
    assert deltas == [f"t{i} " for i in range(n)]  # every token, in order, a delta of its own
    assert polls and set(polls) == {STREAM_POLL_S}
    assert len(polls) + waits < n / 2, f"{len(polls)} polls and {waits} waits for {n} tokens"


def test_fast_tokens_in_runs_keep_the_reader_looking(monkeypatch):
    """Fast tokens told a run at a time, the runs further apart than a look
    (as BatchedEngine.run delivers them): the reader looks on between two
    runs instead of waiting to be told of each (a wake of the engine
    thread's)."""
    n_runs, per_run = 8, 25
    gen = _generation(n_runs * per_run)
    waits = []
    real_wait = Generation.wait
    monkeypatch.setattr(Generation, "wait", lambda self, timeout=None: (waits.append(1), real_wait(self, timeout)))

    def run() -> None:
        for r in range(n_runs):
            time.sleep(1.5 * STREAM_POLL_S)  # a look in between finds nothing
            for i in range(r * per_run, (r + 1) * per_run):
                _add_token(gen, i)
            gen._changed.set()
        _end(gen)

    producer = threading.Thread(target=run)
    producer.start()
    deltas = [delta for delta, _ in gen.read()]
    producer.join()
    monkeypatch.undo()
    assert deltas == [f"t{i} " for i in range(n_runs * per_run)]
    assert len(gen._ended.polls) >= n_runs
    assert len(waits) <= 2, f"waited to be told {len(waits)} times in {n_runs} runs"  # the first run, at most


def test_slow_tokens_wake_the_reader_at_each(monkeypatch):
    n = 20
    deltas, polls, waits = _read_counting_wakes(monkeypatch, n, interval_s=5 * STREAM_COALESCE_S)
    assert deltas == [f"t{i} " for i in range(n)]
    assert polls == []  # never polls: it waits for each token
    assert waits >= n


def test_the_end_wakes_a_polling_reader_at_once(monkeypatch):
    """A reader between two looks learns of the end when it comes, not at
    its next look: a poll of a minute here, and the read ends in seconds."""
    monkeypatch.setattr(generation_module, "STREAM_POLL_S", 60.0)
    gen = _generation(50)
    producer = _produce(gen, 50, interval_s=0.0002)
    started = time.monotonic()
    deltas = [delta for delta, _ in gen.read()]
    producer.join()
    assert len(deltas) == 50 and gen._ended.polls  # it did poll
    assert time.monotonic() - started < 30.0


@pytest.mark.parametrize("interval_s", [0.0002, 0.01])
def test_closing_the_reader_cancels_the_request(interval_s):
    gen = Generation(request=GenerationRequest([1], [1], SamplingOptions()), limit=50)
    producer = _produce(gen, 50, interval_s)
    reader = gen.read()
    next(reader)
    reader.close()
    assert gen.cancelled
    producer.join()

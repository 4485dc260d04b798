"""How a streaming reader waits for its request's deltas (Generation.read):
one delta per token either way; at each token when tokens come slowly, and
several tokens per wake (one every STREAM_POLL_S) when they come faster than
STREAM_COALESCE_S apart.

A thread plays the engine's part on a real Generation (the calls the engine
makes after each sampled token: _record_step, _push_token, the notify), so
the timing of the tokens is the test's to choose.
"""
from __future__ import annotations

import threading
import time

import pytest

from linalign import SamplingOptions
from linalign.engine import generation as generation_module
from linalign.engine.generation import STREAM_COALESCE_S, STREAM_POLL_S, Generation, GenerationRequest

_sleep = time.sleep  # the producer's own: the tests count the reader's calls of time.sleep


def _produce(gen: Generation, n: int, interval_s: float) -> threading.Thread:
    def run() -> None:
        for i in range(n):
            _sleep(interval_s)
            gen._record_step([0.0], [], token=i)
            gen.completion_tokens += 1
            gen._push_token(f"t{i} ".encode())
            gen._changed.set()
        gen._finish("length")
        gen._changed.set()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _read_counting_wakes(monkeypatch, n: int, interval_s: float) -> tuple[list[str], list[float], int]:
    gen = Generation(request=GenerationRequest([1], [1], SamplingOptions()), limit=n)
    sleeps, waits = [], []
    real_wait = Generation.wait
    monkeypatch.setattr(generation_module.time, "sleep", lambda s: (sleeps.append(s), _sleep(s)))
    monkeypatch.setattr(Generation, "wait", lambda self, timeout=None: (waits.append(1), real_wait(self, timeout)))
    producer = _produce(gen, n, interval_s)
    deltas = [delta for delta, _ in gen.read()]
    producer.join()
    monkeypatch.undo()
    return deltas, sleeps, len(waits)


def test_fast_tokens_are_read_several_per_wake_one_delta_each(monkeypatch):
    n = 400
    deltas, sleeps, waits = _read_counting_wakes(monkeypatch, n, interval_s=0.0002)
    assert deltas == [f"t{i} " for i in range(n)]  # every token, in order, a delta of its own
    assert sleeps and set(sleeps) == {STREAM_POLL_S}
    assert len(sleeps) + waits < n / 2, f"{len(sleeps)} sleeps and {waits} waits for {n} tokens"


def test_slow_tokens_wake_the_reader_at_each(monkeypatch):
    n = 20
    deltas, sleeps, waits = _read_counting_wakes(monkeypatch, n, interval_s=5 * STREAM_COALESCE_S)
    assert deltas == [f"t{i} " for i in range(n)]
    assert sleeps == []  # never polls: it waits for each token
    assert waits >= n


@pytest.mark.parametrize("interval_s", [0.0002, 0.01])
def test_closing_the_reader_cancels_the_request(interval_s):
    gen = Generation(request=GenerationRequest([1], [1], SamplingOptions()), limit=50)
    producer = _produce(gen, 50, interval_s)
    reader = gen.read()
    next(reader)
    reader.close()
    assert gen.cancelled
    producer.join()

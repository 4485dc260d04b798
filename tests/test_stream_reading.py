"""How a streaming reader waits for its request's deltas (Generation.read):
one delta per token, and one wake per notify, however many tokens a notify
brings (the engine loop notifies once per native run of steps: several
tokens of a fast model at a time, tests/test_engine_runs.py).

A thread plays the engine's part on a real Generation (the calls the engine
makes for each sampled token: _record_step, _push_token; then the notify),
so the timing and grouping of the tokens is the test's to choose.
"""
from __future__ import annotations

import threading
import time

import pytest

from linalign import SamplingOptions
from linalign.engine.generation import Generation, GenerationRequest


def _produce(gen: Generation, n: int, interval_s: float, per_notify: int = 1) -> threading.Thread:
    def run() -> None:
        for i in range(n):
            time.sleep(interval_s)
            gen._record_step([0.0], [], token=i)
            gen.completion_tokens += 1
            gen._push_token(f"t{i} ".encode())
            if (i + 1) % per_notify == 0:
                gen._changed.set()
        gen._finish("length")
        gen._changed.set()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _read_counting_waits(monkeypatch, n: int, interval_s: float, per_notify: int) -> tuple[list[str], int]:
    gen = Generation(request=GenerationRequest([1], [1], SamplingOptions()), limit=n)
    waits = []
    real_wait = Generation.wait
    monkeypatch.setattr(Generation, "wait", lambda self, timeout=None: (waits.append(1), real_wait(self, timeout)))
    producer = _produce(gen, n, interval_s, per_notify)
    deltas = [delta for delta, _ in gen.read()]
    producer.join()
    monkeypatch.undo()
    return deltas, len(waits)


@pytest.mark.parametrize("per_notify", [1, 8])
def test_every_token_is_a_delta_of_its_own_in_order(monkeypatch, per_notify):
    n = 40
    deltas, _ = _read_counting_waits(monkeypatch, n, interval_s=0.0005, per_notify=per_notify)
    assert deltas == [f"t{i} " for i in range(n)]


def test_the_reader_wakes_once_per_notify_not_per_token(monkeypatch):
    """Tokens notified eight at a time, as a run of steps brings them, wake
    the reader about n / 8 times; it never polls in between."""
    n, per_notify = 64, 8
    deltas, waits = _read_counting_waits(monkeypatch, n, interval_s=0.002, per_notify=per_notify)
    assert deltas == [f"t{i} " for i in range(n)]
    assert waits <= n // per_notify + 2, f"{waits} waits for {n // per_notify} notifies"


def test_slow_tokens_wake_the_reader_at_each(monkeypatch):
    n = 20
    deltas, waits = _read_counting_waits(monkeypatch, n, interval_s=0.01, per_notify=1)
    assert deltas == [f"t{i} " for i in range(n)]
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

"""One engine loop: a single thread steps the engine for the Python API and
the server alike; the server's scheduler is a queue on the Aligner's loop
and follows its engine when the Aligner makes it again; cancelling never
waits for a decode step."""
from __future__ import annotations

import threading
import time

import linalign
from linalign.server.scheduler import Scheduler

HANG_S = 60


class _RecordingStep:
    """Stands in for the engine's native object, noting which thread steps it
    and holding a step open while ``hold`` is set."""

    def __init__(self, native) -> None:
        self._native = native
        self.threads: set[str] = set()
        self.hold = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def _enter(self) -> None:
        self.threads.add(threading.current_thread().name)
        if self.hold.is_set():
            self.entered.set()
            assert self.release.wait(HANG_S), "the test never released the step"

    def step_by_slot(self):
        self._enter()
        return self._native.step_by_slot()

    def run_by_slot(self, budget_us, seen):  # the engine loop's call: steps while nothing needs Python
        self._enter()
        return self._native.run_by_slot(budget_us, seen)

    def __getattr__(self, name):
        return getattr(self._native, name)


def test_the_loop_thread_alone_steps_the_engine_for_the_api(tiny_gguf) -> None:
    with linalign.Aligner(tiny_gguf, n_ctx=128, n_parallel=2, n_threads=2) as aligner:
        engine = aligner.engine
        recording = _RecordingStep(engine._native)
        engine._native = recording
        try:
            aligner.create_completion("one two", principle="three", max_tokens=4, temperature=0.0)
            streams = [aligner.create_completion(p, max_tokens=4, temperature=0.0, stream=True) for p in ("a", "b")]
            for stream in streams:
                list(stream)
        finally:
            engine._native = recording._native
        assert recording.threads == {"linalign-engine"}


def test_one_thread_decodes_for_every_aligner_of_the_process(tiny_gguf) -> None:
    """Two Aligners' requests, read at once, and an evaluation's teacher
    forcing all decode on the one engine thread (llama.cpp's OpenMP then
    keeps one team: engine/loop.py), and the work a caller hands it with
    run_on_engine_thread runs there too, its errors raised to the caller."""
    from linalign.engine import run_on_engine_thread

    with linalign.Aligner(tiny_gguf, n_ctx=128, n_threads=2) as first, \
            linalign.Aligner(tiny_gguf, n_ctx=128, n_threads=2) as second:
        recordings = [_RecordingStep(a.engine._native) for a in (first, second)]
        for aligner, recording in zip((first, second), recordings):
            aligner.engine._native = recording
        seen: list[str] = []
        real_eval = recordings[0]._native.eval_logits

        def eval_logits(*args):
            seen.append(threading.current_thread().name)
            return real_eval(*args)

        recordings[0].eval_logits = eval_logits
        try:
            streams = [a.create_completion("one two", principle="three", max_tokens=4, temperature=0.0, stream=True)
                       for a in (first, second)]
            for stream in streams:
                list(stream)
            logits = first.eval_logits(first.tokenize(b"one two"), first.tokenize(b"two"))
        finally:
            for aligner, recording in zip((first, second), recordings):
                aligner.engine._native = recording._native
        assert all(rows.shape[-1] == first.n_vocab for rows in logits)  # P's and B's
        assert recordings[0].threads == recordings[1].threads == {"linalign-engine"}
        assert seen == ["linalign-engine"]
    assert run_on_engine_thread(lambda: threading.current_thread().name) == "linalign-engine"
    try:
        run_on_engine_thread(lambda: 1 / 0)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("an error on the engine thread did not reach its caller")


def test_the_scheduler_follows_an_engine_made_again(tiny_gguf) -> None:
    with linalign.Aligner(tiny_gguf, n_ctx=128, n_threads=2) as aligner:
        first = aligner.engine
        scheduler = Scheduler(first, queue_size=2)
        try:
            assert scheduler.loop is first.loop
            aligner.create_completion("one two", principles=["three", "four"], max_tokens=2)
            assert aligner.engine is not first and aligner.max_principles == 2
            assert scheduler.engine is aligner.engine and scheduler.loop is aligner.engine.loop
        finally:
            scheduler.close()


def test_cancel_does_not_wait_for_a_step_in_progress(tiny_gguf) -> None:
    # long enough that the loop is still stepping it when the test holds a
    # step (a run of the tiny model's steps brings dozens of tokens at once)
    with linalign.Aligner(tiny_gguf, n_ctx=1024, n_threads=2) as aligner:
        engine = aligner.engine
        recording = _RecordingStep(engine._native)
        engine._native = recording
        try:
            stream = aligner.create_completion("one two", max_tokens=1000, temperature=0.0, stream=True)
            next(stream)
            recording.hold.set()
            assert recording.entered.wait(HANG_S)
            started = time.monotonic()
            stream.close()  # cancels its request while the loop's step is held
            assert time.monotonic() - started < HANG_S / 2
            assert not recording.release.is_set()
        finally:
            recording.release.set()
            engine._native = recording._native
        deadline = time.monotonic() + HANG_S
        while engine.n_busy:
            assert time.monotonic() < deadline, "the cancelled request kept its slot"
            time.sleep(0.01)

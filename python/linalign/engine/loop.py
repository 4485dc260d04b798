"""EngineLoop: the one thread that steps an engine, for the Python API and
the server alike (ARCHITECTURE.md, "Serving").

Clients never step the engine. They post an *admission* (an object with
``admit(engine) -> bool``, ``cancelled`` and the ``gen`` it started) and
wait on their own request: the loop runs admissions in order between steps,
then steps every running request in one batched decode while any request it
follows runs (one its admission started, or one a reader asked it to
follow: :meth:`follow`), and sleeps when none does. Posting and cancelling take only
the loop's condition, which the loop never holds while it decodes: neither
waits for a decode step. (A request started on the engine directly, as
tests and probes do, is stepped by whoever started it, and by the loop only
while the loop steps anyway.)

The engine it steps may be made again (an Aligner grows its context for
more principles, or a larger KV pool): :meth:`replace_engine` swaps it
between steps, so every client, the server's scheduler too, always sees the
current one (:attr:`engine`).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from typing import Iterator, Protocol

from .batched import BatchedEngine, EngineClosedError
from .generation import Generation

__all__ = ["Admission", "EngineLoop"]

log = logging.getLogger("linalign.engine")


class Admission(Protocol):
    """A request waiting for the loop to start it."""

    @property
    def cancelled(self) -> bool: ...

    gen: Generation | None  # the request once started

    def admit(self, engine: BatchedEngine) -> bool:
        """Runs on the loop thread, between steps: starts the request (True),
        or leaves it first in line to try again after the next step (False).
        Its own errors it reports to its client; what it raises is logged."""

    def drop(self, error: BaseException) -> None:
        """The loop closes before it was admitted."""


class EngineLoop:
    """Steps ``engine`` from a thread of its own while any request runs."""

    def __init__(self, engine: BatchedEngine, *, name: str = "linalign-engine") -> None:
        self._engine = engine
        self._pending: deque[Admission] = deque()
        self._running: list[Generation] = []  # what it started and steps until done
        self._wake = threading.Condition()
        self._stopping = False
        engine.loop = self
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def engine(self) -> BatchedEngine:
        """The engine it steps now."""
        return self._engine

    def replace_engine(self, engine: BatchedEngine) -> None:
        """Steps ``engine`` from now on (the old one is closed by its owner)."""
        with self._wake:
            engine.loop = self
            self._engine = engine
            self._wake.notify()

    @property
    def pending(self) -> list[Admission]:
        """Admissions not yet started, in order (a copy; no lock: a copy of a
        deque is atomic under the GIL, and /health reads it beside a decode)."""
        return list(self._pending)

    @property
    def closed(self) -> bool:
        return self._stopping

    def post(self, admission: Admission) -> None:
        """Queues ``admission`` and wakes the loop; never waits for a step."""
        with self._wake:
            if self._stopping:
                raise EngineClosedError("the engine loop was closed")
            self._pending.append(admission)
            self._wake.notify()

    def follow(self, gen: Generation) -> None:
        """Steps the engine until ``gen`` is done (a request started by an
        admission whose ``gen`` was None, once its reader reads it)."""
        with self._wake:
            if not gen.done and all(g is not gen for g in self._running):
                self._running.append(gen)
                self._wake.notify()

    def withdraw(self, admissions: list[Admission], error: BaseException) -> None:
        """Takes ``admissions`` out of the queue, each dropped with ``error``."""
        with self._wake:
            gone = set(map(id, admissions))
            self._pending = deque(a for a in self._pending if id(a) not in gone)
        for admission in admissions:
            admission.drop(error)

    def wake(self) -> None:
        """Has the loop look again (a request was cancelled)."""
        with self._wake:
            self._wake.notify()

    @contextlib.contextmanager
    def between_steps(self) -> Iterator[BatchedEngine]:
        """Holds the loop between two steps (no admission, no decode runs)
        and yields its engine: for making the engine again. It waits for
        the step in progress."""
        with self._wake, self._engine.lock:
            yield self._engine

    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self) -> None:
        """Stops the thread after the step in progress; admissions still
        queued are dropped with EngineClosedError. Idempotent."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if not self.on_loop_thread():
            self._thread.join(timeout=60)

    # -- the loop thread ----------------------------------------------------

    def _admit(self, engine: BatchedEngine) -> None:
        while self._pending:
            admission = self._pending[0]
            if admission.cancelled:
                admission.drop(RuntimeError("the request was cancelled before it started"))
            else:
                try:
                    if not admission.admit(engine):
                        return  # it waits, first in line, for the next step's room
                except Exception:  # noqa: BLE001 - an admission reports its own errors; the loop goes on
                    log.exception("could not start a request")
                else:
                    if getattr(admission, "gen", None) is not None:
                        self._running.append(admission.gen)
                engine = self._engine  # an admission may have made the engine again
            self._pending.popleft()

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    break
                engine = self._engine
                if engine.closed:  # under it (a borrowed Llama closed): nothing queued can start
                    self._drop_pending(EngineClosedError("the engine was closed"))
                else:
                    self._admit(engine)
                engine = self._engine
                self._running = [g for g in self._running if not g.done]
                if engine.closed or not self._running:
                    self._wake.wait()
                    continue
            try:
                engine.step()
            except EngineClosedError:
                pass  # closed under it (a borrowed Llama closed): its requests were told
            except Exception:  # noqa: BLE001 - the requests in the batch failed and were told
                log.exception("decode step failed")
        with self._wake:
            self._drop_pending(EngineClosedError("the engine loop was closed"))

    def _drop_pending(self, error: BaseException) -> None:
        pending, self._pending = list(self._pending), deque()
        for admission in pending:
            admission.drop(error)

"""EngineLoop: the engine thread steps every engine of the process, for the
Python API and the server alike (ARCHITECTURE.md, "Serving").

Clients never step an engine. They post an *admission* (an object with
``admit(engine) -> bool``, ``cancelled`` and the ``gen`` it started) to the
engine's loop and wait on their own request: the engine thread runs
admissions in order between steps, then steps every running request of an
engine in one batched decode while any request it follows runs (one its
admission started, or one a reader asked it to follow: :meth:`follow`), and
sleeps when none does. Posting and cancelling take only the thread's
condition, which it never holds while it decodes: neither waits for a
decode step. (A request started on the engine directly, as tests and probes
do, is stepped by whoever started it, and by the loop only while the loop
steps anyway.)

**One thread for the process, not one per engine.** llama.cpp's CPU backend
runs each decode on an OpenMP team of the calling thread, and GNU OpenMP
keeps a team for every thread that ever decoded. Once two threads have
teams, it counts more threads than cores (with n_threads set to the cores,
as by default) and stops spinning between decodes: every decode then wakes
its team through the kernel, which on a virtual machine made a small
model's decode 3-5x slower (docs/overhead.md). So every EngineLoop of a
process is stepped by one thread, the engine thread, and other work that
decodes (an evaluation's teacher forcing, a benchmark's baselines) runs on
it too: :func:`run_on_engine_thread`.

The engine a loop steps may be made again (an Aligner grows its context for
more principles, or a larger KV pool): :meth:`replace_engine` swaps it
between steps, so every client, the server's scheduler too, always sees the
current one (:attr:`engine`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Iterator, Protocol, TypeVar

from .batched import BatchedEngine, EngineClosedError
from .generation import Generation

__all__ = ["Admission", "EngineLoop", "run_on_engine_thread"]

log = logging.getLogger("linalign.engine")

T = TypeVar("T")


class Admission(Protocol):
    """A request waiting for the loop to start it."""

    @property
    def cancelled(self) -> bool: ...

    gen: Generation | None  # the request once started

    def admit(self, engine: BatchedEngine) -> bool:
        """Runs on the engine thread, between steps: starts the request
        (True), or leaves it first in line to try again after the next step
        (False). Its own errors it reports to its client; what it raises is
        logged."""

    def drop(self, error: BaseException) -> None:
        """The loop closes before it was admitted."""


class _EngineThread:
    """The process's one stepping thread: every loop's admissions and steps,
    and the calls posted to it, in turn."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.loops: list[EngineLoop] = []
        self.calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self.thread = threading.Thread(target=self._run, name="linalign-engine", daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[], T]) -> T:
        if threading.current_thread() is self.thread:
            return fn()
        future: Future = Future()
        with self.cond:
            self.calls.append((fn, future))
            for loop in self.loops:
                loop.engine.interrupt()
            self.cond.notify()
        return future.result()

    def _run(self) -> None:
        while True:
            with self.cond:
                calls = ()
                if self.calls:
                    calls, self.calls = list(self.calls), deque()
                work = []
                for loop in list(self.loops):
                    try:
                        engine = loop._prepare()
                    except Exception:  # noqa: BLE001 - one loop's failure must not stop the others' thread
                        log.exception("engine loop failed between steps")
                        continue
                    if engine is not None:
                        work.append((loop, engine))
                if not calls and not work:
                    self.cond.wait()
                    continue
            for fn, future in calls:
                try:
                    future.set_result(fn())
                except BaseException as e:  # noqa: BLE001 - handed to the caller, raised there
                    future.set_exception(e)
            for loop, engine in work:
                loop._step(engine)


_engine_thread: _EngineThread | None = None
_engine_thread_lock = threading.Lock()


def _the_engine_thread() -> _EngineThread:
    global _engine_thread
    with _engine_thread_lock:
        if _engine_thread is None:
            _engine_thread = _EngineThread()
        return _engine_thread


def _forget_engine_thread() -> None:
    # a forked child has no engine thread: it starts its own when it needs one
    global _engine_thread, _engine_thread_lock
    _engine_thread, _engine_thread_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engine_thread)


def run_on_engine_thread(fn: Callable[[], T]) -> T:
    """Runs ``fn()`` on the engine thread, between steps, and returns what it
    returns (or raises what it raises): for work that decodes outside a
    request, so that the process keeps one OpenMP team (see the module's
    docstring). Called on the engine thread, it runs at once."""
    return _the_engine_thread().call(fn)


class EngineLoop:
    """Has the engine thread step ``engine`` while any request runs."""

    def __init__(self, engine: BatchedEngine) -> None:
        self._engine = engine
        self._pending: deque[Admission] = deque()
        self._running: list[Generation] = []  # what it started and steps until done
        self._seen = 0  # the engine's n_interrupts when the thread last looked at the queue
        self._stopping = False
        self._driver = _the_engine_thread()
        self._wake = self._driver.cond
        engine.loop = self
        with self._wake:
            self._driver.loops.append(self)

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
            self._engine.interrupt()
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
            self._engine.interrupt()
            self._wake.notify()

    @contextlib.contextmanager
    def between_steps(self) -> Iterator[BatchedEngine]:
        """Holds the engine thread between two steps (no admission, no decode
        runs) and yields this loop's engine: for making the engine again. It
        waits for the step in progress."""
        with self._wake:
            self._engine.interrupt()  # a run of steps in progress ends at its step
            with self._engine.lock:
                yield self._engine

    def call(self, fn: Callable[[BatchedEngine], T]) -> T:
        """Runs ``fn(engine)`` on the engine thread between steps, holding
        the engine's lock: for work that decodes outside a request (an
        evaluation's teacher forcing)."""
        def on_engine_thread() -> T:
            engine = self._engine
            with engine.lock:
                return fn(engine)
        return self._driver.call(on_engine_thread)

    def on_loop_thread(self) -> bool:
        return threading.current_thread() is self._driver.thread

    def close(self) -> None:
        """Stops stepping after the step in progress; admissions still queued
        are dropped with EngineClosedError. Idempotent."""
        with self._wake:
            if self._stopping:
                return
            self._stopping = True
            with contextlib.suppress(ValueError):
                self._driver.loops.remove(self)
            self._drop_pending(EngineClosedError("the engine loop was closed"))
            self._running = []
        if not self.on_loop_thread():
            with self._engine.lock:  # the step in progress, if the engine thread is in one, ends first
                pass

    # -- on the engine thread ------------------------------------------------

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

    def _prepare(self) -> BatchedEngine | None:
        """Under the thread's condition: runs the admissions, and returns the
        engine to step, or None when nothing it follows runs."""
        engine = self._engine
        if engine.closed:  # under it (a borrowed Llama closed): nothing queued can start
            self._drop_pending(EngineClosedError("the engine was closed"))
        else:
            self._admit(engine)
        engine = self._engine
        self._running = [g for g in self._running if not g.done]
        if engine.closed or not self._running:
            return None
        # what was posted after this look interrupts the run that follows it
        self._seen = engine.n_interrupts
        return engine

    def _step(self, engine: BatchedEngine) -> None:
        try:
            engine.run(self._seen)
        except EngineClosedError:
            pass  # closed under it (a borrowed Llama closed): its requests were told
        except Exception:  # noqa: BLE001 - the requests in the batch failed and were told
            log.exception("decode step failed")

    def _drop_pending(self, error: BaseException) -> None:
        pending, self._pending = list(self._pending), deque()
        for admission in pending:
            admission.drop(error)

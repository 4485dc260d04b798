"""The scheduler: the server's queue in front of the engine loop
(linalign.engine.EngineLoop), the one thread that steps the engine for the
server and the Python API alike. HTTP handlers hand it requests and read
their text; they never touch the llama_context.

Requests wait in a bounded FIFO queue until a slot is free and the KV pool
has room for their prompts and the reserve for their answers (the next one
is refused with QueueFullError, a 503); the loop admits them between steps,
in order, into the free slot with the longest cached prefix, and steps every
admitted request in one batched decode until none is left. A request the
pool ran out of room for is preempted: it keeps its slot, its text and its
sampler, gives its cells up, and resumes before any queued request is
admitted that does not fit beside it (in the engine: its needs count as
committed), so it is in effect at the front of the queue; its client sees a
pause. A request whose client is gone is cancelled and its slot freed at the
next step.
"""
from __future__ import annotations

import asyncio
import logging
import threading

from ..engine import BatchedEngine, EngineLoop, Generation, GenerationRequest

__all__ = ["QueueFullError", "Scheduler", "Ticket"]

log = logging.getLogger("linalign.server")


class QueueFullError(RuntimeError):
    """Every slot is busy and the waiting queue is full."""


class Ticket:
    """One request from the handler's side: admitted (``gen`` set) or
    refused (``error`` set); ``changed`` is set on the handler's event loop
    whenever there is something new to read."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.gen: Generation | None = None
        self.error: BaseException | None = None
        self.changed = asyncio.Event()
        self._loop = loop
        self._cancelled = False
        # orders cancel() (event loop) against admission (engine thread): a
        # cancel that lands while the engine starts the request must still
        # reach the Generation that start makes
        self._lock = threading.Lock()

    def notify(self) -> None:
        """Called from the engine thread."""
        try:
            self._loop.call_soon_threadsafe(self.changed.set)
        except RuntimeError:  # the loop is closed: the server is shutting down
            pass

    @property
    def settled(self) -> bool:
        return self.gen is not None or self.error is not None

    def cancel(self) -> None:
        """The client is gone: drop the request wherever it is."""
        with self._lock:
            self._cancelled = True
            gen = self.gen
        if gen is not None:
            gen.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def admit(self, engine: BatchedEngine) -> bool:
        """On the loop thread, between steps: starts the request, or leaves
        it first in line (False) while its slot or the pool's room is not
        there yet."""
        wanted = self.request.slot
        if wanted is not None and not engine.is_free(wanted):
            return False  # it waits for the slot it asked for (id_slot), first in line
        if engine.n_free == 0:
            return False
        try:
            # None: no slot, or no room in the KV pool yet (it waits, first in line)
            gen = engine.submit(self.request, notify=self.notify)
        except (ValueError, TypeError) as e:  # bad input found by the native start (a grammar, say)
            self.error = e
        except Exception as e:  # noqa: BLE001 - answered as a server error, the loop goes on
            log.exception("could not start a request")
            self.error = e
        else:
            if gen is None:
                return False
            self._admitted(gen)
        self.notify()
        return True

    def drop(self, error: BaseException) -> None:
        self.error = error
        self.notify()

    def _admitted(self, gen: Generation) -> None:
        """Engine thread: the request holds a slot now. A cancel that came
        while it was being started frees the slot at the next step."""
        with self._lock:
            self.gen = gen
            cancelled = self._cancelled
        if cancelled:
            gen.cancel()


class Scheduler:
    """The server's queue on the engine loop of ``engine`` (the Aligner's
    loop: ``aligner.engine``; the loop follows the engine when the Aligner
    makes it again, and so does :attr:`engine`).

    Parameters
    ----------
    engine
        The batched engine (its slots are the server's ``--parallel``).
    queue_size
        Requests that may wait for a slot; one more is refused.
    """

    def __init__(self, engine: BatchedEngine, *, queue_size: int) -> None:
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self.queue_size = queue_size
        self._own_loop = engine.loop is None  # an engine no Aligner steps: this scheduler runs its loop
        self.loop: EngineLoop = engine.loop or EngineLoop(engine)
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def engine(self) -> BatchedEngine:
        """The engine the loop steps now."""
        return self.loop.engine

    @property
    def total(self) -> int:
        return self.engine.n_slots

    @property
    def idle(self) -> int:
        return self.engine.n_free

    def _tickets(self) -> list[Ticket]:
        return [t for t in self.loop.pending if isinstance(t, Ticket) and not t._cancelled]

    @property
    def queued(self) -> int:
        return len(self._tickets())

    @property
    def queued_now(self) -> int:
        """As :attr:`queued` (neither takes a lock that a step holds)."""
        return len(self._tickets())

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Queues a request; raises QueueFullError when the queue is full, and
        ValueError for input the engine would refuse. Called on the event
        loop: nothing here waits for a decode step."""
        engine = self.engine
        engine.check(request)
        ticket = Ticket(request, loop)
        with self._lock:
            if self._stopping or self.loop.closed:
                raise QueueFullError("the server is shutting down")
            would_wait = sum(not a.cancelled for a in self.loop.pending) + 1 - engine.n_free
            if would_wait > self.queue_size:
                raise QueueFullError(
                    f"the server is busy: all {self.total} slot(s) are in use and the queue of "
                    f"{self.queue_size} is full; retry later")
            self.loop.post(ticket)
        return ticket

    def wake(self) -> None:
        """Has the engine loop look again (a request was cancelled)."""
        self.loop.wake()

    def close(self) -> None:
        """Refuses new requests and drops the queued ones (the loop, the
        Aligner's, goes on for the Python API; one of its own stops)."""
        with self._lock:
            self._stopping = True
        self.loop.withdraw([t for t in self.loop.pending if isinstance(t, Ticket)],
                           QueueFullError("the server is shutting down"))
        if self._own_loop:
            self.loop.close()

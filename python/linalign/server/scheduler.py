"""The scheduler: the one thread that drives the engine. HTTP handlers hand
it requests and read their text; they never touch the llama_context.

Requests wait in a bounded FIFO queue until a slot is free and the KV pool
has room for their prompts and the reserve for their answers (the next one
is refused with QueueFullError, a 503); the engine thread admits them
between steps, in order, into the free slot with the longest cached prefix,
and steps every admitted request in one batched decode until none is left.
A request the pool ran out of room for is preempted: it keeps its slot, its
text and its sampler, gives its cells up, and resumes before any queued
request is admitted that does not fit beside it (in the engine: its needs
count as committed), so it is in effect at the front of the queue; its
client sees a pause. A request whose client is gone is cancelled and its
slot freed at the next step.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from ..engine import BatchedEngine, Generation, GenerationRequest

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

    def _admitted(self, gen: Generation) -> None:
        """Engine thread: the request holds a slot now. A cancel that came
        while it was being started frees the slot at the next step."""
        with self._lock:
            self.gen = gen
            cancelled = self._cancelled
        if cancelled:
            gen.cancel()


class Scheduler:
    """Drives ``engine`` from a thread of its own.

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
        self.engine = engine
        self.queue_size = queue_size
        self._waiting: deque[Ticket] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="linalign-engine", daemon=True)
        self._thread.start()

    @property
    def total(self) -> int:
        return self.engine.n_slots

    @property
    def idle(self) -> int:
        return self.engine.n_free

    @property
    def queued(self) -> int:
        with self._wake:
            return sum(not t._cancelled for t in self._waiting)

    @property
    def queued_now(self) -> int:
        """As :attr:`queued`, without the lock that admission holds (for a
        scrape: a copy of a deque is atomic under the GIL)."""
        return sum(not t._cancelled for t in list(self._waiting))

    def submit(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Queues a request; raises QueueFullError when the queue is full, and
        ValueError for input the engine would refuse. Called on the event
        loop: nothing here waits for a decode step."""
        self.engine.check(request)
        ticket = Ticket(request, loop)
        with self._wake:
            if self._stopping:
                raise QueueFullError("the server is shutting down")
            self._waiting = deque(t for t in self._waiting if not t._cancelled)
            would_wait = len(self._waiting) + 1 - self.engine.n_free
            if would_wait > self.queue_size:
                raise QueueFullError(
                    f"the server is busy: all {self.total} slot(s) are in use and the queue of "
                    f"{self.queue_size} is full; retry later")
            self._waiting.append(ticket)
            self._wake.notify()
        return ticket

    def wake(self) -> None:
        """Has the engine thread look again (a request was cancelled)."""
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # -- the engine thread --------------------------------------------------

    def _admit(self) -> None:
        while self._waiting and self.engine.n_free > 0:
            ticket = self._waiting[0]
            wanted = ticket.request.slot
            if not ticket._cancelled and wanted is not None and not self.engine.is_free(wanted):
                return  # it waits for the slot it asked for (id_slot), first in line
            self._waiting.popleft()
            if ticket._cancelled:
                continue
            try:
                # None: no slot, or no room in the KV pool yet (it waits, first in line)
                gen = self.engine.submit(ticket.request, notify=ticket.notify)
            except (ValueError, TypeError) as e:  # bad input found by the native start (a grammar, say)
                ticket.error = e
            except Exception as e:  # noqa: BLE001 - answered as a server error, the thread goes on
                log.exception("could not start a request")
                ticket.error = e
            else:
                if gen is None:  # no slot or no room after all: wait for the next step
                    self._waiting.appendleft(ticket)
                    return
                ticket._admitted(gen)
            ticket.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    break
                self._admit()
                if self.engine.n_busy == 0:
                    self._wake.wait()
                    continue
            try:
                self.engine.step()
            except Exception:  # noqa: BLE001 - the requests in the batch failed and were told
                log.exception("decode step failed")
        for ticket in self._waiting:
            ticket.error = QueueFullError("the server is shutting down")
            ticket.notify()


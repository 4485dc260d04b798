"""The server's decoding slots: one Aligner (own KV cache, shared weights)
per slot, one request per slot at a time, and a bounded FIFO queue of
requests waiting for a slot. Runs on the event loop; not thread-safe.
"""
from __future__ import annotations

import asyncio
from collections import deque

from .aligner import Aligner

__all__ = ["QueueFullError", "SlotPool"]


class QueueFullError(RuntimeError):
    """Every slot is busy and the waiting queue is full."""


class SlotPool:
    """Hands out Aligners to requests.

    Parameters
    ----------
    aligners
        One per slot.
    queue_size
        How many requests may wait for a slot; one more is refused with
        :class:`QueueFullError`.
    """

    def __init__(self, aligners: list[Aligner], *, queue_size: int) -> None:
        if not aligners:
            raise ValueError("a SlotPool needs at least one Aligner")
        if queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {queue_size}")
        self._all = list(aligners)
        self._idle: deque[Aligner] = deque(aligners)
        self._waiters: deque[asyncio.Future[Aligner]] = deque()
        self.queue_size = queue_size

    @property
    def total(self) -> int:
        return len(self._all)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def queued(self) -> int:
        return sum(not w.done() for w in self._waiters)

    async def acquire(self) -> Aligner:
        """A free Aligner, waiting in line if none is; raises QueueFullError."""
        if self._idle and not self.queued:
            return self._idle.popleft()
        if self.queued >= self.queue_size:
            raise QueueFullError(
                f"the server is busy: all {self.total} slot(s) are in use and the queue of "
                f"{self.queue_size} is full; retry later"
            )
        waiter: asyncio.Future[Aligner] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            # cancelled (the client left) just as a slot was handed over: pass it on
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())
            raise
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def release(self, aligner: Aligner) -> None:
        """Gives a slot back; the longest-waiting request gets it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(aligner)
                return
        self._idle.append(aligner)

    def close(self) -> None:
        for aligner in self._all:
            aligner.close()

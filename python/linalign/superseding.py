"""How the Aligner's calls share its slots: a call that finds every slot
busy supersedes the oldest stream (its reader gets GenerationSuperseded);
one that finds a slot free but the KV pool short of room waits in that slot
until the others' cells are free. It runs on the engine loop's thread,
between steps (linalign.engine.EngineLoop), as the Aligner's admission.
"""
from __future__ import annotations

import threading
from typing import Callable

from .engine import BatchedEngine, Generation, GenerationRequest

__all__ = ["GenerationSuperseded", "SupersedingAdmission"]


class GenerationSuperseded(RuntimeError):
    """A newer call on the same Aligner took the slot this stream was using
    (every slot was busy)."""


class SupersedingAdmission:
    """One Aligner call waiting for the loop to start it.

    ``prepare(engine)`` runs first on the loop thread and returns the engine
    to start it in (the Aligner makes its context again there when the
    request needs a larger one and nothing runs); ``gen`` is the Generation
    the caller reads, made before it was queued."""

    # the loop steps it once its reader follows it (EngineLoop.follow), not
    # as soon as it starts: a caller may step the engine itself
    gen = None

    def __init__(self, gen: Generation, prepare: Callable[[BatchedEngine, GenerationRequest], BatchedEngine]) -> None:
        self._gen = gen
        self._prepare = prepare
        self.error: BaseException | None = None
        self.settled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._gen.cancelled

    def admit(self, engine: BatchedEngine) -> bool:
        request = self._gen.request
        try:
            engine = self._prepare(engine, request)
            while engine.submit(request, wait=True, gen=self._gen) is None:
                engine.abandon(engine.oldest(), GenerationSuperseded(
                    "another call on this Aligner needed the slot; this stream was abandoned"))
        except Exception as e:  # noqa: BLE001 - raised in the caller's thread
            self.error = e
        self.settled.set()
        return True

    def drop(self, error: BaseException) -> None:
        self.error = error
        self.settled.set()

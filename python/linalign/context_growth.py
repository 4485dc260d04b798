"""The Aligner's llama_context and the loop that steps it: the engine made
on the model, and made again, while nothing runs, with room for more
principles (``max_principles=None``) or with ``n_ctx`` cells per stream
when a request's prompts cannot fit the default KV pool even alone. The
loop follows the engine (EngineLoop.replace_engine), so the server's
scheduler on it never keeps a stale one.
"""
from __future__ import annotations

from typing import Any

from llama_cpp._utils import suppress_stdout_stderr

from .engine import BatchedEngine, EngineClosedError, EngineLoop, GenerationRequest
from .engine_settings import min_batch
from .model_loading import LoadedModel

__all__ = ["AlignerContext"]


class AlignerContext:
    """The current engine of an Aligner (``engine``) and its loop (``loop``).

    ``engine_kwargs`` are BatchedEngine's; ``grow_streams``: more
    principles make the context again (else a ValueError); ``grow_pool``:
    the KV pool may grow once to ``n_ctx`` cells per stream of every slot."""

    def __init__(self, loaded: LoadedModel, engine_kwargs: dict[str, Any], *, n_streams: int, grow_streams: bool,
                 grow_pool: bool, verbose: bool) -> None:
        self._loaded = loaded
        self._kwargs = dict(engine_kwargs)
        self._grow_streams = grow_streams
        self._grow_pool = grow_pool
        self._verbose = verbose
        self.engine = self._make_engine(n_streams)
        self.loop = EngineLoop(self.engine)

    def _make_engine(self, n_streams: int) -> BatchedEngine:
        with suppress_stdout_stderr(disable=self._verbose):
            engine = BatchedEngine(self._loaded.model, n_streams=n_streams, **self._kwargs)
        if self._loaded.llama is not None:
            # The borrowed weights must outlive this context, whichever is
            # closed or collected first: the Llama's model frees them from its
            # exit stack, whose callbacks run last-in first-out, so this one
            # frees the context before, once a step running on another
            # thread is over (BatchedEngine.closer). It does not hold the
            # Aligner (a closed engine is an empty shell).
            self._loaded.llama._model._exit_stack.callback(
                engine.closer("the llama_cpp.Llama this Aligner borrows from was closed"))
        return engine

    def _replace(self, engine: BatchedEngine, n_streams: int, reason: str) -> BatchedEngine:
        """Makes the context again; the caller holds the loop between steps."""
        engine.close(reason)
        self.engine = self._make_engine(n_streams)
        self.loop.replace_engine(self.engine)
        return self.engine

    def check(self, request: GenerationRequest) -> None:
        """Raises the ValueError that starting ``request`` would, before it
        is queued, without waiting for a step; what a larger context would
        decide (more streams, a larger pool) is checked as it starts."""
        engine = self.engine
        if request.n_streams > engine.n_streams:
            return
        if self._grow_pool and not engine.n_busy and engine.cells_to_start(request) > engine.n_cells_total:
            return
        engine.check(request)

    def room_for(self, n_streams: int) -> None:
        """Makes the context again with ``n_streams`` streams per slot when a
        request needs more than it has and nothing runs; else ValueError."""
        engine = self.engine
        if engine.closed:
            raise EngineClosedError("the llama_cpp.Llama this Aligner borrows its model from was closed")
        if n_streams <= engine.n_streams:
            return
        k, have = n_streams - 1, engine.n_streams - 1
        if not self._grow_streams:
            raise ValueError(f"principles: this request composes {k} principles; this Aligner was made with "
                             f"max_principles={have}")
        if min_batch(n_streams, engine.n_slots) > self._kwargs["n_batch"]:
            raise ValueError(f"principles: {k} principles in {engine.n_slots} slots need n_batch >= "
                             f"{min_batch(n_streams, engine.n_slots)} (one token per stream of every slot); "
                             f"this Aligner was made with n_batch={self._kwargs['n_batch']}")
        busy = ValueError(f"principles: this request composes {k} principles while other streams run on "
                          f"a context made for {have}; make the Aligner with max_principles={k}")
        if engine.n_busy:
            raise busy  # before any lock: a step in progress is not waited for
        with self.loop.between_steps():
            if engine is not self.engine or engine.n_busy:
                raise busy
            self._replace(engine, n_streams, "this Aligner's context was made again for more principles")

    def pool_for(self, engine: BatchedEngine, request: GenerationRequest) -> BatchedEngine:
        """On the loop thread, before ``request`` starts: the engine to start
        it in, made again with ``n_ctx`` cells per stream of every slot when
        the default pool cannot hold its prompts and answer reserve even
        alone (streams that share little: the ``"system"`` placement) and
        nothing runs."""
        if not self._grow_pool or engine.n_busy or engine.cells_to_start(request) <= engine.n_cells_total:
            return engine  # when busy, admission decides: it waits, or is refused when it can never fit
        self._grow_pool = False
        self._kwargs["kv_cells"] = self._kwargs["n_ctx"] * engine.n_streams * self._kwargs["n_slots"]
        return self._replace(engine, engine.n_streams, "this Aligner's context was made again with a larger KV pool")

    def close(self, reason: str) -> None:
        """Stops the loop (after the step in progress) and frees the context."""
        self.loop.close()
        with suppress_stdout_stderr(disable=self._verbose):
            self.engine.close(reason)

"""The Aligner's calls on its engine loop (linalign.engine.EngineLoop), the
one thread that steps its engine: a request posted to the loop and read
from its own queue (``submit``, ``deltas``, ``chunks``), and the work done
on the engine between two steps (``eval_logits``, ``reset``).
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

from .context_growth import AlignerContext
from .engine import BatchedEngine, EngineClosedError, Generation, GenerationRequest
from .logprobs import TokenLogprob
from .superseding import GenerationSuperseded, SupersedingAdmission
from .tokenizing import Tokenizer

__all__ = ["LoopCalls"]


class LoopCalls:
    """How :class:`~linalign.Aligner` runs requests and evaluations on its
    loop; it gives ``_context`` (an AlignerContext), ``_tokens`` (a
    Tokenizer), ``closed`` and ``_require_open()`` (its engine, or
    AlignerClosedError)."""

    _context: AlignerContext | None
    _tokens: Tokenizer
    closed: bool
    _require_open: Callable[[], BatchedEngine]

    # -- requests on the engine loop ------------------------------------------

    def submit(self, request: GenerationRequest) -> Generation:
        """Hands a request to the engine loop and returns it once the loop
        has started it in a slot (superseding the oldest stream when all are
        busy; waiting in its slot while the KV pool is short of room for it).
        Reading it (:meth:`deltas`, :meth:`chunks`) has the loop step it (or
        step ``engine`` yourself). Bad input is a ValueError before it queues."""
        gen = self._require_open().new_generation(request)
        self._context.check(request)
        admission = SupersedingAdmission(gen, self._context.pool_for)
        self._context.loop.post(admission)
        admission.settled.wait()
        if admission.error is not None:
            raise admission.error
        return gen

    def deltas(self, gen: Generation) -> Iterator[str]:
        """``gen``'s text as the engine loop decodes it. Closing the iterator
        early frees the slot."""
        chunks = self.chunks(gen)
        try:
            for text, _ in chunks:
                yield text
        finally:
            chunks.close()

    def chunks(self, gen: Generation, *, whole: bool = False) -> Iterator[tuple[str, list[TokenLogprob]]]:
        """As :meth:`deltas`, each text delta with the logprob entries of the
        tokens it completes (see :class:`~linalign.engine.Generation`); it
        waits on ``gen``'s own queue (``gen.read()``), never on the engine."""
        self._require_open().loop.follow(gen)  # at the first read: calls made together start together
        # EngineClosedError is linalign.aligner's AlignerClosedError (the same class)
        yield from gen.read(lambda: EngineClosedError("this Aligner (or the Llama it borrows from) was closed")
                            if self.closed else None, whole=whole)

    # -- evaluation ---------------------------------------------------------

    def eval_logits(self, prompt: Sequence[int], base_prompt: Sequence[int], n_tail_p: int = 1, n_tail_b: int = 1):
        """Teacher forcing: the next-token logits at the last ``n_tail_p``
        positions of ``prompt`` and ``n_tail_b`` of ``base_prompt`` (numpy
        arrays of shape (n_tail, n_vocab)), reusing the prompt cache."""
        self._require_open()
        prompt_tokens = self._tokens.prompt_tokens("prompt", list(prompt))
        base_tokens = self._tokens.prompt_tokens("base_prompt", list(base_prompt))

        def teacher_forcing(engine: BatchedEngine):  # on the engine thread: it decodes (engine/loop.py)
            if engine.n_free == 0:
                engine.abandon(engine.oldest(), GenerationSuperseded(
                    "an evaluation on this Aligner needed the slot; this stream was abandoned"))
            return engine.eval_logits(prompt_tokens, base_tokens, n_tail_p, n_tail_b)
        return self._context.loop.call(teacher_forcing)

    def reset(self) -> None:
        """Forgets the prompt cache of every slot (streams in progress are abandoned)."""
        self._require_open()
        with self._context.loop.between_steps() as engine:
            while (gen := engine.oldest()) is not None:
                engine.abandon(gen, GenerationSuperseded("the Aligner was reset; this stream was abandoned"))
            engine.reset()

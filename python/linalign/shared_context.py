"""One context for a ``llama_cpp.Llama`` and the Aligner that borrows it.

``Aligner(llama=llm)`` makes a two-sequence context from ``llm``'s own
context parameters, frees ``llm``'s context and lends ``llm`` sequence 0 of
the new one, which is also the Aligner's stream P. The process then holds the
weights once and one KV cache more than the Llama alone (stream B's), instead
of the Llama's cache plus the Aligner's two. Each sequence has a KV buffer of
its own, so the Llama decodes on sequence 0 exactly as it did on its own
context.

The two take turns. Whichever decoded last owns what is in the cache: when
the Llama decodes after the Aligner, the Aligner forgets its cached streams
(and an aligned stream still being read ends with ``GenerationSuperseded``);
when the Aligner starts after the Llama, the Llama forgets its cached tokens
(``llm.reset()``), as for a prompt that shares nothing with the last. The
Llama's calls on the context take the Aligner's lock, so two threads never
decode on it at once; as with one Llama in two threads, interleaving their
streams still gives each the other's cache.

When the Aligner closes, the Llama gets a context of its own again.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
from typing import Any, Callable

import llama_cpp
from llama_cpp._internals import LlamaContext

__all__ = ["LentContext", "why_not_shared", "free_llama_context", "lend_context", "return_context"]


def _taking_turn(method: Callable[..., Any]) -> Callable[..., Any]:
    """Runs one of the Llama's calls on the context as the Llama's turn."""

    @functools.wraps(method)
    def wrapper(self: "LentContext", *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            take = self._take()
            if take is None:
                raise RuntimeError("this context was returned by the Aligner that lent it")
            take()
            return method(self, *args, **kwargs)

    return wrapper


class LentContext(LlamaContext):
    """The Aligner's context as the Llama sees it: ``LlamaContext``'s calls on
    sequence 0, each first taking the turn from the Aligner. It frees nothing:
    the Aligner owns the context."""

    def __init__(self, llama: llama_cpp.Llama, context_address: int, lock: threading.RLock,
                 take: Callable[[], Callable[[], None] | None]) -> None:
        # LlamaContext.__init__ would make a context; this one exists already
        self.model = llama._model
        self.params = llama.context_params
        self.verbose = llama.verbose
        self._exit_stack = contextlib.ExitStack()
        self.ctx = context_address
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.sampler = None
        self._n_ctx = llama._n_ctx
        self._lock = lock
        self._take = take  # returns the Aligner's turn-taking callback, or None once it has closed

    def n_ctx(self) -> int:
        return self._n_ctx  # the Llama's own size, not the two sequences'

    decode = _taking_turn(LlamaContext.decode)
    encode = _taking_turn(LlamaContext.encode)
    kv_cache_clear = _taking_turn(LlamaContext.kv_cache_clear)
    kv_cache_seq_rm = _taking_turn(LlamaContext.kv_cache_seq_rm)
    kv_cache_seq_cp = _taking_turn(LlamaContext.kv_cache_seq_cp)
    kv_cache_seq_keep = _taking_turn(LlamaContext.kv_cache_seq_keep)
    kv_cache_seq_shift = _taking_turn(LlamaContext.kv_cache_seq_shift)


def why_not_shared(llama: llama_cpp.Llama) -> str | None:
    """Why ``llama``'s context cannot be shared, or None when it can."""
    if isinstance(llama._ctx, LentContext):
        return "it already shares its context with another Aligner"
    if llama.context_params.embeddings:
        return "it was made with embeddings=True"
    if llama.lora_path is not None:
        return "its context has a LoRA adapter"
    if llama._is_recurrent or llama._is_hybrid:
        return "its model is recurrent"
    if getattr(llama._ctx, "ctx", None) is None:
        return "its context is closed"
    return None


def context_params_of(llama: llama_cpp.Llama) -> tuple[int, int]:
    """Address and size of ``llama``'s llama_context_params, for the engine to copy."""
    return ctypes.addressof(llama.context_params), ctypes.sizeof(llama.context_params)


def free_llama_context(llama: llama_cpp.Llama) -> None:
    """Frees ``llama``'s own context (its KV cache) before the shared one is made."""
    llama._ctx.close()  # its later close, from llama's exit stack, does nothing


def lend_context(llama: llama_cpp.Llama, context_address: int, lock: threading.RLock,
                 take: Callable[[], Callable[[], None] | None]) -> None:
    llama._ctx = LentContext(llama, context_address, lock, take)
    llama.reset()


def return_context(llama: llama_cpp.Llama) -> None:
    """Gives ``llama`` a context of its own again (unless it was closed)."""
    if getattr(llama._model, "model", None) is None:
        return
    ctx = LlamaContext(model=llama._model, params=llama.context_params, verbose=llama.verbose)
    llama._ctx = llama._stack.enter_context(contextlib.closing(ctx))
    llama.reset()

"""One context for a ``llama_cpp.Llama`` and the Aligner that borrows it.

``Aligner(llama=llm)`` makes a two-sequence context from ``llm``'s own
context parameters, frees ``llm``'s context and lends ``llm`` sequence 0 of
the new one, which is also the Aligner's stream P. The process then holds the
weights once and one KV cache more than the Llama alone (stream B's), instead
of the Llama's cache plus the Aligner's two. Each sequence has a KV buffer of
its own, so the Llama decodes on sequence 0 exactly as it did on its own
context.

The two take turns, and each finds its cache as it left it. Any use of the
context by the Llama (its calls on ``llm._ctx``, or the context pointer
itself, which its sampler and state functions read) is the Llama's turn.
When it follows the Aligner's, the tokens the Llama counts as cached are
decoded into sequence 0 again (as many as its next call keeps: a new prompt
costs nothing extra), and the Aligner's engine marks stream P as evicted: it
decodes P's tokens again, and B's last one, when it next needs them, so an
aligned stream in progress goes on. Only a call that rewrites every sequence
(``kv_cache_clear``, ``load_state``) ends an aligned stream in progress, with
``GenerationSuperseded``. While lent, the Llama's ``eval``, ``sample``,
``save_state`` and ``load_state`` take the Aligner's lock, as the Aligner's
steps do: the two can be driven from different threads (each switch costs a
prefill of the other's tokens).

When the Aligner closes, the Llama gets a context of its own again.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
import weakref
from typing import Any, Callable

import llama_cpp
from llama_cpp._internals import LlamaContext

__all__ = ["LentContext", "context_params_of", "free_llama_context", "lend_context", "restore_llama_tokens",
           "return_context", "why_not_shared"]


class LentContext(LlamaContext):
    """The Aligner's context as the Llama sees it: ``LlamaContext``'s calls on
    sequence 0, each first taking the turn from the Aligner. It frees nothing:
    the Aligner owns the context."""

    def __init__(self, llama: llama_cpp.Llama, context_address: int, lock: threading.RLock,
                 take: Callable[[], Callable[[int, bool], None] | None]) -> None:
        # LlamaContext.__init__ would make a context; this one exists already
        self.model = llama._model
        self.params = llama.context_params
        self.verbose = llama.verbose
        self._exit_stack = contextlib.ExitStack()
        self._address = context_address
        self.memory = llama_cpp.llama_get_memory(context_address)
        self.sampler = None
        self._llama_n_ctx = llama._n_ctx
        this = weakref.ref(llama)  # the Llama holds this object: no cycle back
        self._llama_tokens = lambda: this().n_tokens
        self._lock = lock
        self._take = take  # the Aligner's turn-taking callback, or None once it has closed

    def _turn(self, keep: int | None = None, every_sequence: bool = False) -> None:
        """The Llama's turn; it needs the first ``keep`` of its cached tokens
        (all when None) in sequence 0, and rewrites the Aligner's sequences
        too when ``every_sequence``. Called with self._lock held."""
        take = self._take()
        if take is None:
            raise RuntimeError("this context was returned by the Aligner that lent it")
        n_cached = self._llama_tokens()
        take(n_cached if keep is None else max(0, min(keep, n_cached)), every_sequence)

    @property
    def ctx(self) -> int:
        with self._lock:
            self._turn()
        return self._address

    def n_ctx(self) -> int:
        return self._llama_n_ctx  # the Llama's own size, not the two sequences'

    def kv_cache_seq_rm(self, seq_id: int, p0: int, p1: int) -> bool:
        with self._lock:
            # Llama.eval and Llama.generate keep positions [0, p0) this way
            self._turn(p0 if p1 < 0 and seq_id <= 0 else None)
            return super().kv_cache_seq_rm(seq_id, p0, p1)

    def kv_cache_clear(self) -> None:
        with self._lock:
            self._turn(0, every_sequence=True)
            super().kv_cache_clear()

    def _locked(name: str, every_sequence: bool) -> Callable[..., Any]:  # noqa: N805 (a helper of the class body)
        method = getattr(LlamaContext, name)

        @functools.wraps(method)
        def wrapper(self: "LentContext", *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._turn(every_sequence=every_sequence)
                return method(self, *args, **kwargs)

        return wrapper

    decode = _locked("decode", False)
    encode = _locked("encode", False)
    # the Llama itself never calls these; they may reach the Aligner's sequence
    kv_cache_seq_cp = _locked("kv_cache_seq_cp", True)
    kv_cache_seq_keep = _locked("kv_cache_seq_keep", True)
    kv_cache_seq_shift = _locked("kv_cache_seq_shift", True)
    del _locked


def restore_llama_tokens(llama: llama_cpp.Llama, keep: int) -> None:
    """Decodes the first ``keep`` tokens ``llama`` counts as cached into
    sequence 0 again, after the Aligner's turn overwrote it."""
    llama._ctx.kv_cache_seq_rm(0, 0, -1)
    tokens = llama.input_ids[:keep].tolist()
    llama.n_tokens = 0
    if tokens:
        llama.eval(tokens)


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
    if llama._ctx.ctx is None:
        return "its context is closed"
    return None


def context_params_of(llama: llama_cpp.Llama) -> tuple[int, int]:
    """Address and size of ``llama``'s llama_context_params, for the engine to copy."""
    return ctypes.addressof(llama.context_params), ctypes.sizeof(llama.context_params)


def free_llama_context(llama: llama_cpp.Llama) -> None:
    """Frees ``llama``'s own context (its KV cache) before the shared one is made."""
    llama._ctx.close()  # its later close, from llama's exit stack, does nothing


# The Llama's own steps on the context, run under the Aligner's lock while
# lent (instance attributes over the class's methods, removed on return).
_LOCKED_LLAMA_METHODS = ("eval", "sample", "save_state", "load_state")


def lend_context(llama: llama_cpp.Llama, context_address: int, lock: threading.RLock,
                 take: Callable[[], Callable[[int, bool], None] | None]) -> None:
    lent = LentContext(llama, context_address, lock, take)
    llama._ctx = lent
    llama.reset()  # its own context, and what it cached, are gone
    this = weakref.ref(llama)  # no reference cycle through its own attributes
    for name in _LOCKED_LLAMA_METHODS:
        method = getattr(type(llama), name)

        def locked(*args: Any, _method: Callable[..., Any] = method, _name: str = name, **kwargs: Any) -> Any:
            with lock:
                if _name == "load_state":
                    lent._turn(every_sequence=True)  # the state overwrites every sequence
                return _method(this(), *args, **kwargs)

        setattr(llama, name, functools.wraps(method)(locked))


def return_context(llama: llama_cpp.Llama) -> None:
    """Gives ``llama`` a context of its own again (unless it was closed)."""
    for name in _LOCKED_LLAMA_METHODS:
        llama.__dict__.pop(name, None)
    if getattr(llama._model, "model", None) is None:
        return
    # freed with the model when the Llama closes (it registers itself there)
    llama._ctx = LlamaContext(model=llama._model, params=llama.context_params, verbose=llama.verbose)
    llama.reset()

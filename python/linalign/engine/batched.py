"""BatchedEngine: the slots of one llama_context, their requests, and the
step that advances all of them in one llama_decode.

The engine loop (:mod:`.loop`, one thread for the Aligner and the server
alike) calls :meth:`step`; every call decodes the next token of every
running request and a chunk of every pending prefill, and hands each request
its text (the native step returns each token's bytes, whether it ends the
generation, and its logprob entry when asked for: one call per step).

By default every stream's KV lives in one pool of cells, where a prefix the
streams share is stored once. A request starts when the pool has room for
its prompts and a reserve for its answer (:meth:`submit`); one that grows
past the room left is preempted and resumes by itself, its text only paused
(``cpp/engine.h``, "KV pool"). All methods are thread-safe: one lock
guards the context, and the native step releases the GIL, not the lock.
What a server's event loop reads while a step runs (:attr:`n_busy`,
:attr:`n_free`, the counters) takes no lock, so it never waits for a decode.
"""
from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable

from .. import _core
from ..logprobs import token_logprob
from ..llama_version import installed_llama_cpp_version
from .generation import Generation, GenerationRequest
from .slot_files import SavedStream, SlotFileError, check_matches, read_slot_file, write_slot_file

__all__ = ["BatchedEngine", "EngineClosedError", "SlotBusyError", "flash_attn_type"]


class EngineClosedError(RuntimeError):
    """The engine (or the model it runs on) was closed."""


class SlotBusyError(RuntimeError):
    """A slot file action on a slot that holds a request, or a restore that
    needs more of the KV pool than the running requests leave free: retry
    once they are done."""


# llama_flash_attn_type
_FLASH_ATTN = {False: 0, True: 1, "auto": -1}

# How long the engine loop's one native call may step while nothing needs
# Python (BatchedEngine.run): under half a frame of a 60 Hz screen. A fast
# model's tokens reach their readers this many at a time.
RUN_BUDGET_S = 0.008
RUN_BUDGET_US = int(RUN_BUDGET_S * 1e6)


def flash_attn_type(value: object) -> int:
    """llama.cpp's flash attention setting for ``value``: False (off, as in
    llama_cpp.Llama), True (on) or "auto" (on where the backend runs it for
    the model, as llama-server's default)."""
    if isinstance(value, bool) or value == "auto":
        return _FLASH_ATTN[value]  # type: ignore[index]
    raise ValueError(f"flash_attn must be True, False or 'auto', got {value!r}")


class BatchedEngine:
    """Slots over one context of ``model``.

    Parameters
    ----------
    model
        A ``linalign._core.Model``.
    n_ctx
        The most tokens one stream (prompt and completion) may hold.
    n_slots
        Requests decoded at once.
    n_streams
        Streams a slot can hold: 2 (P and B) plus one per further principle a
        request may compose (at most 1 + linalign.principles.MAX_PRINCIPLES).
    n_batch
        Tokens per step: one per running stream, the rest for prefill chunks.
    flash_attn
        False (off, as in llama_cpp.Llama: logits match a plain Llama's),
        True, or "auto" (on where the backend runs it for this model).
    kv_unified
        True (the default): one pool of KV cells for every stream, where a
        prefix streams share is stored once and a stream costs what it holds
        of its own; its logits move by rounding with where its cells lie.
        False: a buffer of ``n_ctx`` cells per stream of every slot, each
        stream's logits exactly those of a context of its own, whatever else
        runs (see ``cpp/engine.h``).
    kv_cells
        With ``kv_unified``: the pool's cells (default ``n_ctx * n_slots``,
        what plain decoding allocates; llama.cpp rounds it up to a multiple
        of 256).
    kv_reserve
        With ``kv_unified``: tokens per stream that admission keeps free for
        a request's answer beyond its prompts (at most its ``max_tokens``).
        More means fewer preemptions and fewer requests at once.
    cache_prompt
        Keep each slot's KV after a request, so that the next request sharing
        a prefix with it prefills only the rest.
    seed
        Seed of requests whose options give none (None: random per request).
    count_passes
        Count llama.cpp's forward passes (:attr:`n_forward_passes`). Off by
        default: the counting is an eval callback, fixed when the context is
        made, that makes a GPU synchronize after every graph split; the
        benchmarks and tests that read the counts turn it on.
    """

    def __init__(self, model: Any, *, n_ctx: int, n_slots: int = 1, n_batch: int = 512, n_threads: int = 0,
                 n_threads_batch: int = 0, flash_attn: bool | str = False, kv_unified: bool = True,
                 cache_prompt: bool = True, seed: int | None = None, n_streams: int = 2,
                 kv_cells: int | None = None, kv_reserve: int = 256, count_passes: bool = False) -> None:
        self._model = model
        self._native = _core.Engine(model, n_ctx, n_slots, n_batch, n_threads, n_threads_batch,
                                    flash_attn_type(flash_attn), kv_unified,
                                    n_streams, kv_cells or 0, kv_reserve, bool(count_passes))
        self.n_streams = n_streams
        self.lock = threading.RLock()
        self.n_ctx = n_ctx
        self.n_slots = n_slots
        self.cache_prompt = cache_prompt
        self.kv_unified = kv_unified
        self._seed = seed
        self._active: dict[int, Generation] = {}   # slot -> its request
        self._submitted = 0
        self._stats_pending: set[int] = set()  # ids of requests that waited for room before their prefill
        self._closed_reason = "the engine was closed"
        self.loop = None  # the EngineLoop that steps it, once one does (engine/loop.py)

    # -- lifetime -----------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._native.closed

    def close(self, reason: str | None = None) -> None:
        """Frees the context; requests still running fail with EngineClosedError."""
        self._native.interrupt()  # a run in progress on another thread ends at its step
        with self.lock:
            if reason:
                self._closed_reason = reason
            for gen in list(self._active.values()):
                gen._finish(None, EngineClosedError(self._closed_reason))
                self._notify(gen)
            self._active.clear()
            self._native.close()

    def closer(self, reason: str) -> Callable[[], None]:
        """A callable that closes this engine for a borrowed model's owner to
        call before it frees the model. It takes the engine's lock, so it
        waits for a step in progress on another thread (freeing the context
        under a running decode would be a use-after-free), then fails the
        running requests with ``reason``. It holds the native engine and the
        lock, and this object only weakly: the owner's exit stack must not
        keep a dropped engine alive."""
        native, lock, this = self._native, self.lock, weakref.ref(self)

        def close() -> None:
            native.interrupt()
            with lock:
                engine = this()
                if engine is not None:
                    engine.close(reason)
                else:
                    native.close()
        return close

    def _require_open(self) -> None:
        if self._native.closed:
            raise EngineClosedError(self._closed_reason)

    # -- requests -----------------------------------------------------------

    @property
    def n_busy(self) -> int:
        # no lock: len() of a dict is atomic under the GIL, and the event loop
        # of a server reads this while another thread holds the lock to decode
        return len(self._active)

    @property
    def n_free(self) -> int:
        return self.n_slots - self.n_busy

    def check(self, request: GenerationRequest) -> None:
        """Raises the ValueError that :meth:`submit` would raise for bad input,
        without the engine's lock or its context: a server checks a request
        on its event loop, while another thread decodes, and answers 400
        before it queues the request (the streams' headers then go out at
        once, before a slot is free)."""
        options = request.options
        if request.n_streams > self.n_streams:
            raise ValueError(f"principles: {request.n_streams - 1} principles need {request.n_streams} streams per "
                             f"slot; this engine was made with {self.n_streams} (at most "
                             f"{self.n_streams - 1} principles per request)")
        n_vocab = self._model.n_vocab
        for i, prompt in enumerate(request.prompts):
            name = ("prompt", "base_prompt")[i] if i < 2 else "principled prompt"
            if not prompt:
                raise ValueError(f"{name} is empty: it needs at least one token")
            if len(prompt) >= self.n_ctx:
                raise ValueError(f"{name} has {len(prompt)} tokens, which does not fit the context window of "
                                 f"{self.n_ctx} tokens (leave room to generate)")
            bad = next((t for t in prompt if not 0 <= t < n_vocab), None)
            if bad is not None:
                raise ValueError(f"token id {bad} is outside the vocabulary [0, {n_vocab})")
        params = request.native_params(self._seed)
        params.validate()
        # reads only what the engine was made with: safe beside a decode
        self._native.check_fits(request.prompts, params)
        if options.grammar:
            # parses the grammar (the vocabulary is only read: safe beside a decode)
            _core.SamplerChain(params, self._model)

    def submit(self, request: GenerationRequest, *, notify: Callable[[], None] | None = None,
               slot: int | None = None, wait: bool = False, gen: Generation | None = None) -> Generation | None:
        """Starts a request in the free slot with the longest cached prefix
        (or in ``slot``, else the request's own ``slot``, which must be free:
        for probes of slot placement, and a server's ``id_slot``).

        Returns None when every slot is busy, and when the KV pool has no
        room now for the request's prompts and the reserve for its answer
        (``min(max_tokens, 256)`` tokens per stream it decodes) beside what
        the running requests hold and have reserved (idle slots' prompt
        caches count as free); a server keeps it queued. With ``wait`` it
        takes the slot instead and starts by itself once a step finds room:
        the Aligner, which has no queue, waits so. Bad input (empty or
        over-long prompts, prompts whose cells alone exceed the pool, token
        ids outside the vocabulary, a grammar that does not parse, sampling
        values out of range) raises ValueError here. ``gen``: the Generation
        to start (made by :meth:`new_generation` before it was queued).
        """
        if request.n_streams > self.n_streams:
            raise ValueError(f"principles: {request.n_streams - 1} principles need {request.n_streams} streams per "
                             f"slot; this engine was made with {self.n_streams} (at most "
                             f"{self.n_streams - 1} principles per request)")
        if gen is None:
            gen = self.new_generation(request, notify=notify)
        params = request.native_params(self._seed)
        cache_prompt = self.cache_prompt if request.cache_prompt is None else request.cache_prompt
        if slot is None:
            slot = request.slot
        with self.lock:
            self._require_open()
            self._reap_cancelled()
            prompts = request.prompts
            if slot is None:
                slot = self._native.pick_slot(prompts)
                if slot < 0:
                    return None
            elif not 0 <= slot < self.n_slots or self._native.busy(slot):
                raise ValueError(f"slot {slot} is not a free slot of this engine ({self.n_slots} slots)")
            if not wait and not self._native.room_for(slot, prompts, params, cache_prompt, gen.limit):
                self._native.check_fits(prompts, params)  # never fits: ValueError, not a wait
                return None
            stats = self._native.start(slot, prompts, params, cache_prompt, gen.limit, list(request.stop))
            gen.slot = slot
            gen.interrupt = self._native.interrupt
            self._submitted += 1
            gen.order = self._submitted
            self._set_prefill(gen, stats)
            if self._native.waiting(slot):
                self._stats_pending.add(id(gen))  # its prefill stats come when it starts
            self._active[slot] = gen
        return gen

    def new_generation(self, request: GenerationRequest, *,
                       notify: Callable[[], None] | None = None) -> Generation:
        """A Generation of ``request`` not started yet (for a client that
        waits on it before the loop starts it)."""
        return Generation(request=request, limit=request.options.token_limit(self.n_ctx), notify=notify)

    @staticmethod
    def _set_prefill(gen: Generation, stats: Any) -> None:
        # P's prompt tokens not computed: its own cache, and what it takes from B's
        gen.cached_tokens = stats.cached[0]
        gen.prefill = {"reused": stats.reused, "decoded": stats.decoded, "shared": stats.shared,
                       "cached": stats.cached}

    def is_free(self, slot: int) -> bool:
        """Whether ``slot`` holds no request."""
        with self.lock:
            return 0 <= slot < self.n_slots and not self._native.busy(slot)

    def oldest(self) -> Generation | None:
        """The request that has held its slot longest."""
        with self.lock:
            return min(self._active.values(), key=lambda g: g.order, default=None) if self._active else None

    def abandon(self, gen: Generation, error: BaseException) -> None:
        """Ends a request at once with ``error`` (its consumer sees it raised)."""
        with self.lock:
            self._release(gen)
            gen._finish(None, error)
            self._notify(gen)

    def _reap_cancelled(self) -> None:
        for gen in [g for g in self._active.values() if g.cancelled]:
            self._release(gen)
            gen._finish("cancelled")
            self._notify(gen)

    def step(self) -> int:
        """Frees the slots of cancelled requests, then decodes one step of all
        the others. Returns how many requests got a token (0: nothing to do)."""
        return self._advance(self._native.step_by_slot)

    def run(self, seen: int) -> int:
        """What the engine loop calls: steps as :meth:`step` does, in one
        native call, for as long as no event needs Python and no one called
        :meth:`interrupt` since :attr:`n_interrupts` was ``seen``, within
        about RUN_BUDGET_S (``_core.Engine.run``). A step of a small model
        is shorter than the Python each step would cost around it
        (docs/overhead.md, item 13); a step longer than the budget runs
        alone, as :meth:`step`. Returns how many tokens came."""
        return self._advance(lambda: self._native.run_by_slot(RUN_BUDGET_US, seen))

    @property
    def n_interrupts(self) -> int:
        return self._native.n_interrupts

    def interrupt(self) -> None:
        """Ends a :meth:`run` in progress after its step (any thread, no lock):
        there is work between steps."""
        self._native.interrupt()

    def _advance(self, native_steps: Callable[[], list]) -> int:
        with self.lock:
            self._require_open()
            self._reap_cancelled()
            if not self._active:
                return 0
            try:
                # per slot: its plain tokens as lists, then its other events
                # (_core.Engine.step_by_slot)
                by_slot = native_steps()
            except RuntimeError as e:  # a failed llama_decode: every request in the batch fails
                for gen in list(self._active.values()):
                    self._fail(gen, RuntimeError(str(e)))
                raise
            now = time.monotonic()
            n_tokens = 0
            # Each request is told once, after every slot's events: a reader
            # woken earlier would wait for the GIL while this thread delivers.
            told: list[Generation] = []
            for slot, tokens, pieces, ages, plain_tops, ratios, guarded_at, rest in by_slot:
                n_events = len(tokens) + sum(not event.preempted for event in rest)
                n_tokens += n_events
                gen = self._active.get(slot)
                if gen is None:
                    continue
                try:
                    if tokens:
                        self._on_tokens(gen, tokens, pieces, [now - age for age in ages], plain_tops, ratios,
                                        guarded_at)
                    for event in rest:
                        if self._active.get(slot) is not gen:
                            break  # it ended at an earlier event of this run
                        if event.preempted:
                            # its cells went to older requests; it keeps its slot, its
                            # text and its sampler, and resumes when there is room
                            gen.preemptions += 1
                        else:
                            self._on_token(gen, event, now - event.age)
                except Exception as e:  # noqa: BLE001 - a callback's error fails its own request only
                    # The other slots have sampled already: their events
                    # must still reach their requests, or their texts would
                    # silently lose this step's token.
                    self._fail(gen, e)
                    continue
                if n_events:
                    told.append(gen)
            for gen in told:
                try:
                    self._notify(gen)
                except Exception as e:  # noqa: BLE001 - a consumer's callback fails its own request only
                    self._fail(gen, e)
            return n_tokens

    def _fail(self, gen: Generation, error: BaseException) -> None:
        self._release(gen)
        gen._finish(None, error)
        try:
            self._notify(gen)
        except Exception:  # noqa: BLE001 - its consumer learns of the error when it next looks
            pass

    def _on_tokens(self, gen: Generation, tokens: list[int], pieces: list[bytes], times: list[float],
                   plain_tops: list[int], ratios: list[list[float]], guarded_at: list[int]) -> None:
        """A run of a request's plain tokens (sampled, none its last, no
        logprobs asked), as step_by_slot lists them: taken together, not an
        event each (issue 21), up to a stop string that Python's text finds
        (the engine's byte watch finds nearly all, and returns there)."""
        self._take_prefill_stats(gen)
        n = gen._push_pieces(pieces[: max(gen.limit - gen.completion_tokens, 0)])
        if n < len(tokens):
            tokens, times, plain_tops = tokens[:n], times[:n], plain_tops[:n]
            ratios = [r[:n] for r in ratios]
            guarded_at = [i for i in guarded_at if i < n]
        gen.completion_tokens += n
        gen.tokens += tokens
        gen._record_steps(tokens, plain_tops, ratios, len(guarded_at), times)
        self._end_at_stop_or_limit(gen)

    def _take_prefill_stats(self, gen: Generation) -> None:
        """At a request's first token: what its prefill reused and decoded."""
        if self._stats_pending and id(gen) in self._stats_pending:
            self._stats_pending.discard(id(gen))
            self._set_prefill(gen, self._native.last_prefill(gen.slot))

    def _end_at_stop_or_limit(self, gen: Generation) -> None:
        if gen.assembler.stopped:
            self._release(gen)
            gen._finish("stop")
        elif gen.completion_tokens >= gen.limit:
            self._release(gen)
            gen._finish("length")

    def _on_token(self, gen: Generation, event: Any, when: float) -> None:
        """One event that is not a plain token (step_by_slot's rest): a token
        with its logprob entry, an end, a failure, a full context. Each
        field read once: it runs between two decodes."""
        self._take_prefill_stats(gen)
        token = event.token
        if token >= 0 and not event.eog and not event.error:
            gen.completion_tokens += 1
            gen.tokens.append(token)
            gen._record_step(event.ratios, event.guarded, token, event.plain_top, when)
            piece = event.piece
            native_entry = event.logprob  # None unless the request asked for logprobs
            if native_entry is None:
                gen._push_token(piece)
            else:
                gen._push_token(piece, token_logprob(token, piece, native_entry,
                                                     text_offset=gen.assembler.decoded_length))
            self._end_at_stop_or_limit(gen)
        elif event.error:
            self._release(gen)
            gen._finish(None, RuntimeError(f"sampling failed: {event.error}"))
        elif token < 0:
            self._release(gen)
            gen._finish("length")  # the stream's context is full
        else:  # an end-of-generation token
            self._release(gen)
            gen._finish("stop")

    def _release(self, gen: Generation) -> None:
        self._stats_pending.discard(id(gen))
        if gen.slot >= 0 and self._active.get(gen.slot) is gen:
            del self._active[gen.slot]
            if not self._native.closed:
                self._native.finish(gen.slot)

    @staticmethod
    def _notify(gen: Generation) -> None:
        gen._changed.set()
        if gen.notify is not None:
            gen.notify()

    # -- the rest of the engine's public face -----------------------------

    @property
    def n_decode_calls(self) -> int:
        """llama_decode calls so far (one per step, whatever the number of slots)."""
        return self._native.n_decode_calls

    @property
    def decode_seconds(self) -> float:
        """Seconds spent inside the steps' llama_decode calls so far: a step's
        time less this is the host work around the decode."""
        return self._native.decode_seconds

    @property
    def counts_passes(self) -> bool:
        """Whether this engine was made with ``count_passes=True``."""
        return self._native.counts_passes

    @property
    def n_forward_passes(self) -> int | None:
        """Forward passes llama.cpp ran so far (its ubatches), or None: not
        counted unless the engine was made with ``count_passes=True``.

        A step is one where llama.cpp keeps its batch whole: with a KV
        buffer per stream (``kv_unified=False``) it splits at a gap in the
        running streams' sequence ids and where a prompt chunk shares the
        step with one-token decodes (docs/serving.md)."""
        return self._native.n_forward_passes

    # -- the KV pool (no lock: the engine publishes them atomically) ---------

    @property
    def n_cells_total(self) -> int:
        """KV cells of the context: the pool, or every stream's buffer."""
        return self._native.n_cells_total

    @property
    def n_cells_used(self) -> int:
        """KV cells the streams hold, a cell that streams share counted once."""
        return self._native.n_cells_used

    @property
    def n_cells_idle(self) -> int:
        """Of those, the cells held by idle slots' prompt caches (a step
        frees them, least recently used first, when it needs room)."""
        return self._native.n_cells_idle

    @property
    def n_waiting(self) -> int:
        """Requests holding a slot while they wait for room in the pool
        (preempted, or submitted with ``wait``)."""
        return self._native.n_waiting

    @property
    def n_preemptions(self) -> int:
        """Requests preempted so far because the pool was full."""
        return self._native.n_preemptions

    def cells_alone(self, request: GenerationRequest) -> int:
        """The KV cells ``request``'s streams hold once its prompts are in,
        in an empty slot (a prefix they share counted once)."""
        return self._native.cells_alone(request.prompts, request.native_params(self._seed))

    def cells_to_start(self, request: GenerationRequest) -> int:
        """:meth:`cells_alone` and the reserve that admission keeps free for
        the answer: the cells ``request`` needs free to start alone."""
        return self._native.cells_to_start(request.prompts, request.native_params(self._seed),
                                           request.options.token_limit(self.n_ctx))

    def logits(self, gen: Generation, stream: int = 0):
        """The logits ``gen``'s stream (0: P, 1: B, 2...: further principled
        streams) sampled its last token from; valid until the next step."""
        with self.lock:
            self._require_open()
            if gen.slot < 0:
                raise ValueError("this request holds no slot (it finished)")
            return self._native.logits(gen.slot, stream)

    def eval_logits(self, prompt: list[int], base_prompt: list[int], n_tail_p: int = 1, n_tail_b: int = 1):
        """Teacher forcing: the logits of the last positions of both prompts
        (numpy arrays of shape (n_tail, n_vocab)), on the free slot with the
        longest cached prefix. Raises RuntimeError when every slot is busy."""
        with self.lock:
            self._require_open()
            slot = self._native.pick_slot([prompt, base_prompt])
            if slot < 0:
                raise RuntimeError("every slot is busy")
            return self._native.eval_logits(slot, prompt, base_prompt, n_tail_p, n_tail_b)

    def reset(self) -> None:
        """Forgets every slot's cached prompt (no request may be running)."""
        with self.lock:
            self._require_open()
            if self._active:
                raise RuntimeError("reset() while requests are running")
            self._native.clear()

    # -- slot files (engine/slot_files.py, docs/slot_files.md) --------------

    def slot_layout(self) -> dict[str, Any]:
        """What a saved slot's state depends on beside the model: a file
        saved under another layout is refused."""
        native = self._native
        return {"kv_type_k": native.kv_type_k, "kv_type_v": native.kv_type_v, "flash_attn": native.flash_attn,
                "kv_unified": self.kv_unified, "llama_cpp_python": installed_llama_cpp_version()}

    def _free_slot(self, slot: int, action: str) -> None:
        if type(slot) is not int or not 0 <= slot < self.n_slots:
            raise ValueError(f"slot must be in [0, {self.n_slots}), got {slot!r}")
        if self._native.busy(slot):
            raise SlotBusyError(f"slot {slot} is running a request: {action} it once the request is done")

    def save_slot(self, slot: int, path: str | Path, *, model_sha256: str, model_name: str) -> dict[str, Any]:
        """Writes ``slot``'s prompt cache to ``path`` (atomically). Raises
        SlotBusyError while the slot runs a request."""
        started = time.perf_counter()
        with self.lock:
            self._require_open()
            self._free_slot(slot, "save")
            saved = [SavedStream(tokens, shared, state) for tokens, shared, state in self._native.save_slot(slot)]
        # the file is written outside the lock: the states are copies
        n_bytes = write_slot_file(path, model_sha256=model_sha256, model_name=model_name,
                                  layout=self.slot_layout(), streams=saved)
        return {"n_saved": len(saved[0].tokens) if saved else 0, "n_written": n_bytes,
                "streams": [len(s.tokens) for s in saved],
                "shared": sum(p1 - p0 for s in saved for _, p0, p1 in s.shared),
                "ms": (time.perf_counter() - started) * 1e3}

    def restore_slot(self, slot: int, path: str | Path, *, model_sha256: str, model_name: str) -> dict[str, Any]:
        """Replaces ``slot``'s prompt cache with the one saved in ``path``.
        Everything is checked before the KV cache is touched: SlotFileError
        (a ValueError) for a file that is not one, truncated, corrupt, of
        another format version, model or KV layout, or that holds more than
        the pool; SlotBusyError while the slot runs a request or the running
        requests leave too little of the pool; FileNotFoundError."""
        started = time.perf_counter()
        name = Path(path).name
        saved = read_slot_file(path)
        check_matches(saved, model_sha256=model_sha256, model_name=model_name, layout=self.slot_layout(),
                      name=name)
        streams = [s.native() for s in saved.streams]
        with self.lock:
            self._require_open()
            native = self._native
            try:
                native.check_saved(streams)
            except ValueError as e:
                raise SlotFileError(f"{name}: {e}") from None
            need = native.cells_of_saved(streams)
            if self.kv_unified and need > native.n_cells_total:
                raise SlotFileError(f"{name} holds {need} KV cells, more than this pool's {native.n_cells_total} "
                                    "(give it more: kv_cells, --kv-cells)")
            self._free_slot(slot, "restore")
            room = native.n_cells_total - native.n_cells_used + native.n_cells_idle  # idle caches make way
            if self.kv_unified and need > room:
                raise SlotBusyError(f"{name} holds {need} KV cells; the requests running leave {room} of the "
                                    f"pool's {native.n_cells_total}: restore it when they are done")
            n_restored = native.restore_slot(slot, streams)
        return {"n_restored": n_restored, "n_read": saved.n_bytes,
                "streams": [len(s.tokens) for s in saved.streams],
                "shared": sum(p1 - p0 for s in saved.streams for _, p0, p1 in s.shared),
                "ms": (time.perf_counter() - started) * 1e3}

    def erase_slot(self, slot: int) -> int:
        """Forgets ``slot``'s prompt cache; returns the tokens its P stream held."""
        with self.lock:
            self._require_open()
            self._free_slot(slot, "erase")
            return self._native.erase_slot(slot)

    def cached_tokens(self, slot: int, stream: int = 0) -> int:
        """Tokens a slot's stream holds in the KV cache."""
        with self.lock:
            self._require_open()
            return self._native.n_past(slot, stream)

    def active_streams(self, gen: Generation) -> int:
        """Streams a running request decodes: 2, 1 when it is plain decoding
        (ratio 0, or no principle: both prompts the same), or 1 + K for K
        composed principles."""
        with self.lock:
            self._require_open()
            if gen.slot < 0:
                raise ValueError("this request holds no slot (it finished)")
            return self._native.n_active_streams(gen.slot)

    def last_prefill(self, slot: int) -> dict[str, object]:
        """What the last request started in ``slot`` found in its cache:
        tokens reused and left to decode per stream (P, B), and B's tokens
        taken from P's cells."""
        with self.lock:
            self._require_open()
            stats = self._native.last_prefill(slot)
            return {"reused": stats.reused, "decoded": stats.decoded, "shared": stats.shared,
                    "cached": stats.cached}

"""One request in the engine: what it asks for (GenerationRequest) and how
far it has come (Generation: its slot, its text so far, why it finished).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from .. import _core
from ..logprobs import TokenLogprob
from ..options import AUTO_RATIO, SamplingOptions
from ..text_stream import TextAssembler

__all__ = ["GenerationRequest", "Generation"]

# A streaming reader whose tokens came less than STREAM_COALESCE_S apart
# (more than 500 tokens a second) looks for deltas every STREAM_POLL_S
# instead of being woken for them (Generation.read). A wake from the engine
# thread costs that thread a cross-core wake-up (35 µs on a virtual machine,
# docs/overhead.md, items 12 and 15) between two decodes; 8 ms is under half a
# frame of a 60 Hz screen, and the end still wakes the reader at once.
# It goes on looking while its last token is less than STREAM_FLOWING_S old:
# the engine delivers fast tokens a run at a time (up to 8 ms of steps, then
# Python: BatchedEngine.run), so a look can come up empty between two runs,
# and a reader that then waited to be told cost the engine thread a wake at
# the next run.
STREAM_COALESCE_S = 0.002
STREAM_POLL_S = 0.008
STREAM_FLOWING_S = 0.05


@dataclass(frozen=True)
class GenerationRequest:
    """The token streams and options of one request."""

    prompt: Sequence[int]        # stream P: with the principle
    base_prompt: Sequence[int]   # stream B: without it (== prompt: plain decoding)
    options: SamplingOptions
    stop: tuple[str, ...] = ()   # the options' stop strings and the chat template's
    # None: no logprobs; k >= 0: each token's logprob and its k most likely
    # alternatives (linalign.logprobs), captured by the engine per token
    want_logprobs: int | None = None
    # further principled streams when several principles are composed
    # (linalign.principles): their prompts and ratios (a number or "auto");
    # options.ratio is P's
    extra_prompts: tuple[Sequence[int], ...] = ()
    extra_ratios: tuple[float | str, ...] = ()
    # each principled stream's principle as tokens, P first, for the echo
    # guard (SamplingOptions.echo_guard); empty: nothing to guard
    principle_tokens: tuple[Sequence[int], ...] = ()
    # reuse the slot's cached prefix (None: the engine's cache_prompt)
    cache_prompt: bool | None = None
    # the slot to run in (None: the free one with the longest cached prefix);
    # a server waits for it to be free
    slot: int | None = None
    # the format the answer's tool calls are read in (linalign.tool_calls
    # FORMATS); None: the request offers no tools
    tool_format: str | None = None

    def __post_init__(self) -> None:
        if len(self.extra_prompts) != len(self.extra_ratios):
            raise ValueError("extra_prompts and extra_ratios must have the same length")

    @property
    def prompts(self) -> list[list[int]]:
        """Every stream's prompt in engine order: P, B, then the further principled ones."""
        return [list(self.prompt), list(self.base_prompt), *(list(p) for p in self.extra_prompts)]

    @property
    def n_streams(self) -> int:
        """Streams a slot needs for this request."""
        return 2 + len(self.extra_prompts)

    def native_params(self, default_seed: int | None = None) -> "_core.SamplingParams":
        """The engine's parameters: the options', the further streams'
        ratios, and the principles the echo guard watches."""
        params = self.options.to_native(default_seed)
        params.extra_ratios = [0.0 if r == AUTO_RATIO else float(r) for r in self.extra_ratios]
        if AUTO_RATIO in self.extra_ratios:
            params.extra_auto_ratio = [int(r == AUTO_RATIO) for r in self.extra_ratios]
        params.principle_tokens = [list(t) for t in self.principle_tokens]
        # each token's logprob entry is computed natively, while its logits are in the context
        params.n_logprobs = -1 if self.want_logprobs is None else self.want_logprobs
        return params


@dataclass
class Generation:
    """A request's progress. The engine appends text deltas to it and marks
    it done; a consumer reads them with :meth:`pop_delta`, or with
    :meth:`pop_chunk` for the text and the logprobs of the tokens it completes.

    Logprobs (when the request wants them): a text delta may cover several
    tokens, and a token's text may be held back (an incomplete UTF-8
    character, a possible start of a stop string) and come out in a later
    delta, or in two. Each token's entry comes with the delta in which its
    text is complete; the entries of tokens whose text was never emitted
    (the tokens of a stop string) are dropped; what no delta took comes in
    :attr:`final_logprobs`.

    ``notify``, when given, is called (from the thread that stepped the
    engine) after every change, for consumers that wait elsewhere (an event
    loop); a consumer on a thread of its own calls :meth:`wait`.
    """

    request: GenerationRequest
    limit: int
    notify: Callable[[], None] | None = None
    # set by the engine that starts it: ends a run of steps in progress, so
    # that a cancel frees the slot at the next step (BatchedEngine.run)
    interrupt: Callable[[], None] | None = None
    slot: int = -1
    order: int = 0              # submission order
    prompt_tokens: int = 0
    cached_tokens: int = 0      # prompt tokens of stream P found in the slot's cache
    completion_tokens: int = 0
    prefill: dict[str, object] = field(default_factory=dict)  # per stream (P, B): reused, decoded; B's shared
    # over the generated tokens: the sum of the step size each principled
    # stream was applied at (P first), and how many the echo guard acted at
    _ratio_sums: list[float] = field(default_factory=list)
    _steered_tokens: int = 0
    _guarded_tokens: int = 0
    # generated tokens decoded with a base stream, and those of them other
    # than the base stream's most likely token (what alignment changed, and
    # at temperature > 0 what sampling did too); when each token came
    # (time.monotonic(), appended by the engine thread)
    aligned_tokens: int = 0
    changed_tokens: int = 0
    token_times: list[float] = field(default_factory=list)
    preemptions: int = 0        # times the KV pool was full and it gave its cells up (it resumed each time)
    finish_reason: str | None = None
    error: BaseException | None = None
    tokens: list[int] = field(default_factory=list)
    final_logprobs: list[TokenLogprob] = field(default_factory=list)
    _deltas: deque[tuple[str, list[TokenLogprob]]] = field(default_factory=deque)
    # tokens whose text is not all emitted yet: [entry, start, end (None: bytes pending)]
    _held: list[list] = field(default_factory=list)
    _carry: list[TokenLogprob] = field(default_factory=list)  # complete, awaiting a non-empty delta
    _cancelled: threading.Event = field(default_factory=threading.Event)
    _changed: threading.Event = field(default_factory=threading.Event)  # set after every change, for wait()
    _ended: threading.Event = field(default_factory=threading.Event)  # set once it is done, for read(whole=True)

    def __post_init__(self) -> None:
        self.prompt_tokens = len(self.request.prompt)
        self.assembler = TextAssembler(self.request.stop)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Asks the engine to free this request's slot at its next step
        (safe from any thread)."""
        self._cancelled.set()
        if self.interrupt is not None:
            self.interrupt()

    def wait(self, timeout: float | None = None) -> None:
        """Waits until the engine changed this request since the last wait
        (a delta, the end), or ``timeout`` seconds."""
        self._changed.wait(timeout)
        self._changed.clear()

    def read(self, gone: Callable[[], BaseException | None] = lambda: None, *, whole: bool = False,
             ) -> Iterator[tuple[str, list[TokenLogprob]]]:
        """Its text deltas, each with the logprob entries of the tokens it
        completes, as the engine loop decodes them, on the reader's thread;
        raises the request's error at the end. ``gone()``: an error to raise
        instead of the next delta (its owner was closed), or None. Closing
        the iterator early cancels the request (its slot is freed at the
        next step). ``whole``: wait for the end before the first delta (a
        reply collected whole), waking once instead of at every token, where
        the reader would take a core from the decode.

        Streaming, it wakes each time the engine loop tells it of new deltas
        (once per native run of steps: BatchedEngine.run). While tokens come
        less than STREAM_COALESCE_S (2 ms) apart it looks every STREAM_POLL_S
        (8 ms) instead, and only the end wakes it sooner: each wake would
        cost the engine thread a wake-up of another core between two
        decodes. It looks on while its last token is less than
        STREAM_FLOWING_S (50 ms) old: a look between two runs finds nothing.
        Still one delta per token."""
        try:
            while whole and not self.done:
                if (error := gone()) is not None:
                    raise error
                self._ended.wait(0.25)
            fast = False
            while True:
                chunk = self.pop_chunk()
                if chunk is not None and (error := gone()) is not None:
                    raise error
                if chunk is not None:
                    yield chunk
                elif self.done:
                    # the last deltas were pushed before it was marked done
                    while (chunk := self.pop_chunk()) is not None:
                        yield chunk
                    break
                elif fast:
                    self._ended.wait(STREAM_POLL_S)
                    # still coming (a run may be in progress); else wait to be told
                    times = self.token_times
                    fast = self.has_delta or (bool(times) and time.monotonic() - times[-1] < STREAM_FLOWING_S)
                else:
                    self.wait()
                    times = self.token_times
                    fast = len(times) >= 2 and times[-1] - times[-2] < STREAM_COALESCE_S
            if self.error is not None:
                raise self.error
        finally:
            if not self.done:
                self.cancel()

    def pop_delta(self) -> str | None:
        chunk = self.pop_chunk()
        return None if chunk is None else chunk[0]

    def pop_chunk(self) -> tuple[str, list[TokenLogprob]] | None:
        """The next text delta and the logprob entries of the tokens it
        completes (empty unless the request wants logprobs)."""
        try:
            return self._deltas.popleft()
        except IndexError:
            return None

    @property
    def has_delta(self) -> bool:
        return bool(self._deltas)

    def alignment(self) -> dict[str, object]:
        """What the alignment did over the answer (a response's ``linalign``
        object): the mean step size applied (P's, and each principled
        stream's), and at how many tokens the echo guard lowered a candidate."""
        n = max(self._steered_tokens, 1)
        means = [s / n for s in self._ratio_sums] or [0.0]
        return {"mean_ratio": means[0], "mean_ratios": means, "echo_guarded_tokens": self._guarded_tokens}

    def usage(self) -> dict[str, object]:
        """OpenAI's usage object; cached_tokens counts the prompt tokens of
        the principled stream that were not computed again."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    # -- written by the engine, under its lock ----------------------------

    def _record_step(self, ratios: Sequence[float], guarded: Sequence[tuple[int, int]], token: int = -1,
                     plain_top: int = -1, when: float | None = None) -> None:
        """The steering of the token just sampled (a native step event's):
        the step size each principled stream was applied at (P first), the
        (stream, token) pairs the echo guard lowered, and the base stream's
        most likely token (-1: none), and when it came (time.monotonic();
        None: now). Runs once per token on the engine thread: only running
        totals."""
        self._record_steps([token], [plain_top], [[r] for r in ratios], 1 if guarded else 0,
                           [time.monotonic() if when is None else when])

    def _record_steps(self, tokens: list[int], plain_tops: list[int], ratios: list[list[float]], n_guarded: int,
                      times: list[float]) -> None:
        """:meth:`_record_step` for a run of tokens at once: ``ratios`` one
        list per principled stream, ``n_guarded`` how many of the tokens the
        echo guard acted at, ``times`` when each came. The same totals,
        summed a token at a time whatever the run's length."""
        self.token_times += times
        for token, top in zip(tokens, plain_tops):
            if top >= 0:
                self.aligned_tokens += 1
                self.changed_tokens += token != top
        sums = self._ratio_sums
        if len(sums) < len(ratios):
            sums += [0.0] * (len(ratios) - len(sums))
        for i, stream_ratios in enumerate(ratios):
            total = sums[i]
            for r in stream_ratios:
                total += r
            sums[i] = total
        self._steered_tokens += len(tokens)
        self._guarded_tokens += n_guarded

    def _push_pieces(self, pieces: list[bytes]) -> int:
        """The bytes of a run of tokens that carry no logprob entries; returns
        how many it took: all, or those up to the one that completed a stop
        string (after it the text is cut)."""
        assembler = self.assembler
        for i, piece in enumerate(pieces):
            self._push(assembler.push(piece))
            if assembler.stopped:
                return i + 1
        return len(pieces)

    def _push(self, delta: str, logprobs: list[TokenLogprob] | None = None) -> None:
        if logprobs:
            self._carry.extend(logprobs)
        if delta:
            entries, self._carry = self._carry, []
            self._deltas.append((delta, entries))

    def _push_token(self, piece: bytes, entry: TokenLogprob | None = None) -> None:
        """One generated token's bytes (and its logprob entry)."""
        assembler = self.assembler
        start = assembler.decoded_length
        delta = assembler.push(piece)
        if entry is None:
            self._push(delta)
            return
        # (after a stop the text is cut before it: an end is never before a start)
        end = None if assembler.pending_bytes and not assembler.stopped else assembler.decoded_length
        if end is not None:
            for held in self._held:
                if held[2] is None:
                    held[2] = max(end, held[1])
            end = max(end, start)
        self._held.append([entry, start, end])
        self._push(delta, self._release(final=False))

    def _release(self, final: bool) -> list[TokenLogprob]:
        """The held entries whose text is now emitted, in order; after a stop
        (or at the end) also those whose text was emitted in part."""
        emitted = self.assembler.emitted_length
        partial = final or self.assembler.stopped
        n = 0
        for entry, start, end in self._held:
            if not ((end is not None and end <= emitted) or (partial and start < emitted)):
                break
            n += 1
        released = [held[0] for held in self._held[:n]]
        del self._held[:n]
        if final:
            self._held.clear()  # text never emitted: a stop string's tokens
        return released

    def _finish(self, reason: str | None, error: BaseException | None = None) -> None:
        if self.done:
            return
        if error is None:
            tail = self.assembler.finish()
            self._push(tail, self._release(final=True))
            self.final_logprobs, self._carry = self._carry, []
            if self.assembler.stopped:
                reason = "stop"
        self.error = error
        self.finish_reason = reason if error is None else None
        self.slot = -1
        self.interrupt = None  # nothing left to interrupt; nor to keep the engine alive for
        self._ended.set()

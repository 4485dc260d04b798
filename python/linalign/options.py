"""SamplingOptions: what one generation samples with, with its defaults and
validation in one place. The Aligner, the server and the CLI all build one;
none of them keeps a list of its own.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import _core

__all__ = ["SamplingOptions", "UINT32_MAX"]

UINT32_MAX = 2**32 - 1
_INT32_MAX = 2**31 - 1


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def _doc(text: str, short: str | None = None) -> dict[str, Any]:
    return {"help": text, "short": short}


@dataclass(frozen=True)
class SamplingOptions:
    """How one aligned generation samples. Every field is validated when the
    object is made (``TypeError``/``ValueError`` naming the field).

    The names are llama-cpp-python's, plus ``ratio`` (the step ``r`` of
    ``l_p + r * (l_p - l_0)``; 0 is plain decoding of the principled stream).
    """

    ratio: float = field(default=2.0, metadata=_doc("alignment step size r (0: plain decoding)", "-r"))
    temperature: float = field(default=0.8, metadata=_doc("0 is greedy", "-t"))
    top_p: float = field(default=0.8, metadata=_doc("plausibility nucleus of the principled stream"))
    top_k: int = field(default=40, metadata=_doc("keep the k most likely tokens (<= 0: off)"))
    min_p: float = field(default=0.0, metadata=_doc("drop tokens below min_p x the top token's probability"))
    repeat_penalty: float = field(default=1.0, metadata=_doc("1 is none"))
    frequency_penalty: float = field(default=0.0, metadata=_doc("0 is none"))
    presence_penalty: float = field(default=0.0, metadata=_doc("0 is none"))
    penalty_last_n: int = field(default=64, metadata=_doc("tokens the penalties look back over (-1: all)"))
    seed: int | None = field(default=None, metadata=_doc("sampler seed (default: random per call)"))
    max_tokens: int | None = field(default=256, metadata=_doc("tokens to generate (<= 0 or None: until the context is full)", "-n"))
    stop: tuple[str, ...] = field(default=(), metadata=_doc("stop strings"))
    grammar: str | None = field(default=None, metadata=_doc("GBNF grammar the output must follow"))

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "ratio", _number("ratio", self.ratio))
        set_(self, "temperature", _number("temperature", self.temperature, low=0.0))
        set_(self, "top_p", _number("top_p", self.top_p, low=0.0, high=1.0, low_open=True))
        set_(self, "top_k", _integer("top_k", self.top_k, low=-1, high=_INT32_MAX))
        set_(self, "min_p", _number("min_p", self.min_p, low=0.0, high=1.0))
        set_(self, "repeat_penalty", _number("repeat_penalty", self.repeat_penalty, low=0.0, low_open=True))
        set_(self, "frequency_penalty", _number("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0))
        set_(self, "presence_penalty", _number("presence_penalty", self.presence_penalty, low=-2.0, high=2.0))
        set_(self, "penalty_last_n", _integer("penalty_last_n", self.penalty_last_n, low=-1, high=_INT32_MAX))
        if self.seed is not None:
            _integer("seed", self.seed, low=0, high=UINT32_MAX - 1)
        if self.max_tokens is not None:
            _integer("max_tokens", self.max_tokens, low=-(2**63), high=2**63)
        set_(self, "stop", _stop_tuple(self.stop))
        if self.grammar is not None:
            grammar = getattr(self.grammar, "_grammar", self.grammar)  # a llama_cpp.LlamaGrammar, or GBNF text
            if not isinstance(grammar, str):
                raise TypeError("grammar must be GBNF text or a llama_cpp.LlamaGrammar")
            set_(self, "grammar", grammar or None)

    @classmethod
    def from_kwargs(cls, base: "SamplingOptions | None" = None, **kwargs: Any) -> "SamplingOptions":
        """``base`` (or the defaults) with the given fields replaced. Unknown
        names are a TypeError."""
        unknown = set(kwargs) - _FIELD_NAMES
        if unknown:
            raise TypeError(f"unknown sampling option(s): {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(_FIELD_NAMES))}")
        base = base or cls()
        return dataclasses.replace(base, **kwargs)

    def replace(self, **changes: Any) -> "SamplingOptions":
        return dataclasses.replace(self, **changes)

    def token_limit(self, n_ctx: int) -> int:
        """How many tokens to generate at most in a context of n_ctx."""
        return n_ctx if self.max_tokens is None or self.max_tokens <= 0 else min(self.max_tokens, n_ctx)

    def to_native(self, default_seed: int | None = None) -> "_core.SamplingParams":
        """The engine's parameters; a missing seed is drawn at random."""
        params = _core.SamplingParams()
        params.ratio = self.ratio
        params.temperature = self.temperature
        params.top_p = self.top_p
        params.top_k = self.top_k
        params.min_p = self.min_p
        params.repeat_penalty = self.repeat_penalty
        params.frequency_penalty = self.frequency_penalty
        params.presence_penalty = self.presence_penalty
        params.penalty_last_n = self.penalty_last_n
        seed = self.seed if self.seed is not None else default_seed
        params.seed = int.from_bytes(os.urandom(4), "little") % UINT32_MAX if seed is None else seed
        if self.grammar:
            params.grammar = self.grammar
        return params

    @staticmethod
    def field_help() -> Mapping[str, tuple[Any, str, str | None]]:
        """name -> (default, help, short flag), for command lines."""
        return {f.name: (f.default, f.metadata["help"], f.metadata["short"]) for f in dataclasses.fields(SamplingOptions)}


def _stop_tuple(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise TypeError("stop must be a string or a list of strings")
    return tuple(stop)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(SamplingOptions))

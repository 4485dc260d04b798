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

__all__ = ["AUTO_RATIO", "DEFAULT_RATIO", "RANGES", "SamplingOptions", "UINT32_MAX", "check_ratio", "format_ratio"]

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


# A ratio that sets itself per token (docs/auto_ratio.md).
AUTO_RATIO = "auto"
# The step size when none is given: "auto" matched the best fixed ratio on
# four task sets of eval follow and repeats less (docs/auto_ratio.md, "Why
# auto is the default").
DEFAULT_RATIO: float | str = AUTO_RATIO


def check_ratio(name: str, value: Any, *, bound: float | None = None) -> float | str:
    """A step size: a finite number (within +-``bound`` when given) or
    ``"auto"``. Any other string is a ValueError, other types a TypeError."""
    if isinstance(value, str):
        if value == AUTO_RATIO:
            return AUTO_RATIO
        raise ValueError(f"{name} must be a number or 'auto', got {value!r}")
    value = _number(name, value)
    if bound is not None and abs(value) > bound:
        raise ValueError(f"{name} must be in [-{bound:g}, {bound:g}], got {value:g}")
    return value


def format_ratio(ratio: float | str) -> str:
    """``2``, ``0.5``, ``auto``: a ratio in headers and method names."""
    return ratio if isinstance(ratio, str) else f"{ratio:g}"


# Every numeric option's range, in one place: name -> (type, low, high,
# whether low itself is out). The native sampler asserts the same ranges as
# invariants (sampling_params::validate in cpp/sampling.cpp;
# tests/test_option_ranges.py holds the two together).
RANGES: dict[str, tuple[type, float | None, float | None, bool]] = {
    "temperature": (float, 0.0, None, False),
    "top_p": (float, 0.0, 1.0, True),
    "top_k": (int, -1, _INT32_MAX, False),
    "min_p": (float, 0.0, 1.0, False),
    "repeat_penalty": (float, 0.0, None, True),
    "frequency_penalty": (float, -2.0, 2.0, False),
    "presence_penalty": (float, -2.0, 2.0, False),
    "penalty_last_n": (int, -1, _INT32_MAX, False),
    "echo_guard_n": (int, 2, _INT32_MAX, False),
}


@dataclass(frozen=True)
class SamplingOptions:
    """How one aligned generation samples. Every field is validated when the
    object is made (``TypeError``/``ValueError`` naming the field).

    The names are llama-cpp-python's, plus:

    ``ratio``
        The step ``r`` of ``l_p + r * (l_p - l_0)``; 0 is plain decoding of
        the principled stream. ``"auto"`` sets it per token from how far
        apart the principled and the plain next-token distributions are,
        after AdaCAD (Wang et al., NAACL 2025), which sets its contrastive
        weight per token to their Jensen-Shannon divergence:
        ``r_t = min(4, 2 + 10 * JSD_t)``, JSD in bits (in [0, 1]) between
        the softmaxes of ``l_p`` and ``l_0`` at temperature 1 over the whole
        vocabulary: the paper's step of 2 where the principle changes
        little, up to 4 where it decides the token (docs/auto_ratio.md).
        It is the default. A response reports the mean ``r_t`` used
        (``linalign.mean_ratio``).
    ``echo_guard``, ``echo_guard_n``
        On by default: where the answer's last ``n - 1`` tokens copy a run
        of the principle's tokens, a candidate that would continue that run
        and that the alignment favours (``r * (log p_p - log p_0) > 0``) is
        taken out before the nucleus is cut. It keeps the aligned
        distribution from rewarding an echo of the instruction; a short
        quote (a keyword, fewer than ``n`` tokens) is untouched
        (docs/composition.md, "Per-token strength and the echo guard").
    """

    ratio: float | str = field(default=DEFAULT_RATIO, metadata=_doc(
        "alignment step size r (0: plain decoding; 'auto': set per token from the streams' divergence)", "-r"))
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
    grammar_triggers: tuple[str, ...] = field(default=(), metadata=_doc(
        "regular expressions (ECMAScript, as std::regex reads them) that start the grammar: until the output "
        "matches one it constrains nothing (llama.cpp's lazy grammar; empty: from the first token)"))
    align_grammar: bool = field(default=True, metadata=_doc(
        "whether the alignment steers the tokens the grammar constrains (false: the principled stream alone "
        "there, as with ratio 0)"))
    echo_guard: bool = field(default=True, metadata=_doc(
        "take out a token that would continue copying the principle, where the alignment favours it"))
    echo_guard_n: int = field(default=4, metadata=_doc(
        "the echo guard acts once the answer has copied n-1 consecutive tokens of the principle (n >= 2)"))

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "ratio", check_ratio("ratio", self.ratio))
        for name, (kind, low, high, low_open) in RANGES.items():
            if kind is float:
                set_(self, name, _number(name, getattr(self, name), low=low, high=high, low_open=low_open))
            else:
                set_(self, name, _integer(name, getattr(self, name), low=low, high=high))
        if self.seed is not None:
            _integer("seed", self.seed, low=0, high=UINT32_MAX - 1)
        if self.max_tokens is not None:
            _integer("max_tokens", self.max_tokens, low=-(2**63), high=2**63)
        set_(self, "stop", _stop_tuple(self.stop))
        if not isinstance(self.echo_guard, bool):
            raise TypeError(f"echo_guard must be true or false, got {type(self.echo_guard).__name__}")
        if self.grammar is not None:
            grammar = getattr(self.grammar, "_grammar", self.grammar)  # a llama_cpp.LlamaGrammar, or GBNF text
            if not isinstance(grammar, str):
                raise TypeError("grammar must be GBNF text or a llama_cpp.LlamaGrammar")
            set_(self, "grammar", grammar or None)
        triggers = self.grammar_triggers
        if isinstance(triggers, str) or not isinstance(triggers, Sequence) or \
                not all(isinstance(t, str) and t for t in triggers):
            raise TypeError("grammar_triggers must be a list of non-empty regular expressions")
        set_(self, "grammar_triggers", tuple(triggers))
        if self.grammar_triggers and not self.grammar:
            raise ValueError("grammar_triggers start a grammar: give grammar too")
        if not isinstance(self.align_grammar, bool):
            raise TypeError(f"align_grammar must be true or false, got {type(self.align_grammar).__name__}")

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
        params.auto_ratio = self.ratio == AUTO_RATIO
        params.ratio = 0.0 if params.auto_ratio else self.ratio
        params.echo_n = self.echo_guard_n if self.echo_guard else 0
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
            params.grammar_triggers = list(self.grammar_triggers)
            params.align_grammar = self.align_grammar
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

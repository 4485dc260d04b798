"""What a request steers by: its principles, their ratios, a negative
principle, and how they compose (docs/composition.md).

* One principle (``principle``, the shorthand, with ``ratio``): stream P has
  it, stream B has not; ``l = l_P + r (l_P - l_B)``.
* A negative principle (``negative_principle``): stream B has that one
  instead of none, so ``(1 + r) l_P - r l_neg`` steers toward one and away
  from the other. With no positive principle, P is the plain prompt: steer
  away only.
* Several weighted principles (``principles=[{"text": ..., "ratio": ...}]``):
  one principled stream each over one base stream (plain, or the negative
  principle), ``l = l_B + sum_i (1 + r_i) (l_i - l_B)``, inside the union of
  the principled streams' top-p nuclei. One principle this way is exactly
  the shorthand.

:func:`compose` turns the keyword forms into a :class:`Composition` and is
the one place they are checked: every caller (Aligner, server, CLI, eval)
goes through it, so the messages name the same fields everywhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from .options import AUTO_RATIO, DEFAULT_RATIO, check_ratio

__all__ = ["MAX_PRINCIPLES", "MAX_PRINCIPLE_RATIO", "POSITIONS", "Composition", "Principle", "compose",
           "parse_principle_flag"]

# The most principled streams one request composes (the native sampler's
# limit): each is one more stream's KV cache and one more row per step.
MAX_PRINCIPLES = 8
# |ratio| of a principle in ``principles``: beyond it the combined logits are
# dominated by the difference of two streams' rounding.
MAX_PRINCIPLE_RATIO = 100.0

# Where a chat principle goes (linalign.chat): "system", appended to the
# system message (one is added when there is none); "end", appended to the
# last message before the assistant's turn (a user message, or a tool's
# result), after the history, so that the streams share the whole
# conversation before it (docs/placement.md).
POSITIONS = ("system", "end")
# A chat principle's place when the request names none: "end", where the
# streams share the conversation (it holds what plain decoding holds) and the
# model follows the principle more often (docs/placement.md, "The default").
# Completions put each principle before the prompt whatever the default.
DEFAULT_POSITION = "end"

_RATIO_RE = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


@dataclass(frozen=True)
class Principle:
    """One principled stream: its text and its ratio ``r`` (a number, or
    ``"auto"``: set per token, see :class:`~linalign.SamplingOptions`)."""

    text: str
    ratio: float | str


@dataclass(frozen=True)
class Composition:
    """The principled streams of a request and its base stream.

    ``principles`` is empty for plain decoding (and for "away only", when
    ``negative`` is set); ``negative`` is the base stream's principle ("":
    the plain prompt).
    """

    principles: tuple[Principle, ...] = ()
    negative: str = ""
    # the ratio of the one principled stream when there is no positive
    # principle (away from the negative one only)
    away_ratio: float | str = DEFAULT_RATIO
    # where chat principles go: one of POSITIONS, or None (not given:
    # DEFAULT_POSITION in a chat, before the prompt in a completion)
    position: str | None = None

    @property
    def chat_position(self) -> str:
        """Where a chat request puts its principles."""
        return self.position or DEFAULT_POSITION

    @property
    def is_plain(self) -> bool:
        return not self.principles and not self.negative

    @property
    def stream_texts(self) -> list[str]:
        """The principle of each principled stream, P first ("": the plain prompt)."""
        return [p.text for p in self.principles] or [""]

    @property
    def ratios(self) -> list[float | str]:
        """The ratio of each principled stream, P first."""
        return [p.ratio for p in self.principles] or [self.away_ratio]

    @property
    def k(self) -> int:
        """Principled streams decoded."""
        return max(len(self.principles), 1)

    def describe(self) -> dict[str, Any]:
        return {"principles": [{"text": p.text, "ratio": p.ratio} for p in self.principles],
                "negative_principle": self.negative, "principle_position": self.chat_position}


def _ratio(name: str, value: Any) -> float | str:
    return check_ratio(name, value, bound=MAX_PRINCIPLE_RATIO)  # a finite number, or "auto"


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is empty or only whitespace; leave the principle out instead")
    return value


def _principle(i: int, item: Any, default_ratio: float | str) -> Principle:
    where = f"principles[{i}]"
    if isinstance(item, Principle):
        return Principle(_text(f"{where}.text", item.text), _ratio(f"{where}.ratio", item.ratio))
    if isinstance(item, str):
        return Principle(_text(f"{where}.text", item), default_ratio)
    if isinstance(item, Mapping):
        unknown = set(item) - {"text", "ratio"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                             "a principle has text and ratio")
        if "text" not in item:
            raise ValueError(f"{where}.text is missing")
        ratio = item.get("ratio")
        return Principle(_text(f"{where}.text", item["text"]),
                         default_ratio if ratio is None else _ratio(f"{where}.ratio", ratio))
    if isinstance(item, Sequence) and len(item) == 2:
        return Principle(_text(f"{where}.text", item[0]), _ratio(f"{where}.ratio", item[1]))
    raise TypeError(f"{where} must be an object with text and ratio, a string, or a (text, ratio) pair; "
                    f"got {type(item).__name__}")


def compose(*, principle: str | None = None, principles: Iterable[Any] | None = None,
            negative_principle: str | None = None, ratio: float | str = DEFAULT_RATIO, ratio_given: bool = False,
            ratio_name: str = "ratio", principle_position: str | None = None) -> Composition:
    """Checks a request's principle fields and composes them.

    ``principle`` with ``ratio`` is the one-principle shorthand ("" is plain
    decoding); ``principles`` lists several, each ``{"text", "ratio"}`` (a
    missing ratio takes ``ratio``); the two forms do not mix, and neither
    does ``principles`` with an explicitly given ratio (``ratio_given``,
    named ``ratio_name`` in messages). Raises ValueError or TypeError naming
    the field.
    """
    if principle is not None and not isinstance(principle, str):
        raise TypeError(f"principle must be a string, got {type(principle).__name__}")
    if negative_principle is not None and not isinstance(negative_principle, str):
        raise TypeError(f"negative_principle must be a string, got {type(negative_principle).__name__}")
    position = principle_position
    if position is not None and position not in POSITIONS:
        raise ValueError(f"principle_position must be one of {', '.join(map(repr, POSITIONS))}, "
                         f"got {principle_position!r}")
    negative = negative_principle or ""
    if negative and not negative.strip():
        raise ValueError("negative_principle is only whitespace; leave it out instead")
    if principles is not None:
        if principle is not None:
            raise ValueError("principle and principles: give one principle (principle, with "
                             f"{ratio_name}) or a list (principles), not both")
        if ratio_given:
            raise ValueError(f"principles and {ratio_name}: with principles, give each its own ratio "
                             f"(principles[i].ratio) instead of {ratio_name}")
        if isinstance(principles, (str, bytes, Mapping)):
            raise TypeError("principles must be a list of {text, ratio} objects")
        items = list(principles)
        if not items:
            raise ValueError(f"principles is empty: give 1 to {MAX_PRINCIPLES} principles, or leave it out")
        if len(items) > MAX_PRINCIPLES:
            raise ValueError(f"principles holds {len(items)} principles; at most {MAX_PRINCIPLES} are composed")
        default = _ratio(ratio_name, ratio)
        composed = tuple(_principle(i, item, default) for i, item in enumerate(items))
    elif principle:
        composed = (Principle(principle, ratio),)
    else:
        composed = ()
    for i, p in enumerate(composed):
        if negative and p.text.strip() == negative.strip():
            where = "principle" if principles is None else f"principles[{i}].text"
            raise ValueError(f"negative_principle equals {where}: steering toward and away from the same text "
                             "is plain decoding; give different texts")
    return Composition(composed, negative, away_ratio=ratio, position=position)


def parse_principle_flag(text: str) -> Principle | str:
    """``TEXT[:RATIO]`` of a repeatable ``--principle``: the text after the
    last colon is a ratio only when it is a plain decimal number or
    ``auto`` ("Be brief: really" stays all text). Returns the text alone
    when no ratio is given."""
    head, colon, tail = text.rpartition(":")
    if colon and (_RATIO_RE.fullmatch(tail) or tail.strip() == AUTO_RATIO):
        value = AUTO_RATIO if tail.strip() == AUTO_RATIO else float(tail)
        return Principle(_text("--principle", head), _ratio("--principle ratio", value))
    return text

"""Every numeric sampling option has one range, SamplingOptions' (RANGES in
linalign/options.py); the native sampler's checks are the same ranges, as
invariants: a value SamplingOptions takes, the engine takes, and one just
outside it both refuse."""
from __future__ import annotations

import pytest

from linalign import SamplingOptions, _core
from linalign.options import RANGES

NATIVE_FIELD = {"echo_guard_n": "echo_n"}
# values just past each bound (floats: beyond the native float's rounding)
EPS = {float: 1e-3, int: 1}
# the native fields are 32-bit: past an upper bound of 2**31 - 1 does not fit them
CASES = [(name, side) for name, (kind, low, high, _) in RANGES.items() for side in ("low", "high")
         if (low if side == "low" else high) is not None and not (kind is int and side == "high")]


def edges(name: str, side: str) -> tuple[float, float]:
    """(the last value inside, the first outside) at that bound."""
    kind, low, high, low_open = RANGES[name]
    eps = EPS[kind]
    if side == "low":
        return (low + eps if low_open else low), (low if low_open else low - eps)
    return high, high + eps


def native_validate(name: str, value: float) -> None:
    params = _core.SamplingParams()
    setattr(params, NATIVE_FIELD.get(name, name), value)
    params.validate()


@pytest.mark.parametrize("name,side", CASES)
def test_native_range_is_the_options_range(name: str, side: str) -> None:
    inside, outside = edges(name, side)
    SamplingOptions(**{name: inside})
    native_validate(name, inside)
    with pytest.raises(ValueError, match=name):
        SamplingOptions(**{name: outside})
    with pytest.raises(ValueError):
        native_validate(name, outside)


def test_every_range_is_checked_on_both_sides_it_has() -> None:
    assert {name for name, _ in CASES} == set(RANGES)

"""Presets: named principles served as model ids.

    linalign serve --preset pirate="Always answer like a pirate.":4 \\
                   --presets presets.toml

``--preset NAME=TEXT[:RATIO]``: the text after the last colon is a ratio only
when it is a plain decimal number or ``auto`` ("Be brief: really" stays all
text; so do "nan" and "inf"). ``--presets FILE``: a JSON or TOML file (TOML needs
Python 3.11, or the ``tomli`` package) mapping each name to a principle, or
to a table::

    [pirate]
    principle = "Always answer like a pirate."
    ratio = 4                # or alignment_ratio; "auto" sets it per token
    temperature = 0.7        # any of PRESET_SAMPLING_FIELDS

    [friendly-french]        # several principles, and one to steer away from
    principles = [{ text = "Answer in French.", ratio = 2 }, { text = "Be warm and friendly.", ratio = 1 }]
    negative_principle = "Be sarcastic."

Names are 1-64 characters of ``[A-Za-z0-9._-]``. A name may be defined once,
across every ``--preset`` and ``--presets``.

Model ids (:meth:`Presets.resolve`): a request whose ``model`` is
``<base>:<name>`` for a preset ``name`` gets that preset's principle, ratio
and sampling defaults, for each of those fields the request does not set
itself. An absent ``model``, the base id, or any id without a colon is the
base model with no preset (so clients that send a placeholder such as "gpt-4"
keep working); any other id with a colon is unknown (404).
"""
from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..options import AUTO_RATIO, DEFAULT_RATIO, SamplingOptions
from ..principles import Composition, Principle, compose

__all__ = ["PRESET_SAMPLING_FIELDS", "Preset", "PresetError", "Presets", "UnknownModelError", "load_presets",
           "parse_preset_flag", "read_presets_file"]

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
# what a preset may set besides its principle and ratio: SamplingOptions'
# fields, less the grammar (response_format) and stop strings, which belong
# to a request
PRESET_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "frequency_penalty",
                          "presence_penalty", "penalty_last_n", "seed", "max_tokens", "echo_guard", "echo_guard_n")
# fields of other open issues, refused at startup until they are supported
_NOT_YET: tuple[str, ...] = ()
_RATIO_RE = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


class PresetError(ValueError):
    """A preset that cannot be served; the message names where it came from."""


class UnknownModelError(LookupError):
    """A request's ``model`` names no model this server serves."""

    def __init__(self, model: str, known: Sequence[str]) -> None:
        super().__init__(f"The model '{model}' does not exist; this server serves: {', '.join(known)}")
        self.model = model


@dataclass(frozen=True)
class Preset:
    name: str
    principle: str | None                        # the one-principle form (None: principles, or only a negative one)
    ratio: float | str | None = None             # a number or "auto"; None: the request's, or the default
    sampling: Mapping[str, Any] = field(default_factory=dict)  # PRESET_SAMPLING_FIELDS it sets
    source: str = ""                             # "--preset" or a file name, for messages
    principles: tuple[Principle, ...] | None = None  # several, each with its ratio
    negative_principle: str | None = None
    principle_position: str | None = None        # None: the request's, or the default ("end")

    def composition(self) -> Composition:
        """What the preset steers by, alone (a request may replace parts)."""
        return compose(principle=self.principle, principles=self.principles,
                       negative_principle=self.negative_principle,
                       ratio=DEFAULT_RATIO if self.ratio is None else self.ratio,
                       principle_position=self.principle_position)

    def defaults(self) -> dict[str, Any]:
        """SamplingOptions fields this preset sets (ratio included)."""
        given = dict(self.sampling)
        if self.ratio is not None:
            given["ratio"] = self.ratio
        return given

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about it."""
        described: dict[str, Any] = {"preset": self.name, "principle": self.principle,
                                     "alignment_ratio": self.ratio, "sampling": dict(self.sampling)}
        if self.principles is not None:
            described["principles"] = [{"text": p.text, "ratio": p.ratio} for p in self.principles]
        if self.negative_principle:
            described["negative_principle"] = self.negative_principle
        if self.principle_position:
            described["principle_position"] = self.principle_position
        return described


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise PresetError(f"{where}: preset name {name!r} must be 1-64 characters of A-Z a-z 0-9 . _ - "
                          "(it becomes part of a model id)")
    return name


def _check_principle(principle: Any, where: str) -> str:
    if not isinstance(principle, str):
        raise PresetError(f"{where}: principle must be a string, got {type(principle).__name__}")
    if not principle.strip():
        raise PresetError(f"{where}: principle is empty")
    return principle


def _validated(preset: Preset, where: str) -> Preset:
    """Checks the values as a request's would be (SamplingOptions)."""
    try:
        SamplingOptions.from_kwargs(**preset.defaults())
    except (TypeError, ValueError) as e:
        head, _, rest = str(e).partition(" ")
        raise PresetError(f"{where}.{head}: {rest}" if head in preset.defaults() else f"{where}: {e}") from None
    return preset


def parse_preset_flag(text: str) -> Preset:
    """``NAME=TEXT[:RATIO]`` of ``--preset`` (RATIO: a number or ``auto``)."""
    name, sep, rest = text.partition("=")
    if not sep:
        raise PresetError(f"--preset {text!r}: expected NAME=PRINCIPLE[:RATIO]")
    name = _check_name(name.strip(), f"--preset {text!r}")
    where = f"--preset {name}"
    principle, ratio = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and (_RATIO_RE.fullmatch(tail) or tail.strip() == AUTO_RATIO):
        principle, ratio = head, AUTO_RATIO if tail.strip() == AUTO_RATIO else float(tail)
    return _validated(Preset(name, _check_principle(principle, where), ratio, {}, "--preset"), where)


def _load_toml(path: Path, text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.9/3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise PresetError(f"{path}: TOML presets need Python 3.11 or the 'tomli' package; "
                              "write the file as JSON instead") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"{path}: not valid TOML: {e}") from None


def _load_json(path: Path, text: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise PresetError(f"{path}: key {key!r} appears twice")
            seen[key] = value
        return seen

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        raise PresetError(f"{path}: not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


def read_presets_file(path: str | Path) -> list[Preset]:
    """The presets of a ``--presets`` file (JSON for ``.json``, TOML for
    ``.toml``; otherwise whichever its first character suggests)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PresetError(f"{path}: cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise PresetError(f"{path}: not UTF-8 text (byte {e.start})") from None
    suffix = path.suffix.lower()
    is_json = suffix == ".json" or (suffix != ".toml" and text.lstrip().startswith("{"))
    data = _load_json(path, text) if is_json else _load_toml(path, text)
    if not isinstance(data, dict):
        raise PresetError(f"{path}: expected an object mapping preset names to principles, "
                          f"got {type(data).__name__}")
    return [_preset_of(path, name, value) for name, value in data.items()]


def _preset_of(path: Path, name: Any, value: Any) -> Preset:
    where = f"{path}: {name}"
    _check_name(name, str(path))
    if isinstance(value, str):
        return Preset(name, _check_principle(value, where), None, {}, str(path))
    if not isinstance(value, dict):
        raise PresetError(f"{where}: expected a principle (string) or an object with 'principle', "
                          f"got {type(value).__name__}")
    for key in value:
        if key in _NOT_YET:
            raise PresetError(f"{where}.{key}: not supported yet (planned; see the open issues)")
        if key not in ("principle", "principles", "negative_principle", "principle_position", "ratio",
                       "alignment_ratio", *PRESET_SAMPLING_FIELDS):
            hint = (" (stop strings and response_format belong to a request)" if key in ("stop", "grammar",
                                                                                        "response_format") else "")
            raise PresetError(f"{where}.{key}: unknown field{hint}; known: principle, principles, "
                              f"negative_principle, principle_position, ratio (or alignment_ratio), "
                              f"{', '.join(PRESET_SAMPLING_FIELDS)}")
    if not any(k in value for k in ("principle", "principles", "negative_principle")):
        raise PresetError(f"{where}: 'principle' is missing (or give 'principles' or 'negative_principle')")
    if "ratio" in value and "alignment_ratio" in value:
        raise PresetError(f"{where}: give ratio or alignment_ratio, not both")
    ratio = value.get("ratio", value.get("alignment_ratio"))
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float, str))
                              or (isinstance(ratio, str) and ratio != AUTO_RATIO)
                              or (not isinstance(ratio, str) and not math.isfinite(ratio))):
        key = "ratio" if "ratio" in value else "alignment_ratio"
        raise PresetError(f"{where}.{key}: must be a finite number or 'auto', got {ratio!r}")
    if ratio is not None and not isinstance(ratio, str):
        ratio = float(ratio)
    sampling = {k: v for k, v in value.items() if k in PRESET_SAMPLING_FIELDS}
    principle = _check_principle(value["principle"], f"{where}.principle") if "principle" in value else None
    negative = value.get("negative_principle")
    try:
        composition = compose(principle=principle, principles=value.get("principles"), negative_principle=negative,
                              ratio=DEFAULT_RATIO if ratio is None else ratio,
                              ratio_given=ratio is not None and "principles" in value,
                              principle_position=value.get("principle_position"))
    except (TypeError, ValueError) as e:
        raise PresetError(f"{where}: {e}") from None
    principles = composition.principles if "principles" in value else None
    preset = Preset(name, principle, ratio, sampling, str(path),
                    principles=principles, negative_principle=composition.negative or None,
                    principle_position=value.get("principle_position"))
    return _validated(preset, where)


def load_presets(flags: Iterable[str] = (), files: Iterable[str | Path] = ()) -> list[Preset]:
    """Every ``--preset`` then every ``--presets`` file; a name defined twice
    is an error naming both places."""
    presets = [parse_preset_flag(f) for f in flags]
    for path in files:
        presets += read_presets_file(path)
    seen: dict[str, Preset] = {}
    for preset in presets:
        if preset.name in seen:
            raise PresetError(f"preset {preset.name!r} is defined twice: in {seen[preset.name].source} and in "
                              f"{preset.source}")
        seen[preset.name] = preset
    return presets


class Presets:
    """The model ids a server answers to: the base id and ``<base>:<name>``
    per preset (see the module's doc for the rule)."""

    def __init__(self, base_id: str, presets: Iterable[Preset] = ()) -> None:
        self.base_id = base_id
        self._by_id = {f"{base_id}:{p.name}": p for p in presets}

    def __iter__(self):
        return iter(self._by_id.items())

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def ids(self) -> list[str]:
        return [self.base_id, *self._by_id]

    def resolve(self, model: str | None) -> Preset | None:
        """The preset a request's ``model`` names (None: the base model);
        raises UnknownModelError."""
        if model is None or model == self.base_id or ":" not in model:
            return None
        preset = self._by_id.get(model)
        if preset is None:
            raise UnknownModelError(model, self.ids)
        return preset

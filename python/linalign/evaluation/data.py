"""Reading the evaluation's input files, with errors that name the file,
the line and the field at fault.

* persona JSONL: ``{"question": str, "answers": {"a".."d": str},
  "personas": {"a".."d": str}}``, answer x written for persona x;
* pairs JSONL: ``{"prompt": str, "principle": str, "chosen": str, "rejected": str}``;
* compare prompts: plain text, one prompt per line; blank lines and lines
  starting with ``#`` are skipped.
"""
from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["LETTERS", "load_persona_items", "load_pairs", "load_prompts"]

LETTERS = ("a", "b", "c", "d")


def _read_text(path: str | os.PathLike[str]) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"data path is a directory, not a file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _jsonl(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    if not rows:
        raise ValueError(f"{path}: no items (the file is empty)")
    return rows


def _text(path: Any, lineno: int, row: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    if key not in row:
        raise ValueError(f"{path}:{lineno}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise ValueError(f"{path}:{lineno}: field {key!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise ValueError(f"{path}:{lineno}: field {key!r} is empty")
    return value


def _letter_map(path: Any, lineno: int, row: dict[str, Any], key: str) -> dict[str, str]:
    value = row.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{path}:{lineno}: field {key!r} must be an object with keys a, b, c, d")
    keys = sorted(value)
    if keys != list(LETTERS):
        raise ValueError(f"{path}:{lineno}: field {key!r} must have exactly the keys a, b, c, d; got {', '.join(keys)}")
    return {letter: _text(path, lineno, value, letter) for letter in LETTERS}


def load_persona_items(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The personal-preference items of a JSONL file."""
    items = []
    for lineno, row in _jsonl(path):
        items.append({
            "question": _text(path, lineno, row, "question"),
            "answers": _letter_map(path, lineno, row, "answers"),
            "personas": _letter_map(path, lineno, row, "personas"),
        })
    return items


def load_pairs(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The preference pairs of a JSONL file."""
    return [{key: _text(path, lineno, row, key) for key in ("prompt", "principle", "chosen", "rejected")}
            for lineno, row in _jsonl(path)]


def load_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompts of a plain-text file, one per line."""
    prompts = [line.strip() for line in _read_text(path).splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line; blank lines and '#' comments are skipped)")
    return prompts

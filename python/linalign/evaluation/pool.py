"""``linalign eval pool``: several ``eval follow`` runs (their JSON files)
read as one larger evaluation. Each method's answers are pooled by
(task, instruction): an answer recorded in two files (the plain and
prompt-only methods, which every run repeats) counts once, the first
file's; where the files' answers differ, the report counts them
(``conflicts``), because then a method name means two things. Reported per
method: strict adherence (echoes count as failures) per file and pooled,
with a 95% Wilson interval, and the pooled rep-4.

48 answers per method put a +-0.14 interval around an adherence; pooling
runs over other task sets (``eval follow --tasks``) is how a difference of
a few points becomes visible (docs/auto_ratio.md).
"""
from __future__ import annotations

import json
from typing import Any, Sequence

from .fluency import fluency
from .stats import wilson_interval

__all__ = ["load_follow_samples", "pool_follow"]


def load_follow_samples(path: str) -> list[dict[str, Any]]:
    """The per-answer records of an ``eval follow --json`` file."""
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    if not isinstance(result, dict) or result.get("protocol") != "follow" or "samples" not in result:
        raise ValueError(f"{path}: not the JSON of linalign eval follow (no follow protocol and samples)")
    return result["samples"]


def pool_follow(paths: Sequence[str], instructions: Sequence[str] | None = None) -> dict[str, Any]:
    """Per method: ``strict`` (followed, not an echo) and ``n`` per file and
    pooled, the pooled Wilson ``interval`` and ``rep4``. ``instructions``
    keeps only those (None: all)."""
    if not paths:
        raise ValueError("give at least one eval follow JSON file")
    keep = set(instructions) if instructions else None
    seen: dict[tuple[str, str, str], str] = {}
    conflicts = 0
    per_file: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in paths:
        for s in load_follow_samples(path):
            key = (s["method"], s["task"], s["instruction"])
            if keep is not None and s["instruction"] not in keep:
                continue
            if key in seen:
                conflicts += seen[key] != s["answer"]
                continue
            seen[key] = s["answer"]
            per_file.setdefault(s["method"], {}).setdefault(path, []).append(s)
    if not per_file:
        which = f" of instruction(s) {', '.join(sorted(keep))}" if keep else ""
        raise ValueError(f"no answers{which} in the files")
    methods = {}
    for method, files in per_file.items():
        counts = {p: {"strict": sum(bool(s["followed"]) and not s["echo"] for s in ss), "n": len(ss)}
                  for p, ss in files.items()}
        strict, n = sum(c["strict"] for c in counts.values()), sum(c["n"] for c in counts.values())
        methods[method] = {
            "files": counts, "strict": strict, "n": n, "strict_adherence": strict / n,
            "interval": wilson_interval(strict, n),
            "rep4": fluency([s["answer"] for ss in files.values() for s in ss])["rep4"],
        }
    return {"files": list(paths), "instructions": sorted(keep) if keep else None, "conflicts": conflicts,
            "methods": methods}

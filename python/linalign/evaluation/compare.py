"""Side-by-side generations for a list of prompts: plain (no principle),
prompt-only (the principle in the system message, ratio 0) and linear
alignment at each ratio; as a terminal table and a self-contained HTML page.

Several principles (and a negative one) compose: the aligned columns then
steer by all of them at once (each at the column's ratio unless it carries
its own), and one column per principle shows it alone, so that the
composition can be read against its parts. With several placements
(``placements=("system", "end")``), the prompt-only and aligned columns come
once per placement, named ``"la@2.0, end"``, so that one table shows what
the principle's place changes. Each column's fluency (rep-4,
the share of repeated word 4-grams; :mod:`.fluency`) closes the table.
"""
from __future__ import annotations

import html
import shutil
import textwrap
from typing import Any, Callable, Sequence

from ..options import AUTO_RATIO, format_ratio
from ..principles import POSITIONS, Principle, compose
from .chat_streams import chat_messages
from .fluency import fluency
from .persona import method_name

__all__ = ["generate_comparison", "format_comparison", "comparison_html"]


def generate_comparison(
    aligner: Any,
    prompts: Sequence[str],
    principle: str | Sequence[str | Principle],
    *,
    negative_principle: str = "",
    ratios: Sequence[float | str] = (1.0, 2.0),
    system: str = "",
    max_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 0.8,
    seed: int = 0,
    placements: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Generates every column for every prompt; returns the JSON-shaped result
    (``columns`` in order, ``rows`` of ``{"prompt", "outputs": {column: text}}``).
    ``placements``: the principle positions to show (None: the default one,
    and column names without a placement)."""
    given = [principle] if isinstance(principle, str) else list(principle)
    if not given or any(not (p.text if isinstance(p, Principle) else p).strip() for p in given):
        raise ValueError("compare needs a non-empty --principle")
    if not prompts:
        raise ValueError("no prompts to compare")
    ratios = [r if r == AUTO_RATIO else float(r) for r in ratios]
    texts = [p.text if isinstance(p, Principle) else p for p in given]

    def at(r: float | str) -> list[Principle]:
        return [p if isinstance(p, Principle) else Principle(p, r) for p in given]

    if placements is not None:
        placements = list(dict.fromkeys(placements))
        if not placements or any(p not in POSITIONS for p in placements):
            raise ValueError(f"placements: each of {', '.join(POSITIONS)}, got {placements!r}")
    composed = len(given) > 1 or bool(negative_principle) or isinstance(given[0], Principle)
    columns = {"plain": compose()}
    for position in placements or [None]:
        at_ = "" if position is None else f", {position}"
        columns[f"prompt-only{at_}"] = compose(principle="\n".join(texts), ratio=0.0, principle_position=position)
        for r in ratios:
            name = method_name(r) if not composed else f"composed {method_name(r)}"
            columns[name + at_] = (compose(principles=at(r), negative_principle=negative_principle or None,
                                           principle_position=position) if composed
                                   else compose(principle=texts[0], ratio=r, principle_position=position))
        if len(given) > 1:
            for i, p in enumerate(at(ratios[0] if ratios else 2.0), start=1):
                columns[f"only {i} r={format_ratio(p.ratio)}{at_}"] = compose(principles=[p], principle_position=position)
    rows = []
    for prompt in prompts:
        outputs = {}
        for column, composition in columns.items():
            out = aligner.create_chat_completion(
                chat_messages(prompt, system), composition=composition, temperature=temperature,
                top_p=top_p, max_tokens=max_tokens, seed=seed)
            outputs[column] = out["choices"][0]["message"]["content"].strip()
            if progress is not None:
                progress(1)
        rows.append({"prompt": prompt, "outputs": outputs})
    return {"protocol": "compare", "principle": "\n".join(texts), "negative_principle": negative_principle,
            "methods": {c: comp.describe() for c, comp in columns.items()}, "system": system, "ratios": ratios,
            "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed,
            "placements": placements,
            "columns": list(columns), "rows": rows,
            "fluency": {c: fluency([row["outputs"][c] for row in rows]) for c in columns}}


def format_comparison(result: dict[str, Any], *, width: int | None = None) -> str:
    """The generations of each prompt in columns wrapped to the terminal."""
    width = width or shutil.get_terminal_size((120, 24)).columns
    columns = result["columns"]
    col_width = max((width - 3 * (len(columns) - 1)) // len(columns), 12)
    blocks = [f"principle: {result['principle']}"]
    if result.get("negative_principle"):
        blocks.append(f"negative principle: {result['negative_principle']}")
    for i, row in enumerate(result["rows"], start=1):
        wrapped = [textwrap.wrap(row["outputs"][c], col_width) or ["(empty)"] for c in columns]
        height = max(len(w) for w in wrapped)
        lines = [" | ".join(c[:col_width].ljust(col_width) for c in columns).rstrip(),
                 "-+-".join("-" * col_width for _ in columns)]
        for k in range(height):
            lines.append(" | ".join((w[k] if k < len(w) else "").ljust(col_width) for w in wrapped).rstrip())
        blocks.append(f"\n[{i}] {row['prompt']}\n" + "\n".join(lines))
    if result.get("fluency"):
        blocks.append("\nrep-4 (share of repeated word 4-grams per answer, lower is more fluent): " +
                      ", ".join(f"{c} {result['fluency'][c]['rep4']:.3f}" for c in columns))
    return "\n".join(blocks)


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 0.5em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td { white-space: pre-wrap; font-size: 0.9em; }
.prompt { font-weight: bold; background: #fafafa; }
.meta { color: #666; font-size: 0.9em; }
"""


def comparison_html(result: dict[str, Any]) -> str:
    """A self-contained page (inline CSS, no scripts); all text escaped."""
    esc = html.escape
    columns = result["columns"]
    meta = (f"temperature {result['temperature']}, top_p {result['top_p']}, max_tokens {result['max_tokens']}, "
            f"seed {result['seed']}; system message: {result['system'] or '(none)'}")
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>linalign: side-by-side generations</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Side-by-side generations</h1>",
             f"<p><b>Principle:</b> {esc(result['principle'])}</p>", f'<p class="meta">{esc(meta)}</p>',
             "<table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead><tbody>"]
    for row in result["rows"]:
        parts.append(f'<tr><td class="prompt" colspan="{len(columns)}">{esc(row["prompt"])}</td></tr>')
        parts.append("<tr>" + "".join(f"<td>{esc(row['outputs'][c])}</td>" for c in columns) + "</tr>")
    if result.get("fluency"):
        parts.append('<tr><td class="meta" colspan="%d">rep-4: share of repeated word 4-grams per answer '
                     "(lower is more fluent)</td></tr>" % len(columns))
        parts.append("<tr>" + "".join(f"<td>{result['fluency'][c]['rep4']:.3f}</td>" for c in columns) + "</tr>")
    parts.append("</tbody></table></body></html>")
    return "\n".join(parts) + "\n"

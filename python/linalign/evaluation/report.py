"""What the evaluation shows: a progress bar on stderr, plain-text tables,
the JSON file and the sensitivity plot (accuracy against ratio)."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Sequence, TextIO

__all__ = ["ProgressBar", "format_table", "write_json", "plot_sensitivity"]


class ProgressBar:
    """``label [#####.....] 12/80 3.1s``, redrawn in place on a terminal, at
    most every 0.1 s; on a pipe or log file, one line per tenth of the work."""

    def __init__(self, total: int, label: str, *, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())

    def _line(self) -> str:
        filled = int(self._width * self.done / self.total)
        elapsed = time.monotonic() - self._start
        return f"{self.label} [{'#' * filled}{'.' * (self._width - filled)}] {self.done}/{self.total} {elapsed:.1f}s"

    def update(self, n: int = 1) -> None:
        before = self.done
        self.done = min(self.done + n, self.total)
        now = time.monotonic()
        if self._tty and (now - self._last_draw >= 0.1 or self.done == self.total):
            self._last_draw = now
            self._stream.write("\r" + self._line())
            self._stream.flush()
        elif not self._tty and self.done < self.total and 10 * self.done // self.total > 10 * before // self.total:
            self._stream.write(self._line() + "\n")
            self._stream.flush()

    def close(self) -> None:
        self._stream.write(("\r" if self._tty else "") + self._line() + "\n")
        self._stream.flush()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the first column left-aligned,
    the others right-aligned (they hold numbers)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def plot_sensitivity(path: str | os.PathLike[str], ratios: Sequence[float], values: Sequence[float], *,
                     intervals: Sequence[tuple[float, float]] | None = None,
                     baselines: dict[str, float] | None = None, ylabel: str = "accuracy",
                     title: str = "", chance: float | None = None) -> None:
    """The paper's sensitivity figure: a metric against ``ratio`` for linear
    alignment, with horizontal lines for the methods that have no ratio."""
    import matplotlib
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if intervals is not None:
        lower = [v - lo for v, (lo, _) in zip(values, intervals)]
        upper = [hi - v for v, (_, hi) in zip(values, intervals)]
        ax.errorbar(ratios, values, yerr=[lower, upper], marker="o", capsize=3, label="linear alignment (95% CI)")
    else:
        ax.plot(ratios, values, marker="o", label="linear alignment")
    styles = ["--", "-.", ":"]
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(value, linestyle=styles[i % len(styles)], color=f"C{i + 1}", label=name)
    if chance is not None:
        ax.axhline(chance, linestyle=":", color="grey", linewidth=1, label="chance")
    ax.set_ylim(0.0, 1.0)  # accuracies: the whole range, so small differences look as small as they are
    ax.set_xlabel("ratio (step size r)")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

"""``linalign eval follow``: how often an answer follows a principle that a
program can check: IFEval's verifiable instructions (the ``if-verifiable``
package ships IFEval's instruction classes; each gives a principle text by
``build_description`` and a checker by ``check_following``).

Every task (a plain user request, ``python/linalign/data/follow_tasks.txt``) is answered
under every instruction by every method, greedy:

    plain           no principle
    prompt/<pos>    the instruction as a principle, ratio 0 (in the prompt only)
    la@r/<pos>      linear alignment at ratio r (a number, or ``auto``: set
                    per token, docs/auto_ratio.md)

for each placement ``<pos>`` of the principle (``system``: the system
message; ``end``: after the history, appended to the user turn). Reported:
adherence (the share of answers whose checker passes) per method, per
method and instruction, with 95% Wilson intervals; a JSON and a PNG.

A small model sometimes answers by repeating the instruction ("At the end
of your response, please explicitly add a postscript starting with P.S."),
which some checkers pass. Such answers are counted as *echoes* (six
consecutive words of the principle in the answer), and adherence is also
reported without them (``strict``). The echo guard (SamplingOptions.echo_guard,
on unless ``echo_guard=False``) keeps the alignment from rewarding such
copies; the JSON records whether it was on, and per method the mean step
size applied (``mean_ratio``) and the answers' fluency (rep-4, the share of
repeated word 4-grams, and distinct-2; :mod:`.fluency`).

Only instructions whose checkers need no downloaded data are offered
(no NLTK sentence models: this runs offline).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

from ..options import AUTO_RATIO
from .fluency import fluency
from .stats import wilson_interval

__all__ = ["INSTRUCTIONS", "echoes", "evaluate_follow", "follow_methods", "load_instructions"]

_WORD = re.compile(r"[a-z0-9']+")


def echoes(answer: str, principle: str, window: int = 6) -> bool:
    """Whether ``answer`` repeats ``window`` consecutive words of ``principle``."""
    words = _WORD.findall(principle.lower())
    text = " ".join(_WORD.findall(answer.lower()))
    if len(words) < window:
        return " ".join(words) in text if words else False
    return any(" ".join(words[i:i + window]) in text for i in range(len(words) - window + 1))

# name -> (IFEval instruction class, build_description arguments)
INSTRUCTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "lowercase": ("LowercaseLettersEnglishChecker", {}),
    "no_comma": ("CommaChecker", {}),
    "postscript": ("PostscriptChecker", {"postscript_marker": "P.S."}),
    "keyword": ("KeywordChecker", {"keywords": ["sunshine"]}),
    "quotation": ("QuotationChecker", {}),
    "end_phrase": ("EndChecker", {"end_phrase": "Any other questions?"}),
    "title": ("TitleChecker", {}),
    "french": ("ResponseLanguageChecker", {"language": "fr"}),
}


def load_instructions(names: Sequence[str]) -> list[tuple[str, str, Callable[[str], bool]]]:
    """(name, principle text, checker) of each named instruction."""
    unknown = [n for n in names if n not in INSTRUCTIONS]
    if unknown:
        raise ValueError(f"unknown instruction(s) {', '.join(unknown)}; known: {', '.join(INSTRUCTIONS)}")
    try:
        import langdetect
        from if_verifiable.ifeval import instructions as ifeval
    except ImportError as e:
        raise ImportError("linalign eval follow needs the if-verifiable package: pip install \".[eval]\"") from e
    langdetect.DetectorFactory.seed = 0  # the language checks are random otherwise
    out = []
    for name in names:
        cls, kwargs = INSTRUCTIONS[name]
        checker = getattr(ifeval, cls)(name)
        text = checker.build_description(**kwargs)
        out.append((name, text, checker.check_following))
    return out


def follow_methods(ratios: Sequence[float | str],
                   positions: Sequence[str]) -> dict[str, tuple[float | str | None, str]]:
    """method name -> (ratio, or None for no principle; placement). A ratio
    is a number or ``"auto"`` (``la@auto/<pos>``)."""
    methods: dict[str, tuple[float | str | None, str]] = {"plain": (None, "system")}
    for position in positions:
        methods[f"prompt/{position}"] = (0.0, position)
        for r in ratios:
            ratio = AUTO_RATIO if r == AUTO_RATIO else float(r)
            methods[f"la@{ratio if ratio == AUTO_RATIO else repr(ratio)}/{position}"] = (ratio, position)
    return methods


def evaluate_follow(aligner: Any, tasks: Sequence[str], instruction_names: Sequence[str], *,
                    ratios: Sequence[float | str] = (1.0, 2.0), positions: Sequence[str] = ("system", "end"),
                    max_tokens: int = 96, top_p: float = 0.8, echo_guard: bool = True,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Generates and checks every (method, instruction, task); returns the
    JSON-shaped result."""
    if not tasks:
        raise ValueError("no tasks")
    instructions = load_instructions(instruction_names)
    methods = follow_methods(ratios, positions)
    passed = {m: {name: 0 for name, _, _ in instructions} for m in methods}
    strict = {m: {name: 0 for name, _, _ in instructions} for m in methods}
    echoed = {m: 0 for m in methods}
    answers: dict[str, list[str]] = {m: [] for m in methods}
    ratio_used: dict[str, list[float]] = {m: [] for m in methods}
    samples: list[dict[str, Any]] = []
    for name, text, check in instructions:
        for task in tasks:
            messages = [{"role": "user", "content": task}]
            for method, (ratio, position) in methods.items():
                kw: dict[str, Any] = dict(temperature=0.0, top_p=top_p, max_tokens=max_tokens, seed=0,
                                          echo_guard=echo_guard)
                if ratio is not None:
                    kw.update(principle=text, ratio=ratio, principle_position=position)
                out = aligner.create_chat_completion(messages, **kw)
                answer = out["choices"][0]["message"]["content"]
                ok = bool(check(answer))
                echo = echoes(answer, text)
                passed[method][name] += ok
                strict[method][name] += ok and not echo
                echoed[method] += echo
                answers[method].append(answer)
                mean_ratio = out["linalign"]["mean_ratio"]
                ratio_used[method].append(mean_ratio)
                samples.append({"method": method, "instruction": name, "task": task, "followed": ok,
                                "echo": echo, "mean_ratio": mean_ratio, "answer": answer})
                if progress is not None:
                    progress(1)
    n_per = len(tasks)
    n = n_per * len(instructions)
    total = {m: sum(v.values()) for m, v in passed.items()}
    total_strict = {m: sum(v.values()) for m, v in strict.items()}
    return {
        "protocol": "follow", "ratios": [r if r == AUTO_RATIO else float(r) for r in ratios],
        "positions": list(positions), "echo_guard": echo_guard,
        "max_tokens": max_tokens, "top_p": top_p, "n_tasks": len(tasks),
        "instructions": {name: text for name, text, _ in instructions},
        "methods": list(methods), "n": n,
        "adherence": {m: total[m] / n for m in methods},
        "followed": total,
        "interval": {m: list(wilson_interval(total[m], n)) for m in methods},
        "echoed": echoed,
        "strict_followed": total_strict,
        "strict_adherence": {m: total_strict[m] / n for m in methods},
        "strict_interval": {m: list(wilson_interval(total_strict[m], n)) for m in methods},
        "mean_ratio": {m: sum(v) / len(v) for m, v in ratio_used.items()},
        "fluency": {m: fluency(answers[m]) for m in methods},
        "per_instruction": {m: {name: {"followed": c, "n": n_per, "adherence": c / n_per,
                                       "interval": list(wilson_interval(c, n_per))}
                                for name, c in passed[m].items()} for m in methods},
        "samples": samples,
    }


def plot_follow(path: str, result: dict[str, Any], title: str) -> None:
    """Adherence per method with 95% intervals, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["methods"]
    x = list(range(len(methods)))
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(methods)), 4.2))
    for key, label, offset, color in (("adherence", "checker passes", -0.2, "#1f77b4"),
                                      ("strict_adherence", "passes, not an echo of the principle", 0.2, "#ff7f0e")):
        interval = result["interval" if key == "adherence" else "strict_interval"]
        values = [result[key][m] for m in methods]
        lo = [v - interval[m][0] for v, m in zip(values, methods)]
        hi = [interval[m][1] - v for v, m in zip(values, methods)]
        ax.bar([i + offset for i in x], values, width=0.4, yerr=[lo, hi], color=color, capsize=3, label=label)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylabel("adherence (share of answers that follow)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

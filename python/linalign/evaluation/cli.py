"""``linalign eval``: the paper's evaluation protocols on a local model.

    linalign eval persona --data FILE.jsonl [--ratios 0,0.5,1,2,4] [--json OUT] [--plot OUT.png]
    linalign eval pairs   --data FILE.jsonl [--ratios ...] [--json OUT] [--plot OUT.png]
    linalign eval compare --prompts FILE --principle TEXT [--ratios 1,2,auto] [--placements system,end] [--html OUT.html]
    linalign eval follow [--ratios 1,2,auto] [--positions system,end] [--no-echo-guard] [--json OUT]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..options import AUTO_RATIO
from ..principles import DEFAULT_POSITION, POSITIONS, parse_principle_flag
from .compare import comparison_html, format_comparison, generate_comparison
from .follow import INSTRUCTIONS, evaluate_follow, follow_methods, load_instructions, plot_follow
from .data import load_pairs, load_persona_items, load_prompts
from .pairs import DEFAULT_FLOOR, evaluate_pairs
from .persona import DEFAULT_PRINCIPLE_TEMPLATE, DEFAULT_SYSTEM, evaluate_persona, method_name
from .pool import pool_follow
from .report import ProgressBar, format_table, plot_sensitivity, write_json

__all__ = ["main"]

FOLLOW_DEFAULT = ("lowercase", "no_comma", "postscript", "keyword", "quotation", "end_phrase")
DEFAULT_TASKS = Path(__file__).resolve().parents[1] / "data" / "follow_tasks.txt"  # shipped in the package


def _ratios(text: str, *, auto: bool = False) -> list[float | str]:
    values: list[float | str] = []
    for part in text.split(","):
        if auto and part.strip() == AUTO_RATIO:
            if AUTO_RATIO not in values:
                values.append(AUTO_RATIO)
            continue
        try:
            value = float(part)
        except ValueError:
            what = "numbers or auto" if auto else "numbers"
            raise argparse.ArgumentTypeError(f"not a comma-separated list of {what}: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"ratios must be finite, got {part!r}")
        if value not in values:
            values.append(value)
    return values


def _generation_ratios(text: str) -> list[float | str]:
    """--ratios of the protocols that generate, where ``auto`` may be one."""
    return _ratios(text, auto=True)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _top_p(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"top-p must be in (0, 1], got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linalign eval", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="protocol", required=True, metavar="{persona,pairs,compare,follow,pool}")

    def common(p: argparse.ArgumentParser, ratios: str) -> None:
        p.add_argument("--model", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
        p.add_argument("--ratios", type=_generation_ratios, default=_generation_ratios(ratios),
                       help=f"step sizes r (default {ratios}; auto: set per token)")
        p.add_argument("--n-ctx", type=_positive_int, default=2048, help="context window per stream (default 2048)")
        p.add_argument("--limit", type=_positive_int, default=None, help="use only the first N items")
        p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the results as JSON")

    persona = sub.add_parser("persona", help="personal-preference accuracy (four answers, one per persona)")
    persona.add_argument("--data", required=True, help="JSONL of {question, answers{a-d}, personas{a-d}}")
    common(persona, "0,0.5,1,2,4")
    persona.add_argument("--principle-template", default=DEFAULT_PRINCIPLE_TEMPLATE,
                         help="principle wording; {persona} is replaced (default: the paper's)")
    persona.add_argument("--system", default=DEFAULT_SYSTEM,
                         help=f"system message of both streams ('' for none; default {DEFAULT_SYSTEM!r})")
    persona.add_argument("--generate", action="store_true",
                         help="also score the first letter of a greedy aligned generation")
    persona.add_argument("--top-p", type=_top_p, default=0.8, help="nucleus of --generate's decoding (default 0.8)")
    persona.add_argument("--plot", default=None, metavar="OUT.png", help="accuracy against ratio")
    persona.add_argument("--principle-position", choices=POSITIONS, default=DEFAULT_POSITION,
                         help=f"where the principle goes (default {DEFAULT_POSITION}; end: after the question, "
                              "system: in the system message)")

    pairs = sub.add_parser("pairs", help="how often the aligned policy prefers the chosen response")
    pairs.add_argument("--data", required=True, help="JSONL of {prompt, principle, chosen, rejected}")
    common(pairs, "0,0.5,1,2,4")
    pairs.add_argument("--system", default=DEFAULT_SYSTEM,
                       help=f"system message of both streams ('' for none; default {DEFAULT_SYSTEM!r})")
    pairs.add_argument("--top-p", type=_top_p, default=0.8, help="nucleus of every policy (default 0.8; 1 = no mask)")
    pairs.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                       help=f"log-prob charged to a token outside the nucleus (default {DEFAULT_FLOOR})")
    pairs.add_argument("--plot", default=None, metavar="OUT.png", help="accuracy against ratio")
    pairs.add_argument("--principle-position", choices=POSITIONS, default=DEFAULT_POSITION,
                       help=f"where the principle goes (default {DEFAULT_POSITION}; end: after the prompt, "
                            "system: in the system message)")

    compare = sub.add_parser("compare", help="side-by-side generations")
    compare.add_argument("--prompts", required=True, help="text file, one prompt per line ('#' lines skipped)")
    compare.add_argument("--principle", required=True, action="append", metavar="TEXT[:RATIO]",
                         help="the principle of the prompt-only and aligned columns; repeat it to compose several "
                              "(each may carry its own ratio after a last colon)")
    compare.add_argument("--negative-principle", default="", metavar="TEXT",
                         help="a principle the aligned columns steer away from")
    common(compare, "1,2")
    compare.add_argument("--system", default="", help="system message of both streams (default none)")
    compare.add_argument("--max-tokens", type=_positive_int, default=128, help="tokens per generation (default 128)")
    compare.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    compare.add_argument("--top-p", type=_top_p, default=0.8, help="nucleus (default 0.8)")
    compare.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    compare.add_argument("--html", default=None, metavar="OUT.html", help="write a self-contained HTML page")
    compare.add_argument("--placements", default=None, metavar="system,end",
                         help="the principle's placements to show side by side, each with its prompt-only and "
                              "aligned columns (default: the default placement only)")

    follow = sub.add_parser("follow", help="adherence to checkable principles (IFEval's verifiable instructions)")
    follow.add_argument("--tasks", default=None, help="text file of user requests, one per line "
                                                      "(default: data/follow_tasks.txt)")
    follow.add_argument("--instructions", default=",".join(FOLLOW_DEFAULT),
                        help=f"comma-separated, of {','.join(INSTRUCTIONS)} (default {','.join(FOLLOW_DEFAULT)})")
    common(follow, "1,2")
    follow.add_argument("--positions", default="system,end", help="placements of the principle (default system,end)")
    follow.add_argument("--max-tokens", type=_positive_int, default=96, help="tokens per answer (default 96)")
    follow.add_argument("--top-p", type=_top_p, default=0.8, help="nucleus (default 0.8)")
    follow.add_argument("--plot", default=None, metavar="OUT.png", help="adherence per method")
    follow.add_argument("--echo-guard", action=argparse.BooleanOptionalAction, default=True,
                        help="the echo guard of the aligned methods (default on)")

    pool = sub.add_parser("pool", help="several eval follow runs (their --json files) read as one evaluation")
    pool.add_argument("files", nargs="+", metavar="FOLLOW.json", help="eval follow --json outputs")
    pool.add_argument("--instructions", default=None,
                      help="comma-separated: pool only these instructions (default: all in the files)")
    pool.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the results as JSON")
    return parser


def _check_output(path: str | None, flag: str) -> None:
    """Fails before the model runs when an output file cannot be written."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{flag}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{flag}: {path} is a directory")


def _fmt_interval(lo: float, hi: float) -> str:
    return f"[{lo:.3f}, {hi:.3f}]"


def _accuracy_rows(result: dict[str, Any], extra: dict[str, dict[str, Any]] | None = None) -> list[list[str]]:
    rows = []
    for m in result["methods"]:
        row = [m, f"{result['correct'][m]}/{result['n']}", f"{result['accuracy'][m]:.3f}",
               _fmt_interval(*result["interval"][m])]
        for values in (extra or {}).values():
            row.append(values[m])
        rows.append(row)
    return rows


def _print_persona(result: dict[str, Any]) -> None:
    print(f"persona protocol: {result['n_items']} items x 4 personas = {result['n']} questions (chance 0.25)")
    picks = {m: " ".join(f"{k}:{v}" for k, v in result["choices"][m].items()) for m in result["methods"]}
    extra, headers = {"choices": picks}, ["method", "correct", "accuracy", "95% interval", "choices"]
    if result.get("fluency"):  # --generate: how much the generations repeat themselves
        extra["rep-4"] = {m: f"{result['fluency'][m]['rep4']:.3f}" if m in result["fluency"] else ""
                          for m in result["methods"]}
        headers.append("rep-4")
    print(format_table(headers, _accuracy_rows(result, extra)))


def _print_pairs(result: dict[str, Any]) -> None:
    print(f"pairs protocol: {result['n']} pairs, {result['n_response_tokens']} response tokens, "
          f"top_p {result['top_p']}, floor {result['floor']}")
    extra = {"margin": {m: f"{v:+.2f}" for m, v in result["mean_margin"].items()},
             "outside": {m: f"{v:.1%}" for m, v in result["out_of_nucleus"].items()}}
    print(format_table(["method", "chosen>rejected", "accuracy", "95% interval", "mean margin (nats)",
                        "tokens outside nucleus"], _accuracy_rows(result, extra)))


def _print_follow(result: dict[str, Any]) -> None:
    names = list(result["instructions"])
    print(f"follow protocol: {result['n_tasks']} tasks x {len(names)} instructions = {result['n']} answers per "
          f"method, greedy, {result['max_tokens']} tokens")
    rows = []
    for m in result["methods"]:
        per = result["per_instruction"][m]
        rows.append([m, f"{result['followed'][m]}/{result['n']}", f"{result['adherence'][m]:.3f}",
                     _fmt_interval(*result["interval"][m]), f"{result['echoed'][m]}",
                     f"{result['strict_adherence'][m]:.3f}", _fmt_interval(*result["strict_interval"][m]),
                     f"{result['mean_ratio'][m]:.2f}", f"{result['fluency'][m]['rep4']:.3f}"]
                    + [f"{per[n]['followed']}/{per[n]['n']}" for n in names])
    print(f"echo guard {'on' if result['echo_guard'] else 'off'}; mean r: the step size applied, per token; "
          "rep-4: share of repeated word 4-grams per answer (lower is more fluent)")
    print(format_table(["method", "followed", "adherence", "95% interval", "echoes", "strict", "95% interval",
                        "mean r", "rep-4", *names], rows))


def _plot(path: str, result: dict[str, Any], title: str, chance: float | None) -> None:
    # the fixed ratios are the curve; "auto" has no place on its axis: a line of its own
    ratios = [r for r in result["ratios"] if r != AUTO_RATIO]
    keys = [method_name(r) for r in ratios]
    baselines = {"none (no principle)": result["accuracy"]["none"],
                 "prompt (principle only in the prompt)": result["accuracy"]["prompt"]}
    if AUTO_RATIO in result["ratios"]:
        baselines["auto (a step per token)"] = result["accuracy"][method_name(AUTO_RATIO)]
    plot_sensitivity(path, ratios, [result["accuracy"][k] for k in keys],
                     intervals=[tuple(result["interval"][k]) for k in keys],
                     baselines=baselines, title=title, chance=chance)


def _print_pool(result: dict[str, Any]) -> None:
    files = result["files"]
    print(f"pooled eval follow runs: {len(files)} files"
          + (f", instructions {','.join(result['instructions'])}" if result["instructions"] else ""))
    for i, path in enumerate(files, 1):
        print(f"  [{i}] {path}")
    if result["conflicts"]:
        print(f"  {result['conflicts']} answers recorded in several files differ there: the first file's counts")
    rows = []
    for method, m in result["methods"].items():
        cells = [f"{m['files'][p]['strict']}/{m['files'][p]['n']}" if p in m["files"] else "-" for p in files]
        rows.append([method, *cells, f"{m['strict']}/{m['n']}", f"{m['strict_adherence']:.3f}",
                     _fmt_interval(*m["interval"]), f"{m['rep4']:.3f}"])
    print(format_table(["method", *[f"[{i}]" for i in range(1, len(files) + 1)], "strict", "pooled",
                        "95% interval", "rep-4"], rows))


def _run_pool(args: argparse.Namespace) -> int:
    _check_output(args.json_out, "--json")
    names = [n.strip() for n in args.instructions.split(",") if n.strip()] if args.instructions else None
    result = pool_follow(args.files, names)
    _print_pool(result)
    if args.json_out:
        write_json(args.json_out, result)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.protocol == "pool":
        return _run_pool(args)
    for path, flag in ((args.json_out, "--json"), (getattr(args, "plot", None), "--plot"),
                       (getattr(args, "html", None), "--html")):
        _check_output(path, flag)
    if args.protocol == "persona":
        if "{persona}" not in args.principle_template:
            raise ValueError("--principle-template must contain {persona}, where the persona's description goes")
        data = load_persona_items(args.data)
    elif args.protocol == "pairs":
        data = load_pairs(args.data)
    elif args.protocol == "follow":
        data = load_prompts(args.tasks or str(DEFAULT_TASKS))
        instructions = [n.strip() for n in args.instructions.split(",") if n.strip()]
        positions = [p.strip() for p in args.positions.split(",") if p.strip()]
        bad = [p for p in positions if p not in POSITIONS]
        if bad or not positions:
            raise ValueError(f"--positions: each of {', '.join(POSITIONS)}, got {args.positions!r}")
        load_instructions(instructions)  # fails before the model loads
    else:
        data = load_prompts(args.prompts)
        placements = None
        if args.placements is not None:
            placements = [p.strip() for p in args.placements.split(",") if p.strip()]
            if not placements or any(p not in POSITIONS for p in placements):
                raise ValueError(f"--placements: each of {', '.join(POSITIONS)}, got {args.placements!r}")
    data = data[:args.limit] if args.limit else data

    from ..aligner import Aligner  # the model loads only once the input is known to be good

    with Aligner(args.model, n_ctx=args.n_ctx) as aligner:
        model = os.path.basename(str(aligner.model_path))
        if args.protocol == "persona":
            bar = ProgressBar(len(data) * 4, "persona")
            result = evaluate_persona(aligner, data, ratios=args.ratios, principle_template=args.principle_template,
                                      system=args.system, generate=args.generate, top_p=args.top_p,
                                      progress=bar.update, principle_position=args.principle_position)
        elif args.protocol == "follow":
            bar = ProgressBar(len(data) * len(instructions) * len(follow_methods(args.ratios, positions)), "follow")
            result = evaluate_follow(aligner, data, instructions, ratios=args.ratios, positions=positions,
                                     max_tokens=args.max_tokens, top_p=args.top_p, echo_guard=args.echo_guard,
                                     progress=bar.update)
        elif args.protocol == "pairs":
            bar = ProgressBar(len(data), "pairs")
            result = evaluate_pairs(aligner, data, ratios=args.ratios, system=args.system, top_p=args.top_p,
                                    floor=args.floor, progress=bar.update,
                                    principle_position=args.principle_position)
        else:
            given = [parse_principle_flag(p) for p in args.principle]
            n_columns = 1 + max(1, len(placements or ())) * (1 + len(args.ratios) + (len(given) if len(given) > 1 else 0))
            bar = ProgressBar(len(data) * n_columns, "compare")
            result = generate_comparison(aligner, data, given, negative_principle=args.negative_principle,
                                         ratios=args.ratios, system=args.system,
                                         max_tokens=args.max_tokens, temperature=args.temperature,
                                         top_p=args.top_p, seed=args.seed, placements=placements,
                                         progress=bar.update)
        bar.close()
    result = {"model": model, **result}

    if args.protocol == "persona":
        _print_persona(result)
        if args.plot:
            _plot(args.plot, result, f"persona accuracy, {model}, n={result['n']}", chance=0.25)
    elif args.protocol == "follow":
        _print_follow(result)
        if args.plot:
            plot_follow(args.plot, result, f"instruction adherence, {model}, n={result['n']} per method")
    elif args.protocol == "pairs":
        _print_pairs(result)
        if args.plot:
            _plot(args.plot, result, f"pairs: chosen preferred, {model}, n={result['n']}", chance=None)
    else:
        print(format_comparison(result))
        if args.html:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(comparison_html(result))
    if args.json_out:
        write_json(args.json_out, result)
    return 0


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError, OSError, ImportError) as e:
        print(f"linalign eval {args.protocol}: error: {e}", file=sys.stderr)
        return 2

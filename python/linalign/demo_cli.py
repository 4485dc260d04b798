"""``linalign "PROMPT" --principle TEXT [--compare]``: one aligned answer,
streamed; with --compare also the plain answer and the answer with the
principle only in the system prompt (the authors' demo, locally)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .cli_common import add_model_options, add_sampling_options, load_aligner, sampling_options, stream_chat

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linalign",
        description="Linear-alignment decoding on llama.cpp. Subcommands: chat, serve, bench, eval.",
        epilog='example: linalign "Why is the sky blue?" --principle "The user is a five-year-old child." --compare',
    )
    parser.add_argument("prompt", help="the user message")
    parser.add_argument("--system", default="", help="a system message for both streams")
    parser.add_argument("--compare", action="store_true",
                        help="also print the plain answer and the principle-in-the-prompt answer")
    add_sampling_options(parser)
    add_model_options(parser)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        aligner = load_aligner(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"linalign: {e}", file=sys.stderr)
        return 2
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    runs = [(f"aligned (ratio {args.ratio:g})", args.principle, args.ratio)]
    if args.compare:
        runs = [("plain (no principle)", "", 0.0), ("principle in the prompt only", args.principle, 0.0)] + runs
    if args.principle:
        print(f"principle: {args.principle}\n")
    try:
        options = sampling_options(args)
        for title, principle, ratio in runs:
            if args.compare:
                print(f"=== {title} ===")
            chunks = aligner.create_chat_completion(messages, principle=principle, stream=True,
                                                    options=options.replace(ratio=ratio))
            stream_chat(chunks)
            if args.compare:
                print()
    except (ValueError, TypeError) as e:
        print(f"linalign: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        aligner.close()
    return 0

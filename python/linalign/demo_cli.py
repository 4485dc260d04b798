"""``linalign "PROMPT" --principle TEXT [--compare]``: one aligned answer,
streamed; with --compare also the plain answer and the answer with the
principle only in the system prompt (the authors' demo, locally)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .cli_common import (add_model_options, add_sampling_options, composition, describe, load_aligner,
                         sampling_options, stream_chat)
from .options import format_ratio
from .principles import compose

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linalign",
        description="Linear-alignment decoding on llama.cpp. Subcommands: chat, serve, bench, eval, rpc-worker; "
                    "linalign --version lists the devices.",
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
    try:
        options = sampling_options(args)
        steer = composition(args)
        if len(steer.principles) == 1 and not steer.negative:
            title = f"aligned (ratio {format_ratio(steer.principles[0].ratio)})"
        else:
            title = "aligned (" + ", ".join([format_ratio(p.ratio) for p in steer.principles] +
                                             (["away from the negative"] if steer.negative else [])) + ")"
        runs = [(title, steer)]
        if args.compare:
            # the principles' texts in the system message, plainly decoded
            in_prompt = "\n".join(p.text for p in steer.principles)
            runs = [("plain (no principle)", compose()),
                    ("principle in the prompt only", compose(principle=in_prompt, ratio=0.0,
                                                             principle_position=steer.position))] + runs
        if not steer.is_plain:
            print(describe(steer) + "\n")
        for title, comp in runs:
            if args.compare:
                print(f"=== {title} ===")
            chunks = aligner.create_chat_completion(messages, composition=comp, stream=True, options=options)
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

"""``linalign chat``: interactive multi-turn chat with a principle.

Each turn reuses the KV cache of the previous one, so only the new tokens of
each stream are decoded. Commands: /principle TEXT, /ratio R, /reset, /quit.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .cli_common import add_model_options, add_sampling_options, load_aligner, sampling_options, stream_chat

__all__ = ["main"]

HELP = "commands: /principle TEXT  /ratio R  /reset  /help  /quit"


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="linalign chat", description="Interactive chat with linear alignment.")
    parser.add_argument("--system", default="", help="a system message for both streams")
    add_sampling_options(parser)
    add_model_options(parser)
    args = parser.parse_args(argv)
    try:
        aligner = load_aligner(args)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"linalign: {e}", file=sys.stderr)
        return 2

    principle, ratio = args.principle, args.ratio
    history = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    print(f"{HELP}\nprinciple: {principle or '(none)'}  ratio: {ratio:g}")
    with aligner:
        while True:
            try:
                line = input("> " if interactive else "")
            except (EOFError, KeyboardInterrupt):
                print()
                return 0
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                command, _, rest = line.partition(" ")
                if command == "/quit":
                    return 0
                if command == "/principle":
                    principle = rest.strip()
                    print(f"principle: {principle or '(none)'}")
                elif command == "/ratio":
                    try:
                        ratio = float(rest)
                    except ValueError:
                        print("usage: /ratio NUMBER")
                        continue
                    print(f"ratio: {ratio:g}")
                elif command == "/reset":
                    history = history[:1] if args.system else []
                    print("conversation cleared")
                else:
                    print(HELP)
                continue
            history.append({"role": "user", "content": line})
            try:
                chunks = aligner.create_chat_completion(history, principle=principle, stream=True,
                                                        options=sampling_options(args).replace(ratio=ratio))
                reply = stream_chat(chunks)
            except (ValueError, TypeError) as e:
                print(f"error: {e}")
                history.pop()
                continue
            except KeyboardInterrupt:
                print()
                history.pop()
                continue
            history.append({"role": "assistant", "content": reply})

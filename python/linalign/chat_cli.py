"""``linalign chat``: interactive multi-turn chat with a principle.

Each turn reuses the KV cache of the previous one, so only the new tokens of
each stream are decoded. Commands: /principle TEXT[:RATIO] (replaces all),
/add TEXT[:RATIO] (composes one more), /negative TEXT, /ratio R|auto, /reset,
/quit.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .cli_common import (add_model_options, add_sampling_options, composition, describe, load_aligner,
                         ratio_arg, sampling_options, stream_chat)

__all__ = ["main"]

HELP = ("commands: /principle TEXT[:RATIO]  /add TEXT[:RATIO]  /negative TEXT  /ratio R|auto  /reset  /help  /quit "
        "(an empty TEXT clears it)")


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

    principles, negative = list(args.principle or []), args.negative_principle or ""
    try:
        steer = composition(args)
    except (ValueError, TypeError) as e:
        print(f"linalign: {e}", file=sys.stderr)
        return 2
    history = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    print(f"{HELP}\n{describe(steer) or 'principle: (none)'}")
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
                changed = (principles, negative, args.ratio)
                if command == "/principle":
                    principles = [rest.strip()] if rest.strip() else []
                elif command == "/add" and rest.strip():
                    principles = principles + [rest.strip()]
                elif command == "/negative":
                    negative = rest.strip()
                elif command == "/ratio":
                    try:
                        args.ratio = ratio_arg(rest)
                    except argparse.ArgumentTypeError:
                        print("usage: /ratio NUMBER|auto")
                        continue
                if command in ("/principle", "/add", "/negative", "/ratio"):
                    try:
                        steer = composition(args, principles, negative)
                    except (ValueError, TypeError) as e:
                        print(f"error: {e}")
                        principles, negative, args.ratio = changed
                        continue
                    print(describe(steer) or "principle: (none)")
                elif command == "/reset":
                    history = history[:1] if args.system else []
                    print("conversation cleared")
                elif command not in ("/principle", "/add", "/negative", "/ratio"):
                    print(HELP)
                continue
            history.append({"role": "user", "content": line})
            try:
                chunks = aligner.create_chat_completion(history, composition=steer, stream=True,
                                                        options=sampling_options(args))
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

"""Write a tiny random-weight GGUF model: llama, gemma3 or mamba architecture.

The command-line face of linalign.synthetic_model, where the writer lives
(an installed linalign with the ``gguf`` package writes them too). The names
tests load from this file (write_tiny_gguf, TEMPLATES, TOOL_TEMPLATES, ...)
are re-exported from there.

    python models/make_tiny_gguf.py OUT.gguf [--arch gemma3] [--seed N] [--n-vocab N] ...

Vocabularies past the built-in pieces are filled with placeholder tokens that
text never merges into, so any --n-vocab works (49152, 152064, ...).
"""
from __future__ import annotations

import argparse

from linalign.synthetic_model import *  # noqa: F401,F403  (this file's names, as tests load them)
from linalign.synthetic_model import ARCHS, TOOL_TEMPLATES, write_tiny_gguf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .gguf path")
    parser.add_argument("--arch", choices=ARCHS, default="llama")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in [("n_vocab", 400), ("n_embd", 64), ("n_layer", 2), ("n_head", 4),
                          ("n_head_kv", 2), ("n_ff", 128), ("n_ctx_train", 512), ("n_swa", 8)]:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=default)
    parser.add_argument("--f16", action="store_true", help="F16 weights (default F32)")
    parser.add_argument("--eos-never-chosen", action="store_true",
                        help="a zero output row for the end-of-sequence token: greedy decoding never ends early")
    parser.add_argument("--favoured-token", default=None, metavar="TEXT",
                        help="add this token (e.g. '<tool_call>') and make greedy decoding pick it wherever it may")
    parser.add_argument("--chat-template", default=None, choices=sorted(TOOL_TEMPLATES),
                        help="one of the tool-aware templates (default: the writer's plain one)")
    args = vars(parser.parse_args(argv))
    if args["chat_template"] is not None:
        args["chat_template"] = TOOL_TEMPLATES[args["chat_template"]]
    out = write_tiny_gguf(args.pop("out"), **args)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

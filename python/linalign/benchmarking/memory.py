"""Peak resident memory per method, each measured in a fresh child process
(``python -m linalign.benchmarking.memory METHOD ...``) that loads what the
method needs, decodes a few tokens, and reports its peak RSS (``VmHWM``).

    plain            one llama_cpp.Llama
    linalign         Aligner(model_path): weights once, one context, two streams
    linalign+llama   a llama_cpp.Llama plus Aligner(llama=that Llama): the
                     Llama's weights once, under two contexts (the Llama's
                     and the Aligner's own)
    naive            two llama_cpp.Llama (stream B in the second)
    two-call         the two-call baseline (baselines.py) on the weights of a
                     llama_cpp.Llama whose own context is kept to 32 cells

The KV cache of one sequence is computed from the model's metadata:
``n_layer * n_ctx * (n_embd_k_gqa + n_embd_v_gqa) * 2`` bytes (f16 cache).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Mapping, Sequence

__all__ = ["PROBES", "kv_bytes_per_sequence", "measure_memory", "main"]

PROBES = ("plain", "linalign", "linalign+llama", "naive", "two-call")
_IDLE_LLAMA_CTX = 32  # the two-call probe's Llama only lends its weights


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    # VmHWM belongs to this process's address space, which exec made fresh;
    # ru_maxrss would carry the parent's high-water mark over the fork
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def kv_bytes_per_sequence(metadata: Mapping[str, str], n_ctx: int) -> dict:
    """KV-cache bytes of one sequence of ``n_ctx`` cells, from GGUF metadata
    (``llama_cpp.Llama.metadata``, key -> value text)."""
    arch = metadata["general.architecture"]

    def meta_int(key: str, default: int | None = None) -> int:
        value = metadata.get(f"{arch}.{key}")
        if value is None:
            if default is None:
                raise KeyError(f"{arch}.{key} missing from the GGUF metadata")
            return default
        return int(value)

    n_layer = meta_int("block_count")
    n_embd = meta_int("embedding_length")
    n_head = meta_int("attention.head_count")
    n_head_kv = meta_int("attention.head_count_kv", n_head)
    k_len = meta_int("attention.key_length", n_embd // n_head)
    v_len = meta_int("attention.value_length", n_embd // n_head)
    n_embd_k_gqa, n_embd_v_gqa = k_len * n_head_kv, v_len * n_head_kv
    return {
        "n_layer": n_layer, "n_ctx": n_ctx, "n_embd_k_gqa": n_embd_k_gqa, "n_embd_v_gqa": n_embd_v_gqa,
        "bytes": n_layer * n_ctx * (n_embd_k_gqa + n_embd_v_gqa) * 2,
    }


def _probe(method: str, model_path: str, n_ctx: int, n_threads: int, max_tokens: int,
           prompt_p: list[int], prompt_b: list[int]) -> dict:
    import llama_cpp

    import linalign

    from .baselines import BaselineContext, two_call_generate
    from .methods import NaiveMethod
    from .workload import RATIO, SEED, TOP_P, Workload

    rss_start = _rss_bytes()
    n_threads_batch = max(os.cpu_count() or 1, n_threads)

    def llama(**kwargs) -> "llama_cpp.Llama":
        return linalign.load_llama(model_path, **{"n_ctx": n_ctx, "n_threads": n_threads,
                                                  "n_threads_batch": n_threads_batch, "verbose": False, **kwargs})

    keep = []  # everything stays alive until the peak is read
    try:
        if method == "plain":
            llm = llama()
            keep.append(llm)
            for _ in llm.create_completion(prompt_p, max_tokens=max_tokens, temperature=0.0, stream=True):
                pass
        elif method in ("linalign", "linalign+llama"):
            if method == "linalign+llama":
                llm = llama()
                keep.append(llm)
                aligner = linalign.Aligner(llama=llm, n_ctx=n_ctx, n_threads=n_threads, seed=0)
            else:
                aligner = linalign.Aligner(model_path, n_ctx=n_ctx, n_threads=n_threads, seed=0)
            keep.append(aligner)
            aligner.create_completion(prompt_p, prompt_b, max_tokens=max_tokens, temperature=0.0)
        elif method == "two-call":
            llm = llama(n_ctx=_IDLE_LLAMA_CTX, n_batch=_IDLE_LLAMA_CTX, n_ubatch=_IDLE_LLAMA_CTX)
            keep.append(llm)
            baseline = BaselineContext(llm, n_ctx=n_ctx, n_threads=n_threads)
            keep.append(baseline)
            options = linalign.SamplingOptions(ratio=RATIO, top_p=TOP_P, temperature=0.0, seed=SEED,
                                               max_tokens=max_tokens)
            two_call_generate(baseline, prompt_p, prompt_b, options)
        elif method == "naive":
            llm_p, llm_b = llama(), llama()
            keep += [llm_p, llm_b]
            NaiveMethod(llm_p, llm_b, Workload(prompt_p, prompt_b, 0)).run(max_tokens)
        else:
            raise ValueError(f"unknown method {method!r}; one of {', '.join(PROBES)}")
        rss_end, peak = _rss_bytes(), _peak_rss_bytes()
    finally:
        for obj in reversed(keep):  # contexts before the weights they run on
            obj.close()
    return {
        "method": method,
        "rss_start_bytes": rss_start,
        "rss_end_bytes": rss_end,
        "peak_rss_bytes": peak,
    }


def measure_memory(model_path: str, prompt_p: Sequence[int], prompt_b: Sequence[int], *, n_ctx: int,
                   n_threads: int, methods: Sequence[str] = PROBES, reps: int = 1, max_tokens: int = 8) -> dict:
    """Peak RSS of each probe (median over ``reps`` fresh processes)."""
    out = {}
    for method in methods:
        runs = []
        for _ in range(reps):
            cmd = [sys.executable, "-m", "linalign.benchmarking.memory", method, "--model", str(model_path),
                   "--n-ctx", str(n_ctx), "--threads", str(n_threads), "--max-tokens", str(max_tokens),
                   "--prompt-p", ",".join(map(str, prompt_p)), "--prompt-b", ",".join(map(str, prompt_b))]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"memory probe {method} failed:\n{proc.stderr[-2000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        peaks = [r["peak_rss_bytes"] for r in runs]
        out[method] = {
            "peak_rss_bytes": int(statistics.median(peaks)), "peak_rss_min": min(peaks), "peak_rss_max": max(peaks),
            "rss_start_bytes": int(statistics.median(r["rss_start_bytes"] for r in runs)), "reps": reps,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one memory probe (run by linalign bench)")
    parser.add_argument("method", choices=PROBES)
    parser.add_argument("--model", required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--prompt-p", required=True, help="token ids, comma-separated")
    parser.add_argument("--prompt-b", required=True, help="token ids, comma-separated")
    args = parser.parse_args(argv)
    tokens = lambda text: [int(t) for t in text.split(",")]  # noqa: E731
    print(json.dumps(_probe(args.method, args.model, args.n_ctx, args.threads, args.max_tokens,
                            tokens(args.prompt_p), tokens(args.prompt_b))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

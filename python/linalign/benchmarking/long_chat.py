"""``linalign bench long-chat``: one more turn of a long conversation
(``python/linalign/data/long_chat.json``, about 1,500 tokens), plain against aligned with
the principle in the system message and at the end (``principle_position``).

Each case runs in a fresh process (so that its memory is its own), ``--reps``
times, order rotated: load the model; answer the conversation's last user
turn from a cold cache (TTFT, decode tok/s); then one more turn with the
prompt cache (TTFT, tokens each stream decoded). Memory: the process's RSS
growth over the two turns, and the KV cells the streams hold (a KV buffer
per stream holds each stream's tokens; a unified cache holds a prefix the
streams share once) times the bytes per cell.

Cases, each an Aligner at its defaults (the KV pool of ``n_ctx`` cells,
the default ratio and echo guard) unless said: ``llama.cpp``
(llama-cpp-python's Llama alone, plain decoding: one stream, ``n_ctx``
cells), ``plain`` (no principle), ``system`` and ``end`` (the principle's
placements: at the end the streams share the history's cells; in the system
message each holds its own, and the pool grows to ``n_ctx`` per stream),
``end-per-stream`` (a KV buffer per stream: the shared prefix decoded once
but stored twice), ``end-ratio-2`` (the fixed ratio that was the default
before ``"auto"``: what the per-token divergence costs) and
``prior-default`` (the defaults before the pool, the
end placement and the echo guard: ``system``, a buffer per stream, ratio 2,
no guard), the anchor of the decode-speed target.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from .report import or_dash

__all__ = ["CASES", "main", "run_long_chat", "format_long_chat"]

CASES = {
    "llama.cpp": {"principle": None, "llama": True},
    "plain": {"principle": None},
    "system": {"principle": True, "position": "system"},
    "end": {"principle": True, "position": "end"},
    "end-per-stream": {"principle": True, "position": "end", "kv_unified": False},
    "end-ratio-2": {"principle": True, "position": "end", "sampling": {"ratio": 2.0}},
    "prior-default": {"principle": True, "position": "system", "kv_unified": False,
                      "sampling": {"ratio": 2.0, "echo_guard": False}},
}
PRINCIPLE = "The user is a five-year-old child."
DATA = Path(__file__).resolve().parents[1] / "data" / "long_chat.json"  # shipped in the package


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One case in this process."""
    import linalign
    from linalign.benchmarking.memory import kv_bytes_per_sequence

    case = CASES[spec["case"]]
    data = json.loads(Path(spec["data"]).read_text(encoding="utf-8"))
    rss0 = _rss_mib()
    if case.get("llama"):
        return _llama_child(spec, data, rss0)
    unified = case.get("kv_unified", True)
    aligner = linalign.Aligner(spec["model"], n_ctx=spec["n_ctx"], n_threads=spec["threads"], kv_unified=unified)
    kw = dict(temperature=0.0, max_tokens=spec["max_tokens"], seed=1, **case.get("sampling", {}))
    if case["principle"]:
        kw.update(principle=PRINCIPLE, principle_position=case["position"])
    meta = {k: aligner._model.meta(k) for k in ("general.architecture",)}
    arch = meta["general.architecture"]
    for key in ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
                "attention.key_length", "attention.value_length"):
        value = aligner._model.meta(f"{arch}.{key}")
        if value:
            meta[f"{arch}.{key}"] = value
    bytes_per_cell = kv_bytes_per_sequence(meta, 1)["bytes"]

    def turn(messages: list[dict[str, str]]) -> dict[str, Any]:
        request = aligner.chat_request(messages, **kw)
        t0 = time.perf_counter()
        gen = aligner.submit(request)
        prefill = dict(gen.prefill)
        t_first = None
        parts = []
        for delta in aligner.deltas(gen):
            if t_first is None:
                t_first = time.perf_counter()
            parts.append(delta)
        t_end = time.perf_counter()
        t_first = t_first or t_end
        engine = aligner.engine
        held = [engine.cached_tokens(0, s) for s in range(2)]
        shared = next((i for i, (x, y) in enumerate(zip(request.prompt, request.base_prompt)) if x != y),
                      min(len(request.prompt), len(request.base_prompt)))
        streams = 1 if request.prompt == request.base_prompt else 2
        if streams == 1:
            cells = held[0]
        elif unified:
            cells = held[0] + held[1] - min(shared, held[0], held[1])
        else:
            cells = held[0] + held[1]
        return {"ttft_ms": (t_first - t0) * 1000.0,
                "tok_s": (gen.completion_tokens - 1) / (t_end - t_first) if gen.completion_tokens > 1 else None,
                "completion_tokens": gen.completion_tokens, "prompt_tokens": len(request.prompt),
                "decoded": list(prefill["decoded"][:streams]), "cached_tokens": gen.cached_tokens,
                "kv_cells": cells, "kv_mib": cells * bytes_per_cell / 2**20}, "".join(parts)

    first, reply = turn(data["messages"])
    history = data["messages"] + [{"role": "assistant", "content": reply},
                                  {"role": "user", "content": data["next_turn"]}]
    second, _ = turn(history)
    # the context's KV cache: every cell llama.cpp allocated (the pool, grown
    # when a request needed it, or every stream's buffer)
    result = {"case": spec["case"], "first": first, "next": second, "rss_growth_mib": _rss_mib() - rss0,
              "kv_allocated_mib": aligner.engine.n_cells_total * bytes_per_cell / 2**20}
    aligner.close()
    return result


def _llama_child(spec: dict[str, Any], data: dict[str, Any], rss0: float) -> dict[str, Any]:
    """llama-cpp-python's Llama alone: the plain-decoding anchor."""
    import linalign
    from linalign.benchmarking.memory import kv_bytes_per_sequence

    llm = linalign.load_llama(spec["model"], n_ctx=spec["n_ctx"], n_threads=spec["threads"],
                              n_threads_batch=spec["threads"], verbose=False)
    bytes_per_cell = kv_bytes_per_sequence(llm.metadata, 1)["bytes"]

    def turn(messages):
        t0 = time.perf_counter()
        t_first, parts, n = None, [], 0
        for chunk in llm.create_chat_completion(messages, temperature=0.0, max_tokens=spec["max_tokens"], seed=1,
                                                stream=True):
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                n += 1
                parts.append(text)
                if t_first is None:
                    t_first = time.perf_counter()
        t_end = time.perf_counter()
        t_first = t_first or t_end
        return {"ttft_ms": (t_first - t0) * 1000.0, "tok_s": (n - 1) / (t_end - t_first) if n > 1 else None,
                "completion_tokens": n, "prompt_tokens": None, "decoded": [None], "cached_tokens": None,
                "kv_cells": llm.n_tokens, "kv_mib": llm.n_tokens * bytes_per_cell / 2**20}, "".join(parts)

    first, reply = turn(data["messages"])
    second, _ = turn(data["messages"] + [{"role": "assistant", "content": reply},
                                         {"role": "user", "content": data["next_turn"]}])
    result = {"case": spec["case"], "first": first, "next": second, "rss_growth_mib": _rss_mib() - rss0,
              "kv_allocated_mib": spec["n_ctx"] * bytes_per_cell / 2**20}
    llm.close()
    return result


def run_long_chat(*, model: str | None = None, reps: int = 3, max_tokens: int = 64, n_ctx: int = 4096,
                  threads: int | None = None, cases: Sequence[str] = tuple(CASES), data: str | Path = DATA,
                  log=lambda s: None) -> dict:
    from ..default_model import default_model_path
    from ..threads import physical_cores

    spec = {"model": str(model or default_model_path()), "n_ctx": n_ctx, "threads": threads or physical_cores(),
            "max_tokens": max_tokens, "data": str(data)}
    if not Path(data).is_file():
        raise FileNotFoundError(f"{data}: the conversation file (python/linalign/data/long_chat.json in the repository); pass --data")
    runs: dict[str, list[dict]] = {c: [] for c in cases}
    order = list(cases)
    for rep in range(reps):
        shift = rep % len(order)
        for case in order[shift:] + order[:shift]:
            child = subprocess.run([sys.executable, "-m", "linalign.benchmarking.long_chat", "--child",
                                    json.dumps({**spec, "case": case})], capture_output=True, text=True, timeout=900)
            if child.returncode != 0:
                raise RuntimeError(f"long-chat case {case} failed: {child.stderr[-2000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            runs[case].append(result)
            log(f"rep {rep + 1}/{reps} {case}: TTFT {result['first']['ttft_ms']:.0f} ms, "
                f"{result['first']['tok_s'] or 0:.1f} tok/s, next-turn TTFT {result['next']['ttft_ms']:.0f} ms, "
                f"KV {result['next']['kv_mib']:.1f} MiB, RSS +{result['rss_growth_mib']:.1f} MiB")

    def med(case: str, *path: str) -> float | None:
        values = []
        for r in runs[case]:
            v: Any = r
            for p in path:
                v = v[p]
            if v is not None:
                values.append(v)
        return statistics.median(values) if values else None

    rows = []
    for case in cases:
        rows.append({"case": case, "ttft_ms": med(case, "first", "ttft_ms"), "tok_s": med(case, "first", "tok_s"),
                     "next_ttft_ms": med(case, "next", "ttft_ms"), "kv_mib": med(case, "next", "kv_mib"),
                     "rss_growth_mib": med(case, "rss_growth_mib"), "kv_allocated_mib": med(case, "kv_allocated_mib"),
                     "prompt_tokens": runs[case][0]["first"]["prompt_tokens"],
                     "next_decoded": runs[case][0]["next"]["decoded"],
                     "next_cached": runs[case][0]["next"]["cached_tokens"]})
    by = {r["case"]: r for r in rows}
    targets = []
    if "plain" in by and "end" in by:
        targets.append(("aligned end TTFT / plain", by["end"]["ttft_ms"] / by["plain"]["ttft_ms"], "<= 1.15"))
    if "llama.cpp" in by and "end" in by:
        for what, key in (("KV held", "kv_mib"), ("KV allocated", "kv_allocated_mib"), ("RSS growth", "rss_growth_mib")):
            targets.append((f"end {what} / llama.cpp plain", by["end"][key] / by["llama.cpp"][key], "<= 1.05"))
    if "prior-default" in by and "end" in by:
        targets.append(("end decode / prior default", by["end"]["tok_s"] / by["prior-default"]["tok_s"], ">= 0.95"))
    if "end-ratio-2" in by and "end" in by:
        targets.append(("end decode / end at ratio 2", by["end"]["tok_s"] / by["end-ratio-2"]["tok_s"], ">= 0.95"))
    return {"benchmark": "long-chat", **{k: v for k, v in spec.items() if k != "data"}, "reps": reps,
            "principle": PRINCIPLE, "rows": rows, "targets": targets, "runs": runs}


def format_long_chat(doc: dict) -> str:
    lines = [f"{os.path.basename(doc['model'])}, {doc['threads']} threads, n_ctx {doc['n_ctx']} per stream, "
             f"{doc['max_tokens']} tokens greedy, median of {doc['reps']} fresh processes per case",
             f"{'case':<14} {'prompt':>6} {'TTFT ms':>8} {'tok/s':>6} {'next TTFT':>9} {'next decoded (P, B)':>20} "
             f"{'KV held':>7} {'KV alloc':>8} {'RSS +MiB':>8}"]
    for r in doc["rows"]:
        decoded = "-" if r["next_decoded"] == [None] else str(tuple(r["next_decoded"]))
        lines.append(f"{r['case']:<14} {or_dash(r['prompt_tokens'], 'd'):>6} {or_dash(r['ttft_ms'], '.0f'):>8} "
                     f"{or_dash(r['tok_s'], '.1f'):>6} {or_dash(r['next_ttft_ms'], '.0f'):>9} {decoded:>20} "
                     f"{or_dash(r['kv_mib'], '.1f'):>7} {or_dash(r['kv_allocated_mib'], '.1f'):>8} "
                     f"{or_dash(r['rss_growth_mib'], '.1f'):>8}")
    lines.append("(KV in MiB: held = cells the streams fill x bytes per cell; alloc = the context's KV cache; "
                 "RSS + = the process's growth from before the model loads to after the second turn)")
    lines.append("targets (issues 14 and 22):")
    for name, value, target in doc["targets"]:
        lines.append(f"  {name}: {value:.2f} (target {target})")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(_child(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(prog="linalign bench long-chat", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF file (default: the default model)")
    parser.add_argument("--reps", type=int, default=3, help="fresh processes per case (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="reply tokens per turn (default 64)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context per stream (default 4096)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the physical cores)")
    parser.add_argument("--data", default=str(DATA), help="the conversation (default: python/linalign/data/long_chat.json)")
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--txt", metavar="OUT")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    log = (lambda s: None) if args.quiet else (lambda s: print(f"[bench long-chat] {s}", file=sys.stderr, flush=True))
    doc = run_long_chat(model=args.model, reps=args.reps, max_tokens=args.max_tokens, n_ctx=args.n_ctx,
                        threads=args.threads, data=args.data, log=log)
    table = format_long_chat(doc)
    print(table)
    command = ("linalign bench long-chat " + " ".join(argv)).strip()
    if args.txt:
        Path(args.txt).write_text(f"$ {command}\n{table}\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, **doc}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

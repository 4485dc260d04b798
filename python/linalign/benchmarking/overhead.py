"""``linalign bench overhead``: the host work around ``llama_decode``, per
generated token, on a model whose forward costs little (issue 21).

The model is written here, into a temporary folder, by
:mod:`linalign.synthetic_model`: random weights, a llama architecture 2
layers deep and 64 wide, with the vocabulary sizes asked for (49,152 and
152,064 by default: the output layer, a row per token, is then most of the
forward). Its end-of-sequence token has a zero output row, so greedy
decoding never picks it: every path generates every token asked for (each
row still divides by the tokens it produced, and the JSON records them).

Every path runs in this process on the same weights (one
``llama_cpp.Llama``; the raw contexts and the Aligners borrow them), with
the same ``n_ctx`` per stream, ``n_batch`` 512 and threads, greedy, from a
prompt of a few tokens. A run is timed whole (the prompt's one decode
included) and divided by its tokens and its decode steps:

    raw-1       llama.cpp's ``llama_decode`` on llama-cpp-python's ctypes API,
                1 sequence: the prompt, then one 1-token decode per token,
                the next token the argmax (numpy) of the logits row
    raw-2       the same with 2 sequences in one batch (P and B of the aligned
                request, logits for both rows); the argmax of P's row feeds
                both: the floor of aligned decoding
    raw-8       8 sequences (the 4 requests' P and B): the floor of 4
                aligned requests, per step
    llama-cpp-python   ``Llama.create_completion`` (temperature 0: greedy)
    plain       an Aligner, no principle (``ratio`` 0: one stream)
    aligned     an Aligner, a principle, ``ratio`` 2 (fixed)
    aligned+logprobs   the same with ``logprobs=5``
    aligned-x4  4 aligned requests at once on an Aligner with ``n_parallel=4``,
                streamed and read in turn: per step (one ``llama_decode``
                for all 4) and per token

Repetitions are interleaved (every row once, then every row again) after a
warm-up of every row; the table gives the median and the range over them.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..engine import run_on_engine_thread

__all__ = ["OverheadConfig", "RATIOS", "ROWS", "format_overhead", "main", "run_overhead"]

# the model: tiny, so that a forward costs little beside the host work
SHAPE = dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=128)
PRINCIPLE = "Be brief."
PROMPTS = ["hello world the cat", "yes the dog and the cat", "good answer to the question", "no bad world"]
N_REQUESTS = 4  # the aligned-x4 row; raw-8 is its floor
LOGPROBS = 5

ROWS = {  # key: what the table calls it
    "raw-1": "llama.cpp raw llama_decode, 1 sequence",
    "raw-2": "llama.cpp raw llama_decode, 2 sequences, one batch",
    "raw-8": "llama.cpp raw llama_decode, 8 sequences, one batch",
    "llama-cpp-python": "llama-cpp-python Llama.create_completion",
    "plain": "linalign, ratio 0 (plain)",
    "aligned": "linalign, aligned (ratio 2)",
    "aligned+logprobs": f"linalign, aligned, logprobs={LOGPROBS}",
    "aligned-x4": f"linalign, {N_REQUESTS} aligned requests at once",
}
# (name, numerator row, denominator row, per "token" or "step", issue 21's target or None)
RATIOS = [
    ("aligned / raw 2 sequences", "aligned", "raw-2", "token", 1.10),
    ("plain / raw 1 sequence", "plain", "raw-1", "token", 1.10),
    (f"{N_REQUESTS} aligned / raw 8 sequences, per step", "aligned-x4", "raw-8", "step", 1.10),
    ("llama-cpp-python / raw 1 sequence", "llama-cpp-python", "raw-1", "token", None),
    ("aligned+logprobs / aligned", "aligned+logprobs", "aligned", "token", None),
]


@dataclass
class OverheadConfig:
    vocabs: list[int] = field(default_factory=lambda: [49152, 152064])
    max_tokens: int = 256
    reps: int = 3
    threads: int = 2
    seed: int = 0

    @property
    def n_ctx(self) -> int:
        """Tokens per stream: the answer and room for the prompt."""
        return self.max_tokens + 64


@dataclass
class Run:
    seconds: float
    tokens: int  # generated, over every request of the run
    steps: int   # llama_decode calls, the prompt's included
    decode_seconds: float | None = None  # inside those calls (None: not timed apart)


# -- the runs -----------------------------------------------------------------

def raw_decode(ctx: Any, prompts: Sequence[Sequence[int]], group: int, n_tokens: int) -> Run:
    """Greedy decoding on llama.cpp alone: ``prompts[s]`` in sequence ``s``,
    all in one batch; each group of ``group`` sequences is one request whose
    next token, the argmax of its first sequence's row, all of them take."""
    n_seq = len(prompts)
    if sum(map(len, prompts)) > ctx.n_batch:
        raise ValueError("the prompts must fit one batch")
    ctx.clear()
    clock = time.perf_counter
    start = clock()
    items = [(tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, tok in enumerate(p)]
    ctx.decode_tokens(items)
    decoding = clock() - start
    last_rows = np.cumsum([len(p) for p in prompts]) - 1  # batch index of each sequence's last prompt token
    tokens = [int(np.argmax(ctx.logits(int(last_rows[s])))) for s in range(0, n_seq, group)]
    batch = ctx.step_batch(n_seq)  # row i: sequence i, with logits
    for step in range(n_tokens - 1):
        for i in range(n_seq):
            batch.token[i] = tokens[i // group]
            batch.pos[i] = len(prompts[i]) + step
        before = clock()
        ctx.decode("raw step")
        decoding += clock() - before
        tokens = [int(np.argmax(ctx.logits(s))) for s in range(0, n_seq, group)]
    ctx.synchronize()
    return Run(clock() - start, n_tokens * (n_seq // group), n_tokens, decoding)


def llama_cpp_python_completion(llm: Any, prompt: str, n_tokens: int) -> Run:
    start = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=n_tokens, temperature=0.0)
    seconds = time.perf_counter() - start
    produced = out["usage"]["completion_tokens"]  # its loop may sample one past max_tokens: counted as made
    return Run(seconds, produced, produced)


def linalign_completions(aligner: Any, requests: Sequence[dict[str, Any]], n_tokens: int) -> Run:
    """Streams every request at once (each submitted when its call is made)
    and reads them in turn; the Aligner's engine loop steps them all. Starts
    cold, as the raw rows do (``ctx.clear()``): a prompt cache left by the
    row before holds KV cells that every decode's attention then spans."""
    aligner.reset()
    engine = aligner.engine
    calls, decoding = engine.n_decode_calls, engine.decode_seconds
    start = time.perf_counter()
    streams = [aligner.create_completion(**request, max_tokens=n_tokens, temperature=0.0, stream=True)
               for request in requests]
    produced = 0
    while streams:
        for stream in list(streams):
            chunk = next(stream, None)
            if chunk is None:
                streams.remove(stream)
            elif chunk.get("usage"):
                produced += chunk["usage"]["completion_tokens"]
    return Run(time.perf_counter() - start, produced, engine.n_decode_calls - calls, engine.decode_seconds - decoding)


class PathsOnOneModel:
    """Every row's run on the weights of one Llama: the raw contexts and the
    Aligners borrow them. A context manager; ``runs`` maps a row to its run."""

    def __init__(self, path: Path, config: OverheadConfig) -> None:
        import linalign
        from .baselines import BaselineContext

        n_ctx, threads, n = config.n_ctx, config.threads, config.max_tokens
        self.llm = linalign.load_llama(path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                                       seed=config.seed, verbose=False)
        common = dict(llama=self.llm, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, seed=config.seed)
        # both streams of every request fit the pool whole: nothing is made again or preempted mid-run
        self.one = linalign.Aligner(**common, kv_cells=2 * n_ctx)
        self.four = linalign.Aligner(**common, n_parallel=N_REQUESTS, kv_cells=2 * n_ctx * N_REQUESTS)
        self.raw = {k: BaselineContext(self.llm, n_ctx=n_ctx, n_threads=threads, n_seq=max(2, k))
                    for k in (1, 2, 2 * N_REQUESTS)}

        aligned = [dict(prompt=p, principle=PRINCIPLE, ratio=2.0) for p in PROMPTS[:N_REQUESTS]]
        requests = [self.one.completion_request(**r) for r in aligned]  # the engine's own P and B tokens
        pb = [list(s) for r in requests for s in (r.prompt, r.base_prompt)]
        self.runs: dict[str, Callable[[], Run]] = {
            # the baselines decode on the engine thread, as linalign's requests do (one OpenMP team)
            "raw-1": lambda: run_on_engine_thread(lambda: raw_decode(self.raw[1], pb[1:2], 1, n)),
            "raw-2": lambda: run_on_engine_thread(lambda: raw_decode(self.raw[2], pb[:2], 2, n)),
            "raw-8": lambda: run_on_engine_thread(lambda: raw_decode(self.raw[2 * N_REQUESTS], pb, 2, n)),
            "llama-cpp-python": lambda: run_on_engine_thread(
                lambda: llama_cpp_python_completion(self.llm, PROMPTS[0], n)),
            "plain": lambda: linalign_completions(self.one, [dict(prompt=PROMPTS[0], ratio=0.0)], n),
            "aligned": lambda: linalign_completions(self.one, aligned[:1], n),
            "aligned+logprobs": lambda: linalign_completions(self.one, [dict(aligned[0], logprobs=LOGPROBS)], n),
            "aligned-x4": lambda: linalign_completions(self.four, aligned, n),
        }

    def __enter__(self) -> "PathsOnOneModel":
        return self

    def __exit__(self, *exc: object) -> None:
        for ctx in self.raw.values():
            ctx.close()
        self.one.close()
        self.four.close()
        self.llm.close()


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _summary(runs: list[Run]) -> dict[str, Any]:
    per_token = [r.seconds / r.tokens * 1e6 for r in runs]
    per_step = [r.seconds / r.steps * 1e6 for r in runs]
    summary = {"us_per_token": _stats(per_token), "us_per_step": _stats(per_step),
               "tokens": [r.tokens for r in runs], "steps": [r.steps for r in runs],
               "reps": {"us_per_token": per_token, "us_per_step": per_step}}
    if all(r.decode_seconds is not None for r in runs):
        # the step less its llama_decode: the host work, which the decode's own drift does not move
        host = [(r.seconds - r.decode_seconds) / r.steps * 1e6 for r in runs]
        summary["host_us_per_step"] = _stats(host)
        summary["reps"]["host_us_per_step"] = host
    return summary


def _host_difference(rows: dict[str, Any], num: str, den: str) -> dict[str, Any] | None:
    """A row's host work per step beyond its floor's, µs, and its
    llama_decode time over the floor's: per repetition, median and range."""
    if "host_us_per_step" not in rows[num] or "host_us_per_step" not in rows[den]:
        return None

    def decode(key: str) -> list[float]:
        reps = rows[key]["reps"]
        return [step - host for step, host in zip(reps["us_per_step"], reps["host_us_per_step"])]

    diff = [a - b for a, b in zip(rows[num]["reps"]["host_us_per_step"], rows[den]["reps"]["host_us_per_step"])]
    return dict(_stats(diff), decode_ratio=_stats([a / b for a, b in zip(decode(num), decode(den))]))


def _ratio(rows: dict[str, Any], num: str, den: str, unit: str, target: float | None) -> dict[str, Any]:
    """Of the medians, and per repetition: each repetition's two rows ran
    seconds apart, under the same load, so their ratio moves less with a
    shared machine than the ratio of medians taken over the whole run."""
    per_rep = [a / b for a, b in zip(rows[num]["reps"][unit], rows[den]["reps"][unit])]
    return {"value": rows[num][unit]["median"] / rows[den][unit]["median"], "target": target,
            "per_rep": {"median": statistics.median(per_rep), "min": min(per_rep), "max": max(per_rep)}}


def run_overhead(config: OverheadConfig, *, log: Callable[[str], None] = lambda s: None,
                 model_dir: Path | None = None) -> dict[str, Any]:
    """Measures every row for every vocabulary; returns the result document."""
    from ..synthetic_model import write_tiny_gguf

    doc: dict[str, Any] = {"config": asdict(config), "shape": SHAPE, "rows": ROWS, "vocabs": {}}
    with tempfile.TemporaryDirectory(prefix="linalign-overhead-") as tmp:
        for n_vocab in config.vocabs:
            path = write_tiny_gguf(Path(model_dir or tmp) / f"overhead-{n_vocab}.gguf", n_vocab=n_vocab,
                                   n_ctx_train=2 * N_REQUESTS * config.n_ctx, seed=config.seed, eos_never_chosen=True,
                                   name=f"linalign-overhead-{n_vocab}", **SHAPE)
            log(f"vocabulary {n_vocab}: wrote {path.name} ({path.stat().st_size / 2**20:.0f} MiB)")
            samples: dict[str, list[Run]] = {key: [] for key in ROWS}
            with PathsOnOneModel(path, config) as paths:
                for key in ROWS:  # warm-up: caches, threads, the first prompt
                    paths.runs[key]()
                for rep in range(config.reps):  # interleaved: every row once per repetition
                    for key in ROWS:
                        samples[key].append(paths.runs[key]())
                    log(f"vocabulary {n_vocab}: repetition {rep + 1}/{config.reps}")
            rows = {key: _summary(values) for key, values in samples.items()}
            ratios = {name: _ratio(rows, num, den, f"us_per_{per}", target) for name, num, den, per, target in RATIOS}
            host = {name.replace(" / ", " - "): diff for name, num, den, _, target in RATIOS
                    if target is not None and (diff := _host_difference(rows, num, den)) is not None}
            doc["vocabs"][str(n_vocab)] = {"rows": rows, "ratios": ratios, "host_beyond_floor": host}
    return doc


# -- the report ---------------------------------------------------------------

def format_overhead(doc: dict[str, Any]) -> str:
    cfg = doc["config"]
    lines = [f"linalign bench overhead: a {cfg['threads']}-thread CPU, random {doc['shape']['n_layer']}-layer, "
             f"{doc['shape']['n_embd']}-wide llama; {cfg['max_tokens']} greedy tokens; median [min-max] of "
             f"{cfg['reps']} interleaved repetitions, microseconds"]
    for n_vocab, result in doc["vocabs"].items():
        lines += ["", f"vocabulary {int(n_vocab):,}",
                  f"  {'path':52s} {'us/token':>22s} {'us/step':>10s} {'host/step':>10s} {'tokens':>7s}"]
        for key, label in doc["rows"].items():
            row = result["rows"][key]
            tok, step = row["us_per_token"], row["us_per_step"]
            span = f"{tok['median']:.0f} [{tok['min']:.0f}-{tok['max']:.0f}]"
            host = f"{row['host_us_per_step']['median']:.0f}" if "host_us_per_step" in row else "-"
            lines.append(f"  {label:52s} {span:>22s} {step['median']:>10.0f} {host:>10s} {min(row['tokens']):>7d}")
        lines += ["", f"  {'ratio':52s} {'of medians':>10s} {'per repetition: median [min-max]':>34s}"]
        for name, ratio in result["ratios"].items():
            target = "" if ratio["target"] is None else f"   target <= {ratio['target']:.2f}"
            rep = ratio["per_rep"]
            span = f"{rep['median']:.2f} [{rep['min']:.2f}-{rep['max']:.2f}]"
            lines.append(f"  {name:52s} {ratio['value']:>10.2f} {span:>34s}{target}")
        if result.get("host_beyond_floor"):
            lines += ["", "  per repetition: host work per step beyond the floor's (the step less its llama_decode), us;",
                      "  and the llama_decode time over the floor's: median [min-max]"]
            for name, diff in result["host_beyond_floor"].items():
                dec = diff["decode_ratio"]
                lines.append(f"  {name:52s} {diff['median']:>10.1f} [{diff['min']:.1f} to {diff['max']:.1f}]   "
                             f"decode {dec['median']:.2f} [{dec['min']:.2f}-{dec['max']:.2f}]")
    return "\n".join(lines)


def _vocabs(text: str) -> list[int]:
    try:
        vocabs = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        vocabs = []
    if not vocabs or min(vocabs) < 1000:
        raise argparse.ArgumentTypeError("vocabularies are comma-separated sizes of at least 1000, e.g. 49152,152064")
    return vocabs


def main(argv: Sequence[str]) -> int:
    """``linalign bench overhead [options]``."""
    parser = argparse.ArgumentParser(prog="linalign bench overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=_vocabs, default=[49152, 152064],
                        help="vocabulary sizes of the synthetic models (default 49152,152064)")
    parser.add_argument("--max-tokens", type=int, default=256, help="greedy tokens per run (default 256)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions after a warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2, for a 2-core machine)")
    parser.add_argument("--model-dir", type=Path, help="keep the synthetic models here (default: a temporary folder)")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(list(argv))
    if args.max_tokens < 2 or args.reps < 1 or args.threads < 1:
        parser.error("need --max-tokens >= 2, --reps >= 1 and --threads >= 1")
    config = OverheadConfig(vocabs=args.vocab, max_tokens=args.max_tokens, reps=args.reps, threads=args.threads)
    log = (lambda s: None) if args.quiet else (lambda s: print(f"[overhead] {s}", file=sys.stderr, flush=True))
    doc = run_overhead(config, log=log, model_dir=args.model_dir)
    doc["command"] = "linalign bench overhead " + " ".join(argv)
    print(format_overhead(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return 0

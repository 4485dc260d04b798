"""How the cost of one engine step grows with the requests in it, flash
attention off and on: the part of `linalign bench server`'s scaling that the
forward itself sets, without HTTP, the scheduler or the clients.

    python benchmarks/engine_step.py [--model GGUF] [--slots 8] [--clients 1,2,4,8] [--reps 3] [--history N]
    python benchmarks/engine_step.py --placements '0,1,2,3;0,2,4,6;0,1;0,7'   # where the slots lie

For each setting an Aligner with ``--slots`` slots runs ``c`` aligned greedy
chat requests at once (each its own principle and question) and times every
``engine.step()`` in which all of them got a token; it prints the median step
in ms and the throughput ratio against one client, ``c x t(1) / t(c)``.
Settings alternate within each repetition, so a change in the machine's load
moves all of them alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import linalign
from linalign import SamplingOptions

PRINCIPLES = ["The user is a five-year-old child.", "Always answer like a pirate.",
              "Answer in one short sentence.", "The user is a retired professor of mathematics."]
QUESTIONS = ["Why is the sky blue?", "Give me a tip for cooking pasta.", "Tell me about cats.",
             "What is a good way to learn programming?"]


def step_ms(aligner: linalign.Aligner, clients: int, max_tokens: int, history: str) -> float:
    """Median ms of the steps in which every one of ``clients`` requests got a token."""
    options = SamplingOptions(temperature=0.0, max_tokens=max_tokens)
    aligner.reset()
    gens = [aligner.submit(aligner.chat_request([{"role": "user", "content": f"{history}{QUESTIONS[i % 4]} ({i})"}],
                                                principle=PRINCIPLES[i % 4], options=options))
            for i in range(clients)]
    times = []
    engine = aligner.engine
    while not all(g.done for g in gens):
        start = time.perf_counter()
        got = engine.step()
        elapsed = time.perf_counter() - start
        if got == clients:
            times.append(elapsed)
    return statistics.median(times[1:]) * 1e3  # the first: the prompts' last tokens


def placement_ms(aligner: linalign.Aligner, slots: list[int], steps: int = 20) -> tuple[float, float]:
    """Aligned greedy requests started in exactly ``slots``: the median decode
    step in ms and llama.cpp's forward passes per step."""
    options = SamplingOptions(temperature=0.0, max_tokens=steps + 8)
    aligner.reset()
    engine = aligner.engine
    gens = [engine.submit(aligner.chat_request([{"role": "user", "content": f"Tell me about cats ({k})"}],
                                               principle="Be brief.", options=options), slot=slot)
            for k, slot in enumerate(slots)]
    while not all(g.tokens for g in gens):
        engine.step()
    passes, calls = engine.n_forward_passes, engine.n_decode_calls
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    per_step = (engine.n_forward_passes - passes) / (engine.n_decode_calls - calls)
    for g in gens:
        g.cancel()
    engine.step()
    return statistics.median(times) * 1e3, per_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="GGUF file (default: the default model)")
    p.add_argument("--slots", type=int, default=8, help="slots of the engine (default 8, as bench server's load)")
    p.add_argument("--clients", default="1,2,4,8", help="requests at once, comma-separated (default 1,2,4,8)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--history", type=int, default=0, metavar="N",
                   help="put about N tokens of text before each question (a long conversation's KV; default 0)")
    p.add_argument("--placements", metavar="SLOTS;SLOTS...",
                   help="instead: requests started in these slots, e.g. '0,1,2,3;0,2,4,6;0,1;0,7' (flash "
                        "attention off): step ms and forward passes per step")
    args = p.parse_args()
    if args.placements:
        aligner = linalign.Aligner(args.model, n_ctx=args.n_ctx, n_parallel=args.slots, count_passes=True)
        print(f"decode step by the slots requests run in ({args.slots} slots, median of 20 steps)")
        for group in args.placements.split(";"):
            slots = [int(x) for x in group.split(",")]
            ms, per_step = placement_ms(aligner, slots)
            print(f"  slots {group:16s} {ms:7.1f} ms  {per_step:.2f} forward passes a step")
        aligner.close()
        return
    filler = "The river runs past the old mill, under the stone bridge and on towards the sea. "
    history = filler * (args.history // 17) if args.history else ""
    clients = [int(c) for c in args.clients.split(",")]
    settings = {"off": False, "on": True}
    aligners = {name: linalign.Aligner(args.model, n_ctx=args.n_ctx, n_parallel=args.slots, flash_attn=fa)
                for name, fa in settings.items()}
    samples: dict[tuple[str, int], list[float]] = {(s, c): [] for s in settings for c in clients}
    for _ in range(args.reps):
        for c in clients:
            for name, aligner in aligners.items():
                samples[name, c].append(step_ms(aligner, c, args.max_tokens, history))
    n_prompt = len(aligners["off"].tokenize(history)) if history else 0
    print(f"engine step, median ms over {args.reps} reps ({args.slots} slots, n_ctx {args.n_ctx}, "
          f"{n_prompt} history tokens, "
          f"{args.max_tokens} tokens greedy); ratio = c x t(1) / t(c)")
    print(f"  {'flash attn':10s}" + "".join(f" {f'{c} cl. ms':>10s} {'ratio':>6s}" for c in clients))
    for name in settings:
        t1 = statistics.median(samples[name, clients[0]]) if clients[0] == 1 else None
        cells = []
        for c in clients:
            t = statistics.median(samples[name, c])
            cells.append(f" {t:10.2f} {(c * t1 / t if t1 else float('nan')):6.2f}")
        print(f"  {name:10s}" + "".join(cells))
    for aligner in aligners.values():
        aligner.close()


if __name__ == "__main__":
    main()

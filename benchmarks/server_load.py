"""Load test of ``linalign serve``: N concurrent streaming clients x M requests
each, some disconnecting mid-stream and some sending bad requests.

Starts its own server (``python -m linalign serve``) on a free loopback port
unless ``--url`` is given (``ServerProcess`` of
``linalign.benchmarking.server_bench``, which ``linalign bench server`` runs
on), and prints throughput, p50/p95 time to first token and latency of the
good requests, error counts by kind, and the server's RSS before and after.

    python benchmarks/server_load.py --clients 4 --requests 5 --parallel 2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from linalign.benchmarking.server_bench import ServerProcess, percentile, rss_bytes

PROMPTS = ["Name a colour.", "Say hello.", "What is the capital of France?", "Give me a tip for sleeping well.",
           "Describe the sea in one sentence."]
PRINCIPLES = ["", "Always talk like a pirate.", "Answer in one short sentence.", "Be very polite."]
BAD_BODIES = [
    '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    '{"messages": [{"role": "wizard", "content": "hi"}]}',
    '{"messages": "hi"}',
    '{"messages": [{"role": "user", "content": "hi"}], "top_p": "x"}',
    "{not json",
]


@dataclass
class Results:
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    tokens: int = 0
    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def _pct(values: list[float], q: float) -> float:
    p = percentile(values, q)
    return float("nan") if p is None else p


async def _good(client: httpx.AsyncClient, url: str, max_tokens: int, rng: random.Random, res: Results,
                disconnect_after: int | None) -> None:
    body = {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "principle": rng.choice(PRINCIPLES),
            "seed": rng.randrange(2**31)}
    start = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    done = False
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                res.failures.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    res.failures.append(f"error event: {chunk['error']['message']}")
                    return
                if chunk.get("usage"):
                    usage = chunk["usage"]
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
                if disconnect_after is not None and chunks >= disconnect_after:
                    res.counts["disconnected mid-stream (on purpose)"] += 1
                    return  # leaving the block closes the connection
    except httpx.HTTPError as e:
        res.failures.append(f"{type(e).__name__}: {e}")
        return
    if not done or usage is None:
        res.failures.append("stream ended without usage or [DONE]")
        return
    res.counts["good, completed"] += 1
    res.latency.append(time.perf_counter() - start)
    if first is not None:
        res.ttft.append(first)
    res.tokens += usage["completion_tokens"]


async def _bad(client: httpx.AsyncClient, url: str, rng: random.Random, res: Results) -> None:
    r = await client.post(f"{url}/v1/chat/completions", content=rng.choice(BAD_BODIES),
                          headers={"Content-Type": "application/json"})
    ok = r.status_code == 400 and "error" in r.json()
    res.counts["bad request -> 400" if ok else f"bad request -> {r.status_code} (WRONG)"] += 1


async def _client(index: int, args: argparse.Namespace, url: str, res: Results) -> None:
    rng = random.Random(args.seed * 1000 + index)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client:
        for _ in range(args.requests):
            roll = rng.random()
            if roll < args.bad_fraction:
                await _bad(client, url, rng, res)
            elif roll < args.bad_fraction + args.disconnect_fraction:
                await _good(client, url, args.max_tokens, rng, res, disconnect_after=rng.randint(1, 3))
            else:
                await _good(client, url, args.max_tokens, rng, res, disconnect_after=None)


def _start_server(args: argparse.Namespace) -> ServerProcess:
    def cmd(port: int) -> list[str]:
        c = [sys.executable, "-m", "linalign", "serve", "--port", str(port), "--n-ctx", str(args.n_ctx),
             "--parallel", str(args.parallel), "--queue", str(args.queue)]
        return c + (["--model", args.model] if args.model else [])

    server = ServerProcess(cmd, startup_timeout_s=120)
    try:
        server.start()
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    return server


def _rss_mib(pid: int | None) -> float:
    return rss_bytes(pid) / 2**20 if pid else float("nan")


async def _warm_up(url: str, max_tokens: int) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        r = await client.post(f"{url}/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens})
        r.raise_for_status()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=5, help="requests per client")
    p.add_argument("--parallel", type=int, default=2, help="server slots (when this script starts the server)")
    p.add_argument("--queue", type=int, default=64)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--bad-fraction", type=float, default=0.2)
    p.add_argument("--disconnect-fraction", type=float, default=0.2)
    p.add_argument("--model")
    p.add_argument("--url", help="use a running server (RSS then needs --pid)")
    p.add_argument("--pid", type=int, help="pid of the running server, for RSS")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    server = None
    if args.url:
        url, pid = args.url.rstrip("/"), args.pid
    else:
        server = _start_server(args)
        url, pid = server.url, server.process.pid
    try:
        asyncio.run(_warm_up(url, 4))
        rss_before = _rss_mib(pid)
        res = Results()
        start = time.perf_counter()

        async def run_all() -> None:
            await asyncio.gather(*(_client(i, args, url, res) for i in range(args.clients)))

        asyncio.run(run_all())
        wall = time.perf_counter() - start
        time.sleep(0.5)
        health = httpx.get(f"{url}/health", timeout=10).json()
        rss_after = _rss_mib(pid)
        alive = server is None or server.alive
    finally:
        if server is not None:
            server.stop()

    print(f"server: {url}  parallel={args.parallel}  clients={args.clients} x requests={args.requests}  "
          f"max_tokens={args.max_tokens}")
    print(f"wall time              {wall:8.2f} s")
    print(f"good requests done     {len(res.latency):8d}   ({len(res.latency) / wall:.2f} req/s)")
    print(f"completion tokens      {res.tokens:8d}   ({res.tokens / wall:.1f} tok/s over all clients)")
    print(f"TTFT  p50 / p95        {_pct(res.ttft, 50):8.3f} / {_pct(res.ttft, 95):.3f} s")
    print(f"latency p50 / p95      {_pct(res.latency, 50):8.3f} / {_pct(res.latency, 95):.3f} s")
    for kind, n in sorted(res.counts.items()):
        print(f"{kind:<40} {n}")
    print(f"good-request failures  {len(res.failures):8d}")
    for failure in res.failures[:10]:
        print(f"   {failure}")
    print(f"server RSS before/after {rss_before:.1f} / {rss_after:.1f} MiB  (delta {rss_after - rss_before:+.1f})")
    print(f"slots idle after run   {health['slots_idle']}/{health['slots_total']}, queued {health['queued']}, "
          f"server alive: {alive}")
    return 0 if not res.failures and alive and health["slots_idle"] == health["slots_total"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""``linalign bench server``: the OpenAI-compatible server under load, run as
real processes on loopback (issue 11).

Each server is started here (``python -m linalign serve --port <free> ...``,
or another interpreter's), waited for, measured and stopped:

(a) load: 1, 2, 4, 8 concurrent streaming chat clients, each with a
    principle, each sending ``--requests`` requests back to back (temperature
    0, ``--max-tokens`` tokens); aggregate completion tokens/s over the level's
    wall time, TTFT p50/p95 (first content delta), on a server started with
    ``--parallel`` = the most clients (or ``--parallel``); once more with
    flash attention the other way (its share of the scaling, in the same
    run);
(b) multi-turn: one chat of ``--turns`` turns that resends its growing
    history (each turn appends the assistant's reply and a new user message),
    TTFT and ``usage.prompt_tokens_details.cached_tokens`` per turn, on a fresh
    server with the prompt cache and on one with ``--no-cache-prompt``;
(c) the same load and chat on "today's design" (``--baseline-python``: an
    interpreter where linalign at commit c97029f is installed: one forked
    context per slot, no prompt cache) and on llama-cpp-python's own server
    (``--llama-cpp-server-python``; plain decoding: it ignores ``principle``
    and decodes one request at a time);
memory: the server's RSS (with its children) at ``--memory-parallel`` slots,
    idle and after one request per slot at once, new design against
    c97029f's, same ``--n-ctx``.

Every user message in the load is distinct, so a prompt cache can only reuse
the chat template and the system message (the principle); the mean
``cached_tokens`` per request is reported with each level.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .processes import stop_process

__all__ = ["ServerBenchConfig", "ServerProcess", "format_table", "free_port", "peak_rss_bytes", "percentile",
           "rss_bytes", "run_server_bench", "write_json", "write_png", "write_txt"]

_MiB = 1024 * 1024

PRINCIPLES = [
    "Always answer like a pirate.",
    "The user is a five-year-old child.",
    "Answer as a formal butler would.",
    "The user is a retired professor of mathematics.",
    "Be enthusiastic and use many exclamation marks.",
    "Answer as a grumpy old sailor.",
    "The user is a busy doctor; be concise.",
    "Speak like a medieval knight.",
]
_ANIMALS = ["fox", "owl", "whale", "tiger", "rabbit", "crow", "turtle", "wolf", "otter", "camel", "heron", "moose"]
_PLACES = ["a library", "the desert", "a lighthouse", "the city", "a snowy forest", "an island", "a market",
           "a castle", "a train", "the mountains", "a garden", "a submarine"]
CHAT_FIRST = "Tell me about the history of tea."
CHAT_FOLLOW_UPS = [
    "Why did it become so popular?",
    "Which countries drink the most tea today?",
    "How is green tea made?",
    "And black tea?",
    "What are the health effects?",
    "How should I brew a good cup?",
    "Give me one surprising fact about tea.",
    "Thank you. Can you sum up what we said?",
    "What about coffee?",
    "Which one would you choose?",
]
CHAT_PRINCIPLE = "The user is a curious child; explain simply."


def load_prompt(index: int) -> str:
    """The user message of the ``index``-th load request: distinct from every other one."""
    animal = _ANIMALS[index % len(_ANIMALS)]
    place = _PLACES[(index // len(_ANIMALS)) % len(_PLACES)]
    rnd = index // (len(_ANIMALS) * len(_PLACES))
    tail = f" (version {rnd + 1})" if rnd else ""
    return f"Write a long story about a {animal} in {place}{tail}."


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (inclusive method); None for no values."""
    values = sorted(values)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` and its children, now."""
    import psutil

    total = 0
    for p in _tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def peak_rss_bytes(pid: int) -> int | None:
    """Peak resident memory (Linux VmHWM) of process ``pid`` and its children; None elsewhere."""
    total = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p.pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) * 1024
        except (OSError, StopIteration):
            return None
    return total


# -- servers -------------------------------------------------------------------


@dataclass
class ServerSpec:
    """How to start one server under test."""

    label: str                 # names the server in the report
    kind: str                  # "linalign" (this design), "linalign-c97029f" or "llama-cpp-python"
    python: str
    args: list[str] = field(default_factory=list)  # beyond the model, port and n_ctx
    cache_prompt: bool | None = None  # None: not a linalign prompt cache

    def command(self, model: str, port: int, n_ctx: int) -> list[str]:
        if self.kind == "llama-cpp-python":
            return [self.python, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                    "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "False",
                    # by default a waiting request ends the running one early ([DONE] mid-answer)
                    "--interrupt_requests", "False", *self.args]
        # --count-passes: the report gives llama.cpp's forward passes per step
        return [self.python, "-m", "linalign", "serve", "--model", model, "--host", "127.0.0.1",
                "--port", str(port), "--n-ctx", str(n_ctx), "--count-passes", *self.args]


class ServerProcess:
    """A server in a child process on a free loopback port; a context manager
    that waits for it to answer and stops it at the end."""

    def __init__(self, cmd_of_port: Callable[[int], list[str]], *, health_path: str = "/health",
                 startup_timeout_s: float = 180) -> None:
        self.port = free_port()
        self.cmd = cmd_of_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.health_path = health_path
        self.startup_timeout_s = startup_timeout_s
        self._log = tempfile.TemporaryFile(mode="w+b")
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.returncode: int | None = None

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        import httpx

        start = time.perf_counter()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited at startup (status {self.process.returncode}): "
                                   f"{shlex.join(self.cmd)}\n{self.output_tail()}")
            try:
                if httpx.get(self.url + self.health_path, timeout=2).status_code == 200:
                    self.startup_s = time.perf_counter() - start
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer {self.health_path} in {self.startup_timeout_s:.0f} s: "
                           f"{shlex.join(self.cmd)}\n{self.output_tail()}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server and its children, now."""
        return rss_bytes(self.process.pid)

    def peak_rss_bytes(self) -> int | None:
        """Peak resident memory (Linux VmHWM) of the server and its children; None elsewhere."""
        return peak_rss_bytes(self.process.pid)

    def output_tail(self, n: int = 4000) -> str:
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(size - n, 0))
        return self._log.read().decode(errors="replace")

    def output_head(self, n: int = 2000) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read(n).decode(errors="replace")

    def stop(self) -> None:
        if self.process is None or self.returncode is not None:
            return
        self.returncode = stop_process(self.process, 30)


# -- clients -------------------------------------------------------------------


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float | None = None
    latency_s: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    tokens_from_usage: bool = True
    text: str = ""
    error: str | None = None


async def stream_chat(client: Any, url: str, messages: list[dict], *, max_tokens: int, principle: str | None,
                      seed: int = 0) -> RequestResult:
    """One streaming chat completion; the time to its first content delta,
    and its usage from the final chunk (content chunks counted where a server
    sends none)."""
    body: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": seed,
                            "stream": True, "stream_options": {"include_usage": True}}
    if principle:
        body["principle"] = principle
    start = time.perf_counter()
    first = None
    usage = None
    done = False
    content_chunks = 0
    parts: list[str] = []
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return RequestResult(False, error=f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return RequestResult(False, error=f"error event: {chunk['error'].get('message')}")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                choices = chunk.get("choices") or []
                if choices:
                    content = (choices[0].get("delta") or {}).get("content")
                    if content:
                        content_chunks += 1
                        parts.append(content)
                        if first is None:
                            first = time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - reported as a failed request
        return RequestResult(False, error=f"{type(e).__name__}: {e}")
    latency = time.perf_counter() - start
    if not done:
        return RequestResult(False, error="the stream ended without [DONE]")
    res = RequestResult(True, ttft_s=first, latency_s=latency, text="".join(parts))
    if usage is not None:
        res.completion_tokens = int(usage.get("completion_tokens") or 0)
        res.prompt_tokens = usage.get("prompt_tokens")
        res.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    else:
        res.completion_tokens = content_chunks
        res.tokens_from_usage = False
    return res


def _client(timeout_s: float) -> Any:
    import httpx

    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10),
                             limits=httpx.Limits(max_connections=4, max_keepalive_connections=4))


async def _load_level(url: str, n_clients: int, requests: int, max_tokens: int, first_index: int,
                      timeout_s: float) -> tuple[float, list[RequestResult]]:
    results: list[RequestResult] = []

    async def one_client(c: int) -> None:
        async with _client(timeout_s) as client:
            for r in range(requests):
                index = first_index + c * requests + r
                messages = [{"role": "user", "content": load_prompt(index)}]
                results.append(await stream_chat(client, url, messages, max_tokens=max_tokens,
                                                 principle=PRINCIPLES[c % len(PRINCIPLES)], seed=index))

    start = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(n_clients)))
    return time.perf_counter() - start, results


def _level_summary(n_clients: int, wall: float, results: list[RequestResult]) -> dict:
    good = [r for r in results if r.ok]
    ttft = [r.ttft_s for r in good if r.ttft_s is not None]
    latency = [r.latency_s for r in good]
    tokens = sum(r.completion_tokens for r in good)
    cached = [r.cached_tokens for r in good if r.cached_tokens is not None]
    prompt = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    return {
        "clients": n_clients,
        "requests": len(results),
        "good": len(good),
        "errors": [r.error for r in results if not r.ok],
        "wall_s": wall,
        "completion_tokens": tokens,
        "tokens_from_usage": all(r.tokens_from_usage for r in good),
        "tok_s": tokens / wall if wall > 0 else None,
        "mean_tokens_per_request": tokens / len(good) if good else None,
        "ttft_s": {"p50": percentile(ttft, 50), "p95": percentile(ttft, 95), "n": len(ttft)},
        "latency_s": {"p50": percentile(latency, 50), "p95": percentile(latency, 95)},
        "mean_prompt_tokens": statistics.mean(prompt) if prompt else None,
        "mean_cached_tokens": statistics.mean(cached) if cached else None,
    }


async def _multiturn(url: str, turns: int, max_tokens: int, timeout_s: float) -> list[dict]:
    rows = []
    messages: list[dict] = [{"role": "user", "content": CHAT_FIRST}]
    async with _client(timeout_s) as client:
        for turn in range(1, turns + 1):
            res = await stream_chat(client, url, messages, max_tokens=max_tokens, principle=CHAT_PRINCIPLE,
                                    seed=turn)
            rows.append({"turn": turn, "ok": res.ok, "error": res.error, "ttft_s": res.ttft_s,
                         "latency_s": res.latency_s, "prompt_tokens": res.prompt_tokens,
                         "cached_tokens": res.cached_tokens, "completion_tokens": res.completion_tokens,
                         "messages": len(messages)})
            if not res.ok:
                break
            messages.append({"role": "assistant", "content": res.text})
            messages.append({"role": "user", "content": CHAT_FOLLOW_UPS[(turn - 1) % len(CHAT_FOLLOW_UPS)]})
    return rows


def _engine_counters(url: str) -> tuple[int, int] | None:
    """linalign's (decode_calls, forward_passes) from /health; None from other servers."""
    import httpx

    try:
        body = httpx.get(url + "/health", timeout=5).json()
        return int(body["decode_calls"]), int(body["forward_passes"])  # null (TypeError) without --count-passes
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


async def _warm_up(url: str, timeout_s: float) -> RequestResult:
    async with _client(timeout_s) as client:
        return await stream_chat(client, url, [{"role": "user", "content": "Hi"}], max_tokens=4,
                                 principle=PRINCIPLES[0])


# -- the benchmark -------------------------------------------------------------


@dataclass
class ServerBenchConfig:
    model: str | None = None
    clients: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    requests: int = 3
    reps: int = 3                     # times the whole client sweep runs; tok/s is the median repetition
    max_tokens: int = 64
    turns: int = 8
    parallel: int | None = None       # None: the most clients
    memory_parallel: int = 4
    n_ctx: int = 2048
    threads: int | None = None        # None: each server's default
    n_batch: int | None = None
    flash_attn: str | None = None     # linalign serve --flash-attn (None: its default, off on the CPU)
    python: str = field(default_factory=lambda: sys.executable)
    baseline_python: str | None = None
    llama_cpp_server_python: str | None = None
    load: bool = True
    multiturn: bool = True
    memory: bool = True
    request_timeout_s: float = 600
    startup_timeout_s: float = 180
    command: str = ""


_FA_OFF, _FA_ON = "linalign -fa off", "linalign -fa on"


def _specs(cfg: ServerBenchConfig) -> dict[str, ServerSpec]:
    threads: list[str] = []
    if cfg.threads is not None:
        threads = ["--threads", str(cfg.threads), "--threads-batch", str(cfg.threads)]
    if cfg.n_batch is not None:
        threads += ["--n-batch", str(cfg.n_batch)]
    fa = [] if cfg.flash_attn is None else ["--flash-attn", cfg.flash_attn]
    fa_on = cfg.flash_attn in ("on", "auto")  # auto: on for this model on the CPU (llama.cpp's log says so)
    specs = {"linalign": ServerSpec("linalign", "linalign", cfg.python, [*threads, *fa], cache_prompt=True),
             "linalign --no-cache-prompt": ServerSpec("linalign --no-cache-prompt", "linalign", cfg.python,
                                                      [*threads, *fa, "--no-cache-prompt"], cache_prompt=False)}
    # the load once more with flash attention switched: its share of the scaling, in the same run
    other = _FA_OFF if fa_on else _FA_ON
    specs[other] = ServerSpec(other, "linalign", cfg.python,
                              [*threads, "--flash-attn", "off" if fa_on else "on"], cache_prompt=True)
    if cfg.baseline_python:
        # c97029f's serve has neither --threads nor a prompt cache (each fork: n_ctx, cpu_count // 2 threads)
        specs["c97029f"] = ServerSpec("c97029f", "linalign-c97029f", cfg.baseline_python)
    if cfg.llama_cpp_server_python:
        extra: list[str] = []
        if cfg.threads is not None:
            extra = ["--n_threads", str(cfg.threads), "--n_threads_batch", str(cfg.threads)]
        if cfg.n_batch is not None:
            extra += ["--n_batch", str(cfg.n_batch)]
        if fa_on:  # the same attention kernels as linalign's row
            extra += ["--flash_attn", "true"]
        specs["llama-cpp-python"] = ServerSpec("llama-cpp-python", "llama-cpp-python", cfg.llama_cpp_server_python,
                                               extra)
    return specs


def _start(spec: ServerSpec, cfg: ServerBenchConfig, model: str, parallel: int | None) -> ServerProcess:
    extra = []
    if parallel is not None and spec.kind != "llama-cpp-python":
        extra = ["--parallel", str(parallel), "--queue", str(max(64, 4 * parallel))]
    server = ServerProcess(lambda port: spec.command(model, port, cfg.n_ctx) + extra,
                           health_path="/v1/models" if spec.kind == "llama-cpp-python" else "/health",
                           startup_timeout_s=cfg.startup_timeout_s)
    server.start()
    return server


def _server_info(spec: ServerSpec, server: ServerProcess, parallel: int | None) -> dict:
    banner = next((ln for ln in server.output_head().splitlines() if ln.startswith("linalign serve:")), None)
    return {"command": shlex.join(server.cmd), "kind": spec.kind, "parallel": parallel if spec.kind != "llama-cpp-python" else 1,
            "cache_prompt": spec.cache_prompt, "startup_s": server.startup_s, "banner": banner}


def run_server_bench(cfg: ServerBenchConfig, log: Callable[[str], None] = lambda s: None) -> dict:
    """Runs the benchmark; returns the result document (see :func:`format_table`)."""
    from .. import default_model_path
    from .runner import _cpu_name

    model = str(Path(cfg.model).resolve()) if cfg.model else str(default_model_path())
    parallel = cfg.parallel or max(cfg.clients)
    specs = _specs(cfg)
    load_start = os.getloadavg()
    doc: dict[str, Any] = {
        "command": cfg.command,
        "config": {**asdict(cfg), "parallel": parallel},
        "machine": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": load_start},
        "model": {"path": model, "size_bytes": os.path.getsize(model)},
        "servers": {},
        "load": {},
        "multiturn": {},
        "memory": {},
        "errors": [],
    }
    timeout = cfg.request_timeout_s

    def note_error(where: str, error: str) -> None:
        log(f"ERROR {where}: {error}")
        doc["errors"].append(f"{where}: {error}")

    def finish(spec: ServerSpec, server: ServerProcess, key: str, slots: int | None) -> None:
        alive = server.alive
        server.stop()
        doc["servers"].setdefault(spec.label, {})[key] = {**_server_info(spec, server, slots), "alive_at_end": alive,
                                                         "returncode": server.returncode}
        if not alive:
            note_error(f"{spec.label} ({key})", f"the server died (status {server.returncode}):\n"
                                                f"{server.output_tail(1500)}")

    # (a) and (c): the load sweep, one server start per design
    if cfg.load:
        for label in [k for k in specs if k != "linalign --no-cache-prompt"]:
            spec = specs[label]
            log(f"load: starting {label} (parallel {parallel})")
            try:
                server = _start(spec, cfg, model, parallel)
            except RuntimeError as e:
                note_error(f"{label} load", str(e))
                continue
            try:
                warm = asyncio.run(_warm_up(server.url, timeout))
                if not warm.ok:
                    note_error(f"{label} warm-up", warm.error or "?")
                entry: dict[str, Any] = {"parallel": parallel if spec.kind != "llama-cpp-python" else 1,
                                         "rss_idle_bytes": server.rss_bytes(), "levels": []}
                index = 0
                runs: dict[int, list] = {n: [] for n in cfg.clients}
                # the sweep cfg.reps times over, so that a slow moment of the
                # machine falls on one repetition of a level, not on one level
                for rep in range(cfg.reps):
                    for n in cfg.clients:
                        before = _engine_counters(server.url)
                        wall, results = asyncio.run(_load_level(server.url, n, cfg.requests, cfg.max_tokens,
                                                                index, timeout))
                        after = _engine_counters(server.url)
                        index += n * cfg.requests
                        tok_s = _level_summary(n, wall, results)["tok_s"] or 0.0
                        runs[n].append((wall, results, tok_s, before, after))
                        log(f"  {label}: {n} clients (rep {rep + 1}/{cfg.reps}): {tok_s:.1f} tok/s")
                for n in cfg.clients:
                    level = _level_summary(n, sum(w for w, *_ in runs[n]), [r for _, rs, *_ in runs[n] for r in rs])
                    level["tok_s_reps"] = [tok_s for _, _, tok_s, *_ in runs[n]]
                    level["tok_s"] = statistics.median(level["tok_s_reps"])  # the median repetition
                    # linalign only: llama.cpp's forward passes per engine step (1 when no batch was split)
                    counted = [(a[0] - b[0], a[1] - b[1]) for *_, b, a in runs[n] if a and b]
                    steps = sum(c[0] for c in counted)
                    level["passes_per_step"] = sum(c[1] for c in counted) / steps if steps else None
                    entry["levels"].append(level)
                    for err in level["errors"][:3]:
                        note_error(f"{label} load {n} clients", err)
                    t50 = level["ttft_s"]["p50"]
                    log(f"  {label}: {n} clients: {level['tok_s'] or 0:.1f} tok/s (median of {cfg.reps}), TTFT p50 "
                        f"{t50 * 1e3 if t50 is not None else float('nan'):.0f} ms, "
                        f"{level['good']}/{level['requests']} good")
                entry["rss_after_bytes"] = server.rss_bytes()
                entry["peak_rss_bytes"] = server.peak_rss_bytes()
                doc["load"][label] = entry
            finally:
                finish(spec, server, "load", parallel)

    # (b) multi-turn on fresh servers, then memory at --memory-parallel slots
    mt_labels = [k for k in specs if k not in ("llama-cpp-python", _FA_OFF, _FA_ON)] + (
        ["llama-cpp-python"] if "llama-cpp-python" in specs else [])
    if cfg.multiturn or cfg.memory:
        for label in mt_labels:
            spec = specs[label]
            do_memory = cfg.memory and spec.kind != "llama-cpp-python" and label != "linalign --no-cache-prompt"
            if not cfg.multiturn and not do_memory:
                continue
            mp = cfg.memory_parallel if spec.kind != "llama-cpp-python" else None
            log(f"multi-turn/memory: starting {label} (parallel {mp or 1})")
            try:
                server = _start(spec, cfg, model, mp)
            except RuntimeError as e:
                note_error(f"{label} multi-turn/memory", str(e))
                continue
            try:
                rss_idle = server.rss_bytes()
                warm = asyncio.run(_warm_up(server.url, timeout))
                if not warm.ok:
                    note_error(f"{label} warm-up", warm.error or "?")
                if cfg.multiturn:
                    rows = asyncio.run(_multiturn(server.url, cfg.turns, cfg.max_tokens, timeout))
                    doc["multiturn"][label] = {"cache_prompt": spec.cache_prompt, "turns": rows}
                    for row in rows:
                        if not row["ok"]:
                            note_error(f"{label} multi-turn turn {row['turn']}", row["error"] or "?")
                    log(f"  {label}: TTFT per turn (ms) " + " ".join(
                        f"{r['ttft_s'] * 1e3:.0f}" if r["ttft_s"] is not None else "-" for r in rows)
                        + "; cached " + " ".join(str(r["cached_tokens"]) for r in rows))
                if do_memory:
                    wall, results = asyncio.run(_load_level(server.url, cfg.memory_parallel, 1, cfg.max_tokens,
                                                            10_000, timeout))
                    bad = [r.error for r in results if not r.ok]
                    for err in bad[:3]:
                        note_error(f"{label} memory load", err or "?")
                    doc["memory"][label] = {"parallel": cfg.memory_parallel, "n_ctx": cfg.n_ctx,
                                            "rss_idle_bytes": rss_idle, "rss_after_load_bytes": server.rss_bytes(),
                                            "peak_rss_bytes": server.peak_rss_bytes(),
                                            "load_requests_good": len(results) - len(bad)}
                    log(f"  {label}: RSS at parallel {cfg.memory_parallel}: "
                        f"{doc['memory'][label]['rss_after_load_bytes'] / _MiB:.1f} MiB after load")
            finally:
                finish(spec, server, "multiturn", mp)

    doc["machine"]["loadavg_end"] = os.getloadavg()
    doc["targets"] = _targets(doc)
    return doc


def scaling(entry: dict, clients: int) -> float | None:
    """Aggregate tok/s at ``clients`` over one client's: the median over the
    repetitions of the ratio within each (its two levels ran minutes apart
    at most, so a drift of the machine's speed between repetitions cancels);
    with one repetition, the plain ratio."""
    levels = {lv["clients"]: lv for lv in entry["levels"]}
    one, many = levels.get(1), levels.get(clients)
    if not one or not many or not one["tok_s"] or many["tok_s"] is None:
        return None
    pairs = [m / o for o, m in zip(one.get("tok_s_reps") or [], many.get("tok_s_reps") or []) if o]
    return statistics.median(pairs) if pairs else many["tok_s"] / one["tok_s"]


def _targets(doc: dict) -> list[dict]:
    out = []

    def add(name: str, value: Any, op: str, bound: Any) -> None:
        if value is None:
            met = False
        elif op == ">=":
            met = value >= bound
        elif op == "<=":
            met = value <= bound
        else:
            met = bool(value) == bound
        out.append({"target": name, "value": value, "op": op, "bound": bound, "met": met})

    load = doc["load"].get("linalign")
    if load:
        ratio = scaling(load, 4)
        if ratio is not None:
            add("linalign aggregate tok/s, 4 clients / 1 client (median of the repetitions' ratios)", ratio,
                ">=", 1.3)
    mt = doc["multiturn"].get("linalign")
    if mt and mt["turns"]:
        rows = mt["turns"]
        first, last = rows[0], rows[-1]
        if len(rows) > 1 and first["ttft_s"] and last["ttft_s"] is not None:
            add(f"linalign with prompt cache: turn-{last['turn']} TTFT / turn-1 TTFT", last["ttft_s"] / first["ttft_s"],
                "<=", 1.5)
        if len(rows) > 1:
            add("linalign with prompt cache: cached_tokens > 0 on every turn from turn 2",
                all((r["cached_tokens"] or 0) > 0 for r in rows[1:]), "==", True)
    return out


# -- report --------------------------------------------------------------------


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.0f}"


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / _MiB:.1f}"


def format_table(doc: dict) -> str:
    cfg, m = doc["config"], doc["machine"]
    lines = [
        f"linalign bench server: {Path(doc['model']['path']).name}; machine: {m['cpu']}, {m['cpu_count']} CPUs; "
        f"load avg {m['loadavg_start'][0]:.2f} at start, {m.get('loadavg_end', [float('nan')])[0]:.2f} at end",
        f"n_ctx {cfg['n_ctx']} per stream; threads {cfg['threads'] or 'server default'}; "
        f"flash attention {cfg.get('flash_attn') or 'server default'}; temperature 0; "
        f"max_tokens {cfg['max_tokens']}; {cfg['requests']} requests per client back to back, streaming, "
        f"each client its own principle; the client sweep {cfg.get('reps', 1)} times, interleaved",
    ]
    if doc["load"]:
        lines += ["", "(a) load: aggregate completion tok/s over all clients (the median repetition, and the "
                      "range), x 1 client (the median of the repetitions' own ratios), TTFT p50/p95 ms, "
                      "latency p50 ms, "
                      "mean completion tokens and cached prompt tokens per request, llama.cpp forward passes "
                      "per engine step (linalign: 1 where no batch was split)",
                  f"  {'server':18s} {'slots':>5s} {'clients':>7s} {'tok/s':>8s} {'min-max':>11s} {'x 1 cl.':>7s} {'TTFT p50':>9s} "
                  f"{'p95':>7s} {'lat p50':>8s} {'tok/req':>7s} {'cached':>6s} {'pass/st':>7s} {'good':>7s}"]
        for label, entry in doc["load"].items():
            for lv in entry["levels"]:
                r = scaling(entry, lv["clients"])
                ratio = "-" if r is None else f"{r:.2f}"
                tpr = "-" if lv["mean_tokens_per_request"] is None else f"{lv['mean_tokens_per_request']:.1f}"
                if not lv["tokens_from_usage"]:
                    tpr += "*"
                cached = "-" if lv["mean_cached_tokens"] is None else f"{lv['mean_cached_tokens']:.0f}"
                tok_s = "-" if lv["tok_s"] is None else f"{lv['tok_s']:.1f}"
                pps = "-" if lv.get("passes_per_step") is None else f"{lv['passes_per_step']:.2f}"
                reps = lv.get("tok_s_reps") or []
                spread = f"{min(reps):.0f}-{max(reps):.0f}" if reps else "-"
                lines.append(f"  {label:18s} {entry['parallel']:5d} {lv['clients']:7d} {tok_s:>8s} {spread:>11s} {ratio:>7s} "
                             f"{_ms(lv['ttft_s']['p50']):>9s} {_ms(lv['ttft_s']['p95']):>7s} "
                             f"{_ms(lv['latency_s']['p50']):>8s} {tpr:>7s} {cached:>6s} {pps:>7s} "
                             f"{lv['good']:>3d}/{lv['requests']:<3d}")
        if any(not lv["tokens_from_usage"] for e in doc["load"].values() for lv in e["levels"]):
            lines.append("  * no usage chunk from this server: tokens counted as content chunks")
        lines.append("  server RSS after the load: " + "; ".join(
            f"{label} {_mib(e.get('rss_after_bytes'))} MiB (peak {_mib(e.get('peak_rss_bytes'))})"
            for label, e in doc["load"].items()))
    if doc["multiturn"]:
        labels = list(doc["multiturn"])
        n_turns = max(len(v["turns"]) for v in doc["multiturn"].values())
        lines += ["", f"(b) {n_turns}-turn chat resending its history: TTFT ms (cached prompt tokens / prompt tokens)"]
        head = f"  {'turn':>4s}" + "".join(f" {lab[:26]:>26s}" for lab in labels)
        lines.append(head)
        for t in range(n_turns):
            cells = []
            for lab in labels:
                rows = doc["multiturn"][lab]["turns"]
                if t >= len(rows) or not rows[t]["ok"]:
                    cells.append("failed" if t < len(rows) else "-")
                    continue
                r = rows[t]
                cached = "-" if r["cached_tokens"] is None else str(r["cached_tokens"])
                prompt = "-" if r["prompt_tokens"] is None else str(r["prompt_tokens"])
                cells.append(f"{_ms(r['ttft_s'])} ({cached}/{prompt})")
            lines.append(f"  {t + 1:4d}" + "".join(f" {c:>26s}" for c in cells))
        ratios = []
        for lab in labels:
            rows = doc["multiturn"][lab]["turns"]
            if len(rows) > 1 and rows[0]["ttft_s"] and rows[-1]["ttft_s"] is not None:
                ratios.append(f"{lab} {rows[-1]['ttft_s'] / rows[0]['ttft_s']:.2f}")
        if ratios:
            lines.append(f"  last turn TTFT / turn-1 TTFT: " + "; ".join(ratios))
    if doc["memory"]:
        lines += ["", f"memory: server RSS (with children), MiB, at --parallel {cfg['memory_parallel']}, "
                      f"--n-ctx {cfg['n_ctx']}: idle after start; after the chat and {cfg['memory_parallel']} "
                      "requests at once; peak"]
        for label, e in doc["memory"].items():
            lines.append(f"  {label:18s} idle {_mib(e['rss_idle_bytes']):>8s}   after load "
                         f"{_mib(e['rss_after_load_bytes']):>8s}   peak {_mib(e['peak_rss_bytes']):>8s}")
        if "linalign" in doc["memory"] and "c97029f" in doc["memory"]:
            new, old = doc["memory"]["linalign"], doc["memory"]["c97029f"]
            lines.append(f"  linalign / c97029f after load: "
                         f"{new['rss_after_load_bytes'] / old['rss_after_load_bytes']:.2f}")
        lines.append(f"  (weights file: {doc['model']['size_bytes'] / _MiB:.1f} MiB)")
    if doc["servers"]:
        lines += ["", "servers (as started):"]
        for label, runs in doc["servers"].items():
            for key, info in runs.items():
                lines.append(f"  {label} [{key}, {info['startup_s'] or 0:.1f} s to start]: {info['command']}")
    if doc.get("targets"):
        lines += ["", "targets (issue 11)"]
        for t in doc["targets"]:
            v = f"{t['value']:.3f}" if isinstance(t["value"], float) else str(t["value"])
            lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {v} (target {t['op']} {t['bound']})")
    if doc["errors"]:
        lines += ["", f"errors ({len(doc['errors'])}):"] + [f"  {e.splitlines()[0][:200]}" for e in doc["errors"][:20]]
    return "\n".join(lines)


def write_json(doc: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")


def write_txt(doc: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"command: {doc['command']}\n\n{format_table(doc)}\n")


_COLORS = {"linalign": "tab:orange", "linalign --no-cache-prompt": "tab:red", _FA_OFF: "tab:brown",
           _FA_ON: "tab:olive",
           "c97029f": "tab:gray", "llama-cpp-python": "tab:blue"}


def write_png(doc: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    for label, entry in doc["load"].items():
        xs = [lv["clients"] for lv in entry["levels"]]
        ys = [lv["tok_s"] or 0 for lv in entry["levels"]]
        ax.plot(xs, ys, marker="o", label=f"{label} (slots {entry['parallel']})", color=_COLORS.get(label))
    if doc["load"]:
        ax.set_xscale("log", base=2)
        ax.set_xticks(doc["config"]["clients"], [str(c) for c in doc["config"]["clients"]])
        ax.legend(fontsize=8)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrent streaming clients")
    ax.set_ylabel("aggregate completion tokens/s")
    ax.set_title("(a) throughput (higher is better)")
    ax.grid(alpha=0.3)
    ax = axes[1]
    for label, mt in doc["multiturn"].items():
        rows = [r for r in mt["turns"] if r["ok"] and r["ttft_s"] is not None]
        ax.plot([r["turn"] for r in rows], [r["ttft_s"] * 1e3 for r in rows], marker="o", label=label,
                color=_COLORS.get(label))
    if doc["multiturn"]:
        ax.legend(fontsize=8)
        ax.set_xticks(range(1, max(len(mt["turns"]) for mt in doc["multiturn"].values()) + 1))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("turn (the history grows)")
    ax.set_ylabel("TTFT, ms")
    ax.set_title("(b) multi-turn chat: time to first token (lower is better)")
    ax.grid(alpha=0.3)
    m, cfg = doc["machine"], doc["config"]
    fig.suptitle(f"linalign bench server: {Path(doc['model']['path']).name}, {m['cpu']} x{m['cpu_count']}, "
                 f"n_ctx {cfg['n_ctx']}, {cfg['max_tokens']} tokens, temperature 0", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- command line --------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    import argparse

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("a comma-separated list of integers, e.g. 1,2,4,8") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of integers >= 1")
    return values


def main(argv: Sequence[str]) -> int:
    """``linalign bench server [options]``; returns the exit status (1 when a request or a server failed)."""
    import argparse

    p = argparse.ArgumentParser(prog="linalign bench server",
                                description="the OpenAI-compatible server under concurrent streaming load, "
                                            "a multi-turn chat with and without the prompt cache, memory; "
                                            "against commit c97029f and llama-cpp-python's server if given")
    p.add_argument("--model", help="GGUF file (default: the default model)")
    p.add_argument("--clients", type=_int_list, default=[1, 2, 4, 8],
                   help="concurrency levels, comma-separated (default 1,2,4,8)")
    p.add_argument("--requests", type=int, default=3, help="requests per client, back to back (default 3)")
    p.add_argument("--reps", type=int, default=3,
                   help="times the client sweep runs, interleaved; tok/s is the median repetition (default 3)")
    p.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request (default 64)")
    p.add_argument("--turns", type=int, default=8, help="turns of the multi-turn chat (default 8)")
    p.add_argument("--parallel", type=int, help="server slots for the load (default: the most clients)")
    p.add_argument("--memory-parallel", type=int, default=4,
                   help="server slots for the multi-turn chat and the memory probe (default 4)")
    p.add_argument("--n-ctx", type=int, default=2048, help="context per stream, every server (default 2048)")
    p.add_argument("--threads", type=int,
                   help="--threads/--threads-batch of linalign's and llama-cpp-python's servers (default: theirs; "
                        "c97029f's server takes none)")
    p.add_argument("--n-batch", type=int, help="--n-batch of linalign's and llama-cpp-python's servers (default: theirs)")
    p.add_argument("--flash-attn", choices=["auto", "on", "off"], default=None,
                   help="linalign serve --flash-attn (default: the server's, off on the CPU); the load also runs "
                        "once with it the other way; llama-cpp-python's server gets --flash_attn true when on")
    p.add_argument("--python", default=sys.executable, help="interpreter of the server under test (default: this one)")
    p.add_argument("--baseline-python", metavar="PATH",
                   help="interpreter where linalign@c97029f is installed (benchmarks/prepare_baseline.sh)")
    p.add_argument("--llama-cpp-server-python", metavar="PATH",
                   help="interpreter with llama-cpp-python[server]==0.3.36 (benchmarks/prepare_baseline.sh)")
    p.add_argument("--no-load", dest="load", action="store_false", help="skip (a), the load sweep")
    p.add_argument("--no-multiturn", dest="multiturn", action="store_false", help="skip (b), the multi-turn chat")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory probe")
    p.add_argument("--request-timeout", type=float, default=600, help="seconds per request (default 600)")
    p.add_argument("--out-dir", metavar="DIR", help="write DIR/bench-server.{txt,json,png}")
    p.add_argument("--txt", metavar="OUT", help="write the table, headed by the command, here")
    p.add_argument("--json", metavar="OUT", help="write the result document here")
    p.add_argument("--png", metavar="OUT", help="write the charts here")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(list(argv))
    if min(args.requests, args.reps, args.max_tokens, args.turns, args.memory_parallel) < 1:
        p.error("--requests, --reps, --max-tokens, --turns and --memory-parallel must be >= 1")
    if args.parallel is not None and args.parallel < 1:
        p.error("--parallel must be >= 1")
    for flag in ("baseline_python", "llama_cpp_server_python", "python"):
        path = getattr(args, flag)
        if path and not os.access(path, os.X_OK):
            p.error(f"--{flag.replace('_', '-')}: not an executable: {path}")
    txt, js, png = args.txt, args.json, args.png
    if args.out_dir:
        out = Path(args.out_dir)
        txt = txt or str(out / "bench-server.txt")
        js = js or str(out / "bench-server.json")
        png = png or str(out / "bench-server.png")

    cfg = ServerBenchConfig(model=args.model, clients=args.clients, requests=args.requests, reps=args.reps,
                            max_tokens=args.max_tokens, turns=args.turns, parallel=args.parallel,
                            memory_parallel=args.memory_parallel, n_ctx=args.n_ctx, threads=args.threads,
                            n_batch=args.n_batch, flash_attn=args.flash_attn, python=args.python, baseline_python=args.baseline_python,
                            llama_cpp_server_python=args.llama_cpp_server_python, load=args.load,
                            multiturn=args.multiturn, memory=args.memory, request_timeout_s=args.request_timeout,
                            command=shlex.join(["linalign", "bench", "server", *argv]))
    log = (lambda s: None) if args.quiet else (lambda s: print(f"[bench server] {s}", file=sys.stderr, flush=True))
    doc = run_server_bench(cfg, log=log)
    print(format_table(doc))
    if txt:
        write_txt(doc, txt)
    if js:
        write_json(doc, js)
    if png:
        write_png(doc, png)
    return 1 if doc["errors"] else 0

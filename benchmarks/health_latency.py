"""How long GET /health takes while another request prefills a long prompt:
the event loop must not wait for the engine's decode steps.

Starts `linalign serve` on the default model, sends one completion with a
~1,500-token prompt, and polls /health every --interval seconds until that
request's answer is back; prints the latency percentiles of the polls made
while it ran, and the same for an idle server as the baseline.

    python benchmarks/health_latency.py [--prompt-tokens 1500] [--reps 3]

Run it with PYTHONPATH pointing at another checkout's python/ (with a built
_core) to measure that version the same way.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(n_ctx: int) -> tuple[subprocess.Popen, str, object]:
    port = _free_port()
    log = tempfile.TemporaryFile("w+")
    cmd = [sys.executable, "-m", "linalign", "serve", "--port", str(port), "--n-ctx", str(n_ctx),
           "--parallel", "2", "--queue", "4"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the server exited:\n{log.read()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def poll_health(url: str, stop: threading.Event, interval: float) -> list[float]:
    latencies = []
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            start = time.perf_counter()
            client.get(f"{url}/health").raise_for_status()
            latencies.append(time.perf_counter() - start)
            time.sleep(interval)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-tokens", type=int, default=1500, help="about this many prompt tokens (default 1500)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--interval", type=float, default=0.01, help="seconds between polls (default 0.01)")
    args = p.parse_args()

    import linalign
    print(f"linalign from {os.path.dirname(linalign.__file__)}")
    proc, url, log = start_server(n_ctx=args.prompt_tokens + 512)
    try:
        # "word " is about one token each on the default model; different per rep, so no cache reuse
        rows = []
        for rep in range(args.reps):
            stop = threading.Event()
            idle = []
            idle_thread = threading.Thread(target=lambda: idle.extend(poll_health(url, stop, args.interval)))
            idle_thread.start()
            time.sleep(1.0)
            stop.set()
            idle_thread.join()

            stop = threading.Event()
            busy: list[float] = []
            poller = threading.Thread(target=lambda: busy.extend(poll_health(url, stop, args.interval)))
            prompt = f"Rep {rep}. " + "word " * args.prompt_tokens + "\nSummary:"
            poller.start()
            start = time.perf_counter()
            r = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": 4, "temperature": 0},
                           timeout=600)
            elapsed = time.perf_counter() - start
            stop.set()
            poller.join()
            r.raise_for_status()
            prompt_tokens = r.json()["usage"]["prompt_tokens"]
            rows.append((prompt_tokens, elapsed, idle, busy))
        print(f"{'rep':>3} {'prompt':>6} {'request s':>9} | {'idle p50 ms':>11} {'idle p99 ms':>11} | "
              f"{'polls':>5} {'busy p50 ms':>11} {'busy p99 ms':>11} {'busy max ms':>11}")
        for i, (n, elapsed, idle, busy) in enumerate(rows):
            print(f"{i:>3} {n:>6} {elapsed:>9.2f} | {1e3 * statistics.median(idle):>11.1f} "
                  f"{1e3 * percentile(idle, 0.99):>11.1f} | {len(busy):>5} {1e3 * statistics.median(busy):>11.1f} "
                  f"{1e3 * percentile(busy, 0.99):>11.1f} {1e3 * max(busy):>11.1f}")
        all_busy = [x for row in rows for x in row[3]]
        print(f"all reps: /health p99 {1e3 * percentile(all_busy, 0.99):.1f} ms over {len(all_busy)} polls "
              f"while a {rows[0][0]}-token prompt prefilled")
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()

"""A server restart with --slot-save-path: what restoring a saved
conversation costs against answering it warm and prefilling it cold.

The conversation is python/linalign/data/long_chat.json (about 1,500 tokens),
aligned with a principle at the end (the default placement). Each rep:

1. server A answers the conversation (its cache now holds it), saves slot 0
   (POST /slots/0?action=save), then answers the next turn: **warm** is that
   turn's TTFT (time to the first content token, streamed).
2. A stops; server B starts on the same folder and restores slot 0: the
   **restored** figure is the restore call's time plus the next turn's TTFT.
3. B erases slot 0 and answers the next turn again from nothing: **cold**,
   the full prefill.

Every request goes to slot 0 (id_slot) and is greedy. Prints the medians
and writes every run as JSON.

    python benchmarks/slot_restore.py [--reps 5] [--out docs/bench-slot-restore.json]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from linalign.benchmarking.processes import stop_process

PRINCIPLE = "The user is a five-year-old child."
DATA = Path(__file__).resolve().parents[1] / "python" / "linalign" / "data" / "long_chat.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A ``linalign serve`` process on a free port."""

    def __init__(self, slot_dir: str, n_ctx: int) -> None:
        port = _free_port()
        self.log = tempfile.TemporaryFile("w+")
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "linalign", "serve", "--port", str(port), "--n-ctx",
                                      str(n_ctx), "--slot-save-path", slot_dir], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"the server exited:\n{self.log.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not start")

    def post(self, path: str, body: dict | None = None) -> tuple[dict, float]:
        start = time.perf_counter()
        response = httpx.post(f"{self.url}{path}", json=body, timeout=600)
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        return response.json(), elapsed

    def turn(self, messages: list[dict], max_tokens: int) -> tuple[str, float, int]:
        """(answer, TTFT in seconds, cached_tokens) of one streamed, greedy turn."""
        body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": 1, "stream": True,
                "stream_options": {"include_usage": True}, "principle": PRINCIPLE, "id_slot": 0}
        text, ttft, cached = "", None, -1
        start = time.perf_counter()
        with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=body, timeout=600) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    cached = chunk["usage"]["prompt_tokens_details"]["cached_tokens"]
                for choice in chunk.get("choices", []):
                    content = choice.get("delta", {}).get("content")
                    if content:
                        ttft = ttft if ttft is not None else time.perf_counter() - start
                        text += content
        return text, ttft if ttft is not None else float("nan"), cached

    def stop(self) -> None:
        stop_process(self.proc, 15)
        self.log.close()


def one_rep(slot_dir: str, n_ctx: int, answer_tokens: int) -> dict:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    conversation = data["messages"]
    a = Served(slot_dir, n_ctx)
    try:
        answer, _, _ = a.turn(conversation, answer_tokens)
        nxt = conversation + [{"role": "assistant", "content": answer}, {"role": "user", "content": data["next_turn"]}]
        saved, save_s = a.post("/slots/0?action=save", {"filename": "long_chat.slot"})
        _, warm, warm_cached = a.turn(nxt, 4)
    finally:
        a.stop()
    b = Served(slot_dir, n_ctx)
    try:
        restored, restore_s = b.post("/slots/0?action=restore", {"filename": "long_chat.slot"})
        _, ttft_restored, restored_cached = b.turn(nxt, 4)
        b.post("/slots/0?action=erase")
        _, cold, cold_cached = b.turn(nxt, 4)
    finally:
        b.stop()
    return {"warm_ttft_s": warm, "restore_s": restore_s, "restored_ttft_s": ttft_restored,
            "restored_total_s": restore_s + ttft_restored, "cold_ttft_s": cold, "save_s": save_s,
            "cached_tokens": {"warm": warm_cached, "restored": restored_cached, "cold": cold_cached},
            "n_saved": saved["n_saved"], "file_bytes": saved["n_written"],
            "streams": restored["linalign"]["streams"], "shared_tokens": restored["linalign"]["shared_tokens"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--answer-tokens", type=int, default=32, help="tokens of the answer to the conversation")
    p.add_argument("--out", help="write every run and the medians as JSON here")
    args = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as slot_dir:
        for i in range(args.reps):
            runs.append(one_rep(slot_dir, args.n_ctx, args.answer_tokens))
            r = runs[-1]
            print(f"rep {i + 1}: warm {r['warm_ttft_s'] * 1e3:.0f} ms, restored {r['restore_s'] * 1e3:.0f} + "
                  f"{r['restored_ttft_s'] * 1e3:.0f} ms, cold {r['cold_ttft_s'] * 1e3:.0f} ms, cached "
                  f"{r['cached_tokens']}", flush=True)
    median = {k: statistics.median(r[k] for r in runs)
              for k in ("warm_ttft_s", "restore_s", "restored_ttft_s", "restored_total_s", "cold_ttft_s", "save_s")}
    load = os.getloadavg()
    summary = {"reps": args.reps, "median": median, "restored_over_warm": median["restored_total_s"] / median["warm_ttft_s"],
               "cold_over_warm": median["cold_ttft_s"] / median["warm_ttft_s"], "loadavg": load,
               "cpus": os.cpu_count(), "runs": runs}
    print(f"medians of {args.reps}: warm TTFT {median['warm_ttft_s'] * 1e3:.0f} ms; restored {median['restore_s'] * 1e3:.0f}"
          f" (restore) + {median['restored_ttft_s'] * 1e3:.0f} (TTFT) = {median['restored_total_s'] * 1e3:.0f} ms "
          f"({summary['restored_over_warm']:.2f}x warm); cold TTFT {median['cold_ttft_s'] * 1e3:.0f} ms "
          f"({summary['cold_over_warm']:.2f}x warm); load average {load[0]:.1f} on {os.cpu_count()} CPUs")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

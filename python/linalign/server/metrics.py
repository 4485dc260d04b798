"""``GET /metrics``: the server's counters in Prometheus' text exposition
format (version 0.0.4), written here rather than with prometheus_client,
which the server then need not depend on.

Every counter and histogram is updated on the server's event loop (a
request's numbers when its answer is done, from what the engine thread
recorded on its Generation), and the gauges are read at scrape time from
values the engine publishes without its lock: a scrape never waits for a
decode step, and needs no lock of its own. docs/metrics.md lists them.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable, Sequence

from ..engine import Generation

__all__ = ["CONTENT_TYPE", "ServerMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# request paths counted under their own label; anything else is "other"
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/")
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
PRINCIPLE_BUCKETS = (0, 1, 2, 3, 4, 6, 8)


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _bound(x: float) -> str:
    """A bucket's ``le`` as Prometheus' own clients write it ("1.0", "+Inf")."""
    return "+Inf" if math.isinf(x) else repr(float(x))


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped)) + "}"


class Histogram:
    """Cumulative buckets, their sum and count."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def lines(self, name: str) -> Iterable[str]:
        running = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            running += count
            yield f'{name}_bucket{{le="{_bound(bound)}"}} {running}'
        yield f"{name}_sum {_number(self.sum)}"
        yield f"{name}_count {running}"


class ServerMetrics:
    """The numbers behind ``GET /metrics``. ``gauges`` are read at scrape
    time: name -> (help, a function returning the value)."""

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]]) -> None:
        self.gauges = gauges
        self.requests: dict[tuple[str, str], int] = {}
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generated_tokens = 0
        self.aligned_tokens = 0
        self.changed_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.inter_token = Histogram(INTER_TOKEN_BUCKETS)
        self.principles = Histogram(PRINCIPLE_BUCKETS)

    def count_response(self, path: str, status: int) -> None:
        key = (path if path in ENDPOINTS else "other", str(status))
        self.requests[key] = self.requests.get(key, 0) + 1

    def observe_generation(self, gen: Generation, arrived: float, principles: int) -> None:
        """A request that held a slot, once its answer is done (or its client
        gone): its tokens, its latencies from ``arrived`` (time.monotonic()
        when the request came in), the principles it composed."""
        self.prompt_tokens += gen.prompt_tokens
        self.cached_tokens += gen.cached_tokens
        self.generated_tokens += gen.completion_tokens
        self.aligned_tokens += gen.aligned_tokens
        self.changed_tokens += gen.changed_tokens
        self.principles.observe(principles)
        times = list(gen.token_times)
        if times:
            self.ttft.observe(max(times[0] - arrived, 0.0))
        for before, after in zip(times, times[1:]):
            self.inter_token.observe(after - before)

    def exposition(self) -> str:
        """Every metric in the text format."""
        out: list[str] = []

        def family(name: str, kind: str, help: str) -> None:
            out.append(f"# HELP {name} {help}")
            out.append(f"# TYPE {name} {kind}")

        family("linalign_requests_total", "counter", "HTTP requests answered, by endpoint and status code.")
        for (endpoint, status), n in sorted(self.requests.items()):
            out.append(f"linalign_requests_total{_labels([('endpoint', endpoint), ('status', status)])} {n}")
        counters = [
            ("linalign_prompt_tokens_total", "Prompt tokens of the principled stream (P) of requests served.",
             self.prompt_tokens),
            ("linalign_cached_prompt_tokens_total", "Of those, tokens taken from a slot's prompt cache.",
             self.cached_tokens),
            ("linalign_generated_tokens_total", "Tokens generated.", self.generated_tokens),
            ("linalign_aligned_tokens_total", "Generated tokens decoded with a base stream to align against.",
             self.aligned_tokens),
            ("linalign_alignment_changed_tokens_total", "Of those, tokens other than the base (plain) stream's most "
             "likely one: the share alignment changed is this over linalign_aligned_tokens_total.",
             self.changed_tokens),
        ]
        for name, help, value in counters:
            family(name, "counter", help)
            out.append(f"{name} {value}")
        for name, help, hist in [
            ("linalign_time_to_first_token_seconds", "From a request's arrival to its first generated token.",
             self.ttft),
            ("linalign_inter_token_latency_seconds", "Between consecutive generated tokens of a request.",
             self.inter_token),
            ("linalign_principles_per_request", "Positive principles a request composed (0: plain decoding).",
             self.principles),
        ]:
            family(name, "histogram", help)
            out.extend(hist.lines(name))
        for name, (help, read) in self.gauges.items():
            family(name, "gauge", help)
            out.append(f"{name} {_number(read())}")
        return "\n".join(out) + "\n"

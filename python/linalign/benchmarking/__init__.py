"""The code behind ``linalign bench``: aligned decoding measured against the
cost floor and against the ways users align today (see issue 3).

    workload    the prompts and settings every method runs on
    methods     plain, floor, linalign, naive, two-call: one timed run each
    baselines   floor and two-call, on llama-cpp-python's ctypes API (not in the engine)
    combine     the combine step alone, in C++, at 49k and 152k vocabularies
    memory      peak RSS per method, each in its own child process
    multiturn   tokens prefilled per turn of a 5-turn chat, with and without reuse
    runner      warm-up, interleaved repetitions, medians; the result document
    report      terminal table, JSON, PNG chart
    overhead    ``linalign bench overhead``: host work per token beside raw llama_decode
"""
from typing import Any

__all__ = ["BenchConfig", "run_benchmark"]


def __getattr__(name: str) -> Any:
    # lazy: ``python -m linalign.benchmarking.memory`` must not import itself
    # through the package first
    if name in __all__:
        from . import runner
        return getattr(runner, name)
    raise AttributeError(name)

"""What an Aligner makes its context with (``Aligner(...)``'s keywords
below the model), each range checked here once, before the weights load;
the native engine asserts the same ranges (cpp/engine.cpp) as invariants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .engine import flash_attn_type
from .options import SamplingOptions, _integer
from .principles import MAX_PRINCIPLES
from .threads import physical_cores

__all__ = ["EngineSettings", "min_batch"]


def min_batch(n_streams: int, n_slots: int) -> int:
    """The fewest tokens a step must take: one per stream of every slot, so
    that every running stream's token fits one step (engine.cpp's rule)."""
    return n_streams * n_slots


@dataclass(frozen=True)
class EngineSettings:
    """The Aligner's keywords that shape its context (see
    :class:`~linalign.Aligner`), each checked when this is made: TypeError or
    ValueError naming the keyword."""

    n_ctx: int | None = None
    n_parallel: int = 1
    n_batch: int = 512
    n_gpu_layers: int | None = None  # None: all with RPC workers, else 0 (linalign.devices)
    n_threads: int | None = None
    n_threads_batch: int | None = None
    seed: int | None = None
    cache_prompt: bool = True
    kv_unified: bool = True
    flash_attn: bool | str = False
    max_principles: int | None = None
    kv_cells: int | None = None
    kv_reserve: int = 256
    count_passes: bool = False

    def __post_init__(self) -> None:
        if self.n_ctx is not None:
            _integer("n_ctx", self.n_ctx, low=8, high=2**24)
        _integer("n_parallel", self.n_parallel, low=1, high=64)
        if self.max_principles is not None:
            _integer("max_principles", self.max_principles, low=1, high=MAX_PRINCIPLES)
        _integer("n_batch", self.n_batch, low=min_batch(self.n_streams, self.n_parallel), high=65536)
        if self.n_gpu_layers is not None:
            _integer("n_gpu_layers", self.n_gpu_layers, low=-1, high=2**31 - 1)
        for name in ("n_threads", "n_threads_batch"):
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), low=1, high=1024)
        if self.seed is not None:
            SamplingOptions(seed=self.seed)  # the seed's range is the options'
        flash_attn_type(self.flash_attn)
        if self.kv_cells is not None:
            _integer("kv_cells", self.kv_cells, low=8, high=2**28)
            if not self.kv_unified:
                raise ValueError("kv_cells sizes the unified KV pool: pass kv_unified=True with it")
        _integer("kv_reserve", self.kv_reserve, low=0, high=2**24)

    @property
    def n_streams(self) -> int:
        """Streams per slot to start with: P, B and one per further principle."""
        return 1 + (self.max_principles or 1)

    def engine_kwargs(self, n_ctx: int) -> dict[str, Any]:
        """BatchedEngine's keywords (less ``n_streams``) for a context window of ``n_ctx``."""
        threads = self.n_threads or physical_cores()
        return dict(n_ctx=n_ctx, n_slots=self.n_parallel, n_batch=self.n_batch, n_threads=threads,
                    n_threads_batch=self.n_threads_batch or threads, flash_attn=self.flash_attn,
                    kv_unified=self.kv_unified, cache_prompt=self.cache_prompt, seed=self.seed,
                    kv_cells=self.kv_cells, kv_reserve=min(self.kv_reserve, n_ctx), count_passes=self.count_passes)

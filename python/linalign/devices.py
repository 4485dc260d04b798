"""Where a model's layers go: this machine's CPU and GPUs, and llama.cpp RPC
workers (``rpc_servers``), split by ``tensor_split``.

Layers are placed as llama.cpp places them: the input layer on the CPU,
``n_gpu_layers`` of the rest (the output layer counts as one) over the
offload devices, the workers' first, in ``tensor_split``'s proportions (by
free memory when not given), and any other layer on the CPU.
"""
from __future__ import annotations

import math
import os
from typing import Iterable, Sequence

from llama_cpp._utils import suppress_stdout_stderr

from . import _core
from .rpc.workers import check_workers

__all__ = ["load_model", "resolve_n_gpu_layers", "parse_tensor_split", "ALL_LAYERS"]

ALL_LAYERS = -1  # llama.cpp: a negative n_gpu_layers offloads every layer


def resolve_n_gpu_layers(n_gpu_layers: int | None, rpc_servers: object) -> int:
    """``None`` is every layer with RPC workers (nothing would go to them
    otherwise) and none without."""
    if n_gpu_layers is None:
        return ALL_LAYERS if rpc_servers else 0
    if rpc_servers and n_gpu_layers == 0:
        raise ValueError("n_gpu_layers=0 puts no layer on the RPC workers: leave it out (all layers) or give "
                         "how many to offload")
    return n_gpu_layers


def parse_tensor_split(value: str | Iterable[float] | None) -> list[float]:
    """``"3,1"`` or ``[3, 1]``: a proportion per offload device, each finite
    and >= 0, not all 0."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    split = []
    for item in items:
        try:
            x = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"tensor_split: {item!r} is not a number") from None
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"tensor_split: proportions must be finite and >= 0, got {item!r}")
        split.append(x)
    if not split or sum(split) <= 0:
        raise ValueError("tensor_split: give at least one proportion > 0, e.g. 3,1")
    return split


def load_model(path: str | os.PathLike[str], *, n_gpu_layers: int | None = None,
               rpc_servers: str | Sequence[str] | None = None, tensor_split: str | Sequence[float] | None = None,
               verbose: bool = False) -> _core.Model:
    """Loads a GGUF model onto this machine's devices and the RPC workers.
    The workers are greeted first (a clear RpcError naming one that is down,
    busy or of another version, instead of ggml-rpc's abort)."""
    layers = resolve_n_gpu_layers(n_gpu_layers, rpc_servers)
    split = parse_tensor_split(tensor_split)
    endpoints = check_workers(rpc_servers) if rpc_servers else []
    with suppress_stdout_stderr(disable=verbose):
        return _core.Model(str(path), layers, True, rpc_servers=endpoints, tensor_split=split)

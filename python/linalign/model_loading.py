"""The weights an Aligner runs on: a GGUF loaded by linalign, or a
``llama_cpp.Llama``'s borrowed (not loaded again). Everything about where
the weights come from and how they are loaded is here, in :func:`load_model`.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import llama_cpp
from . import _core
from .default_model import resolve_model_path
from .devices import load_model as load_on_devices
from .engine import EngineClosedError
from .llama_loader import weights_in_amx_buffers

__all__ = ["LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    """The native model, its file, and the Llama it is borrowed from (None:
    linalign loaded it and frees it)."""

    model: "_core.Model"
    path: Path
    llama: llama_cpp.Llama | None = None

    @property
    def n_ctx(self) -> int | None:
        """The borrowed Llama's context size (the Aligner's default)."""
        return self.llama.n_ctx() if self.llama is not None else None


def load_model(model_path: str | os.PathLike[str] | None, *, llama: llama_cpp.Llama | None = None,
               n_gpu_layers: int | None = None, rpc_servers: str | Sequence[str] | None = None,
               tensor_split: str | Sequence[float] | None = None, verbose: bool = False) -> LoadedModel:
    """Borrows ``llama``'s weights, or loads ``model_path`` (None: the
    default model) with ``n_gpu_layers`` offloaded, over this machine's
    devices and the ``rpc_servers`` (linalign.devices: the layers' placement).

    Raises TypeError for a ``llama`` that is not a ``llama_cpp.Llama``,
    ValueError for two different models, RPC placement with a borrowed
    Llama, or a Llama whose weights are in llama.cpp's AMX buffers,
    EngineClosedError for a closed Llama, linalign.rpc.RpcError for a worker
    that is down, busy or of another version."""
    if llama is None:
        path = resolve_model_path(model_path)
        return LoadedModel(load_on_devices(path, n_gpu_layers=n_gpu_layers, rpc_servers=rpc_servers,
                                           tensor_split=tensor_split, verbose=verbose), path)
    if not isinstance(llama, llama_cpp.Llama):
        raise TypeError(f"llama must be a llama_cpp.Llama, got {type(llama).__name__}")
    if rpc_servers or tensor_split:
        raise ValueError("rpc_servers and tensor_split place a model's layers as it loads: not with llama=")
    if model_path is not None and Path(model_path) != Path(llama.model_path):
        raise ValueError("pass either model_path or llama, not two different models")
    model_ptr = getattr(getattr(llama, "_model", None), "model", None)
    if not model_ptr:
        raise EngineClosedError("the llama_cpp.Llama passed in is closed")
    if weights_in_amx_buffers(llama):
        raise ValueError("this Llama's weights are in llama.cpp's AMX buffers, whose matrix product crashes "
                         "on some CPUs (llama.cpp issue 20824); load it with linalign.load_llama(...)")
    model = _core.Model.borrow(ctypes.cast(model_ptr, ctypes.c_void_p).value)
    return LoadedModel(model, Path(llama.model_path), llama)

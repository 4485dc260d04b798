"""``llama_cpp.Llama`` objects whose weights are loaded as linalign loads its own.

llama.cpp's AMX matrix product crashes (SIGSEGV in ``ggml_backend_amx_mul_mat``,
llama.cpp issue 20824) on some Intel CPUs with AMX, and llama-cpp-python built
on such a machine puts quantized weights in AMX buffers by default. linalign's
own models are then loaded without llama.cpp's extra buffer types
(``use_extra_bufts = false``, see ``cpp/model.cpp``); ``load_llama`` makes a
``llama_cpp.Llama`` the same way, for a Llama to lend to an ``Aligner`` or to
compare with one.
"""
from __future__ import annotations

import os
import threading
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_cpp_lib

from . import _core

__all__ = ["load_llama", "weights_in_amx_buffers"]

_params_lock = threading.Lock()


def load_llama(model_path: str | os.PathLike[str], **kwargs: Any) -> llama_cpp.Llama:
    """``llama_cpp.Llama(model_path, **kwargs)``, with its weights kept out of
    AMX buffers where llama.cpp would use them (elsewhere, exactly that call)."""
    if not _core.cpu_has_amx_weight_buffers():
        return llama_cpp.Llama(str(model_path), **kwargs)
    # Llama takes its model parameters from llama_model_default_params() and
    # has no argument for this field: the defaults are amended while it loads.
    with _params_lock:
        defaults = llama_cpp_lib.llama_model_default_params

        def without_extra_buffers() -> llama_cpp_lib.llama_model_params:
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp_lib.llama_model_default_params = without_extra_buffers
        try:
            return llama_cpp.Llama(str(model_path), **kwargs)
        finally:
            llama_cpp_lib.llama_model_default_params = defaults


def weights_in_amx_buffers(llama: llama_cpp.Llama) -> bool:
    """Whether ``llama`` was loaded with weights in llama.cpp's AMX buffers:
    extra buffer types allowed, a CPU that offers AMX ones, and some layers
    left on the CPU (a fully offloaded model keeps only its token embeddings
    there, which AMX buffers do not take)."""
    if not llama.model_params.use_extra_bufts or not _core.cpu_has_amx_weight_buffers():
        return False
    n_gpu_layers = llama.model_params.n_gpu_layers
    n_layer = llama_cpp_lib.llama_model_n_layer(llama._model.model)
    all_offloaded = llama_cpp_lib.llama_supports_gpu_offload() and (n_gpu_layers < 0 or n_gpu_layers > n_layer)
    return not all_offloaded

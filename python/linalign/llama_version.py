"""The guard against a libllama other than the one ``_core`` was built
against. ``_core`` calls llama.cpp's C API directly, and that API changes
between llama-cpp-python releases (struct layouts, renamed functions): a
``pip install -U llama-cpp-python`` under an installed linalign would load,
then crash or read garbage. This check turns that into an ImportError that
names both versions and the command that rebuilds linalign.
"""
from __future__ import annotations

from importlib import metadata

__all__ = ["check_llama_cpp_version", "installed_llama_cpp_version"]


def installed_llama_cpp_version() -> str | None:
    """The installed llama-cpp-python's version: the package whose libllama
    ``_core`` loads (its rpath points into that package)."""
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def check_llama_cpp_version() -> None:
    """Raises ImportError when the installed llama-cpp-python is not the
    version ``_core`` was compiled against."""
    try:
        from ._build_info import LLAMA_CPP_PYTHON_VERSION as built
    except ImportError:  # a source tree without a build: _core's own import says what is missing
        return
    installed = installed_llama_cpp_version()
    if installed != built:
        raise ImportError(
            f"linalign's native core was built against llama-cpp-python {built}, but llama-cpp-python "
            f"{installed or '(not installed)'} is installed: its libllama has another C API. Reinstall linalign "
            f"over this llama-cpp-python (pip install --force-reinstall --no-deps linalign, or pip install . "
            f"from a checkout), or install llama-cpp-python=={built}")

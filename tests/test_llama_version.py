"""linalign refuses to import over a llama-cpp-python other than the one its
native core was built against (python/linalign/llama_version.py)."""
from __future__ import annotations

import subprocess
import sys

from linalign import _build_info
from linalign.llama_version import installed_llama_cpp_version

# Python with llama-cpp-python's installed version reported as 0.0.1, then `import linalign`
MISMATCHED = """
from importlib import metadata
real = metadata.version
metadata.version = lambda name: "0.0.1" if name == "llama-cpp-python" else real(name)
import linalign
"""


def test_core_was_built_against_the_installed_llama_cpp_python():
    assert _build_info.LLAMA_CPP_PYTHON_VERSION == installed_llama_cpp_version()


def test_a_mismatched_libllama_is_an_import_error_naming_both_versions():
    r = subprocess.run([sys.executable, "-c", MISMATCHED], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:"), r.stderr
    assert _build_info.LLAMA_CPP_PYTHON_VERSION in last and "0.0.1" in last
    # and it refuses before any libllama is loaded
    r = subprocess.run([sys.executable, "-c", "import sys\ntry:\n" + "".join("    " + line + "\n" for line in
                        MISMATCHED.strip().splitlines()) + "except ImportError:\n    pass\n"
                        "print('linalign._core' in sys.modules, 'llama_cpp' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr

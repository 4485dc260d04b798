"""linalign: Linear Alignment (Gao et al., ICML 2024) for local llama.cpp
inference. Steers a GGUF model towards a natural-language principle at
decoding time, with no training: ``l = l_p + ratio * (l_p - l_0)`` inside the
top-p nucleus of the principled distribution.
"""
from .llama_version import check_llama_cpp_version

# before _core loads a libllama whose C API may not be the one it was built for
check_llama_cpp_version()

# llama_cpp first: it maps the libllama that linalign._core then links to,
# so the process holds exactly one.
import llama_cpp  # noqa: E402,F401

from ._core import linear_alignment_apply  # noqa: E402
from .aligner import Aligner, AlignerClosedError, GenerationSuperseded
from .default_model import default_model_path
from .engine import BatchedEngine, Generation, GenerationRequest
from .options import SamplingOptions
from .llama_loader import load_llama

__all__ = [
    "Aligner",
    "AlignerClosedError",
    "BatchedEngine",
    "Generation",
    "GenerationRequest",
    "SamplingOptions",
    "GenerationSuperseded",
    "default_model_path",
    "linear_alignment_apply",
    "load_llama",
]
__version__ = "0.1.0"

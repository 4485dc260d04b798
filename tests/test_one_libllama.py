"""Exactly one libllama is mapped in a process that imported both packages,
and Aligner(llama=...) reuses that Llama's weights."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_one_libllama_mapped():
    code = textwrap.dedent("""
        import llama_cpp, linalign, linalign._core
        paths = {line.split()[-1] for line in open('/proc/self/maps') if 'libllama' in line}
        print(len(paths)); print(sorted(paths))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "1", out


def test_linalign_first_still_maps_one():
    code = textwrap.dedent("""
        import linalign._core, llama_cpp
        print(len({line.split()[-1] for line in open('/proc/self/maps') if 'libllama' in line}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_shared_llama_model(model_path):
    import linalign

    llm = linalign.load_llama(model_path, n_ctx=128, verbose=False)
    with linalign.Aligner(llama=llm, n_ctx=128) as aligner:
        assert not aligner._model.owns_weights  # borrowed: the weights are the Llama's
        assert aligner.create_completion("Hello", None, max_tokens=2)["choices"]
        assert aligner.model_path == llm.model_path or str(aligner.model_path) == llm.model_path
    llm.close()

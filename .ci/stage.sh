# Sourced by the .ci scripts: `stage NAME CMD [ARGS...]` runs CMD and prints
# how many seconds it took (to stderr, so that `x="$(stage ...)"` captures
# CMD's output alone), then returns CMD's status, so that `set -e` still stops
# the script on a failed stage. CMD should be a program, not a shell function:
# bash ignores `set -e` inside a function run as `f || ...`.
stage() {
  local name="$1" start=$SECONDS rc=0
  shift
  echo "=== stage $name" >&2
  "$@" || rc=$?
  if [ "$rc" = 0 ]; then
    echo "=== stage $name: $((SECONDS - start)) s" >&2
  else
    echo "=== stage $name: FAILED (exit $rc) after $((SECONDS - start)) s" >&2
  fi
  return "$rc"
}

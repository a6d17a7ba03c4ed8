#!/usr/bin/env bash
# Set up both supported stacks and run the test suite on them (what CI runs: .ci/run).
#   1. .venv    (Python 3.11, megatron-core 0.16.1): the whole suite.
#   2. .venv312 (Python 3.12, megatron-core 0.19.2): the tests marked mcore_api (tests/conftest.py
#      lists them: engine, dist checkpoints, conversion, layout invariance, sync, kill -9 resume), with
#      its SGLang servers run from .venv, as a GPU cluster runs them from their own venv.
# Usage: bash tools/test.sh [--stack 3.11|3.12] [pytest arguments ...]
set -euo pipefail
cd "$(dirname "$0")/.."
stacks="3.11 3.12"
if [ "${1:-}" = --stack ]; then stacks=${2:?--stack needs 3.11 or 3.12}; shift 2; fi
for s in $stacks; do
  case "$s" in 3.11|3.12) ;; *) echo "test.sh: --stack must be 3.11 or 3.12 (got '$s')" >&2; exit 2 ;; esac
done
# .venv is needed in any case: it holds the SGLang server the 3.12 stack's tests talk to.
bash tools/setup_env.sh
case " $stacks " in *" 3.12 "*) bash tools/setup_env.sh --python 3.12 ;; esac
# Both stacks run even when the first fails, so one failure never hides the other; the exit status is
# the worst of the two.
failed=""
for s in $stacks; do
  start=$(date +%s)
  rc=0
  if [ "$s" = 3.11 ]; then
    echo "test.sh: Python 3.11 / megatron-core 0.16.1 (.venv): the whole suite"
    .venv/bin/python -m pytest -q "$@" || rc=$?
  else
    echo "test.sh: Python 3.12 / megatron-core 0.19.2 (.venv312): the mcore_api tests"
    .venv312/bin/python -m pytest -q -m mcore_api "$@" || rc=$?
  fi
  echo "test.sh: stack $s done in $(( $(date +%s) - start )) s (pytest exit $rc)"
  [ "$rc" = 0 ] || failed="$failed $s"
done
if [ -n "$failed" ]; then echo "test.sh: FAILED on stack(s):$failed" >&2; exit 1; fi

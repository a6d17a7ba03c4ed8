#!/usr/bin/env bash
# Install the SGLang stack (server + sglang-router) into an existing venv. Idempotent: when the
# pinned versions are already there (and the requirement list is unchanged) it does nothing.
#
# Usage: bash tools/setup_sglang.sh [VENV] [--cpu|--gpu]      (VENV defaults to .venv)
#   --cpu (default without a working nvidia-smi): the LEAN stack. The venv's own CPU torch stays;
#         requirements/sglang-cpu.txt (sglang's non-CUDA requirements) is installed with torch held
#         by a constraint, then `pip install --no-deps sglang==PIN sglang-router==PIN`. The server
#         then runs with the CPU compatibility shim in dcpo_mcore/rollout/cpu_shim/ (the launcher
#         puts it on the server's PYTHONPATH). About 2.1 GB and 1.5-3 min; `pip check` will list
#         sglang's CUDA requirements as missing: expected with --no-deps.
#   --gpu: the full `sglang==PIN` with all its dependencies (it pins its own CUDA torch, which
#         replaces the venv's torch, and compiled extensions such as Transformer Engine must match
#         it: install SGLang first, or give it its own venv and LaunchSpec(python=...)).
# The versions are pinned in ONE place: dcpo_mcore/rollout/pins.py.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

venv=""
flavour=""
for arg in "$@"; do
  case "$arg" in
    --gpu) flavour=gpu ;;
    --cpu) flavour=cpu ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "setup_sglang.sh: unknown option '$arg' (use --cpu or --gpu)" >&2; exit 2 ;;
    *) [ -z "$venv" ] || { echo "setup_sglang.sh: one venv only (got '$venv' and '$arg')" >&2; exit 2; }; venv=$arg ;;
  esac
done
venv=${venv:-.venv}
case "$venv" in /*) ;; *) venv=$ROOT/$venv ;; esac
if [ -z "$flavour" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; else flavour=cpu; fi
fi
PY=$venv/bin/python
[ -x "$PY" ] || { echo "setup_sglang.sh: no venv at $venv; create it first: bash tools/setup_env.sh" >&2; exit 1; }

PINS=dcpo_mcore/rollout/pins.py
pin() { sed -n "s/^$1 = \"\\([^\"]*\\)\".*/\\1/p" "$PINS"; }
SGLANG_VERSION=$(pin SGLANG_VERSION)
ROUTER_VERSION=$(pin SGLANG_ROUTER_VERSION)
[ -n "$SGLANG_VERSION" ] && [ -n "$ROUTER_VERSION" ] || { echo "setup_sglang.sh: could not read the pins from $PINS" >&2; exit 1; }
REQS=requirements/sglang-cpu.txt

want=$( { cat "$PINS"; [ "$flavour" = cpu ] && cat "$REQS"; echo "$flavour"; } | sha256sum | cut -d' ' -f1)
stamp=$venv/.dcpo_sglang_stamp

installed() {  # "sglang-version router-version" in the venv, "-" for a missing one
  "$PY" - <<'PYEOF'
import importlib.metadata as m
def v(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "-"
print(v("sglang"), v("sglang-router"))
PYEOF
}
check_imports() {  # cheap: the client's and router's modules, and that sglang's package is found
  "$PY" -c 'import importlib.util as u, aiohttp, sglang_router, sys; sys.exit(0 if u.find_spec("sglang") else 1)'
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ "$(installed)" = "$SGLANG_VERSION $ROUTER_VERSION" ] \
   && check_imports >/dev/null 2>&1; then
  echo "setup_sglang.sh: sglang $SGLANG_VERSION + sglang-router $ROUTER_VERSION ($flavour) already in $venv; nothing to do."
  exit 0
fi

t0=$(date +%s)
echo "setup_sglang.sh: installing sglang $SGLANG_VERSION + sglang-router $ROUTER_VERSION ($flavour) into $venv ..."
if [ "$flavour" = cpu ]; then
  torch_before=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null) || {
    echo "setup_sglang.sh: torch is not importable in $venv; run bash tools/setup_env.sh first" >&2; exit 1; }
  case "$torch_before" in *+cpu*|*cpu*) ;; *) echo "setup_sglang.sh: warning: torch $torch_before does not look like a CPU build" >&2 ;; esac
  cons=$(mktemp)
  trap 'rm -f "$cons"' EXIT
  echo "torch==${torch_before%%+*}" > "$cons"  # hold the venv's torch: never pull a CUDA build
  "$PY" -m pip install -q -r "$REQS" -c "$cons"
  "$PY" -m pip install -q --no-deps "sglang==$SGLANG_VERSION" "sglang-router==$ROUTER_VERSION"
  torch_after=$("$PY" -c 'import torch; print(torch.__version__)')
  if [ "$torch_after" != "$torch_before" ]; then
    echo "setup_sglang.sh: torch changed from $torch_before to $torch_after; this must not happen (check $REQS)" >&2
    exit 1
  fi
  # sglang itself needs the CPU shim to import; check the pieces that must import without it.
  "$PY" -c 'import aiohttp, sglang_router, fastapi, uvicorn, zmq, msgspec, transformers' \
    || { echo "setup_sglang.sh: the lean sglang stack does not import" >&2; exit 1; }
else
  "$PY" -m pip install -q "sglang==$SGLANG_VERSION" "sglang-router==$ROUTER_VERSION"
  "$PY" -c 'import sglang, sglang_router, aiohttp' || { echo "setup_sglang.sh: sglang does not import" >&2; exit 1; }
fi
[ "$(installed)" = "$SGLANG_VERSION $ROUTER_VERSION" ] || { echo "setup_sglang.sh: versions after install: $(installed)" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup_sglang.sh: done in $(( $(date +%s) - t0 )) s: sglang $SGLANG_VERSION, sglang-router $ROUTER_VERSION ($flavour) in $venv"

#!/usr/bin/env bash
# Create or check the project virtual environment at .venv (repo root). Idempotent: a second run
# only verifies what is already there. Usage: bash tools/setup_env.sh [--gpu|--cpu]
#   --cpu (default without nvidia-smi): torch CPU wheel + megatron-core, no Transformer Engine, and the
#         lean SGLang server stack in the SAME venv (tools/setup_sglang.sh --cpu; ~2 GB, 2-4 min once).
#   --gpu (default when nvidia-smi works): adds the GPU extra (Transformer Engine); the full SGLang
#         (which pins its own CUDA torch) goes into its own venv, .venv-sglang.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
flavour=""
for arg in "$@"; do
  case "$arg" in
    --gpu) flavour=gpu ;;
    --cpu) flavour=cpu ;;
    *) echo "setup_env.sh: unknown argument '$arg' (use --gpu or --cpu)" >&2; exit 2 ;;
  esac
done
if [ -z "$flavour" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; else flavour=cpu; fi
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "setup_env.sh: Python 3.11 is required (megatron-core 0.16.1 is the last release for 3.11); found $("$PY" --version 2>&1)" >&2; exit 1; }

stamp_src() {
  cat requirements/cpu.txt requirements/gpu.txt requirements/sglang-cpu.txt setup.py dcpo_mcore/rollout/pins.py tools/setup_sglang.sh
  echo "$flavour"
}
want=$(stamp_src | sha256sum | cut -d' ' -f1)
stamp=$VENV/.dcpo_setup_stamp
check_imports() {
  "$VENV/bin/python" - <<'PYEOF'
import importlib, sys
mods = ["torch", "megatron.core", "pydantic", "yaml", "math_verify", "psutil", "pytest", "aiohttp", "tensorboard", "matplotlib", "dcpo_mcore"]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as exc:  # a partial TE install raises RuntimeError, not ImportError
        bad.append(f"{m}: {exc!r}")
if bad:
    print("broken imports:", *bad, sep="\n  ")
    sys.exit(1)
PYEOF
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && check_imports >/dev/null 2>&1; then
  echo "setup_env.sh: .venv is up to date ($flavour); nothing to do."
  exit 0
fi

echo "setup_env.sh: building .venv ($flavour) ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -r "requirements/$flavour.txt"
"$VENV/bin/python" -m pip install -q --no-deps -e .
# The rollout server stack (docs/platform.md [sglang-cpu]). Its own script keeps the pins in one place.
if [ "$flavour" = cpu ]; then
  bash tools/setup_sglang.sh "$VENV" --cpu
else
  [ -x "$ROOT/.venv-sglang/bin/python" ] || "$PY" -m venv "$ROOT/.venv-sglang"
  bash tools/setup_sglang.sh "$ROOT/.venv-sglang" --gpu
fi
if [ "$flavour" = cpu ] && "$VENV/bin/python" -m pip show -q transformer-engine >/dev/null 2>&1; then
  echo "setup_env.sh: transformer-engine is installed in a CPU venv; it breaks 'import megatron.core'. Remove .venv and rerun." >&2
  exit 1
fi
check_imports
echo "$want" > "$stamp"
echo "setup_env.sh: .venv ready ($flavour): $("$VENV/bin/python" -c 'import torch, megatron.core as m; print("torch", torch.__version__, "| megatron-core", m.__version__)' 2>/dev/null)"

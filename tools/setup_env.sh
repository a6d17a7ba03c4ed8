#!/usr/bin/env bash
# Create or check a project virtual environment (repo root). Idempotent: a second run only verifies
# what is already there. Usage: bash tools/setup_env.sh [--gpu|--cpu] [--python 3.11|3.12]
#   --python 3.11 (default): .venv, requirements/cpu.txt (torch 2.13.0, megatron-core 0.16.1).
#   --python 3.12: .venv312, requirements/py312.txt (torch 2.14.1 from PyPI, megatron-core 0.19.2), the
#         stack GPU users run. Its SGLang server runs from .venv (build that too on CPU) or, with --gpu,
#         from .venv-sglang: the trainer and the server only share HTTP and a torch.distributed group.
#   --cpu (default without nvidia-smi): torch CPU wheel + megatron-core, no Transformer Engine, and the
#         lean SGLang server stack in the SAME venv (tools/setup_sglang.sh --cpu; ~2 GB, 2-4 min once).
#   --gpu (default when nvidia-smi works): adds the GPU extra (Transformer Engine); the full SGLang
#         (which pins its own CUDA torch) goes into its own venv, .venv-sglang.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
flavour=""
pyver=3.11
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) flavour=gpu ;;
    --cpu) flavour=cpu ;;
    --python) pyver=${2:-}; shift ;;
    --python=*) pyver=${1#--python=} ;;
    *) echo "setup_env.sh: unknown argument '$1' (use --gpu, --cpu or --python 3.11|3.12)" >&2; exit 2 ;;
  esac
  shift
done
case "$pyver" in
  3.11) REQS=requirements/cpu.txt ;;
  3.12) REQS=requirements/py312.txt; VENV=$ROOT/.venv312 ;;
  *) echo "setup_env.sh: --python must be 3.11 or 3.12 (got '$pyver')" >&2; exit 2 ;;
esac
if [ -z "$flavour" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; else flavour=cpu; fi
fi
PY=${PYTHON:-python$pyver}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$pyver'.split('.')))" 2>/dev/null \
   && command -v pyenv >/dev/null 2>&1; then  # pyenv keeps other versions off PATH
  for cand in "$(pyenv root)"/versions/"$pyver".*/bin/python; do [ -x "$cand" ] && PY=$cand; done
fi
"$PY" -c "import sys; assert sys.version_info[:2] == tuple(map(int, '$pyver'.split('.')))" 2>/dev/null || {
  echo "setup_env.sh: Python $pyver is required for $REQS; found $("$PY" --version 2>&1) (set PYTHON=/path/to/python$pyver)" >&2; exit 1; }

stamp_src() {
  cat requirements/base.txt "$REQS" requirements/gpu.txt requirements/sglang-cpu.txt setup.py dcpo_mcore/rollout/pins.py tools/setup_sglang.sh
  echo "$flavour $pyver"
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
  echo "setup_env.sh: $(basename "$VENV") is up to date ($flavour, Python $pyver); nothing to do."
  exit 0
fi

echo "setup_env.sh: building $(basename "$VENV") ($flavour, Python $pyver, $REQS) ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -r "$REQS"
if [ "$flavour" = gpu ]; then "$VENV/bin/python" -m pip install -q -r requirements/gpu.txt; fi
"$VENV/bin/python" -m pip install -q --no-deps -e .
# The rollout server stack (docs/platform.md [sglang-cpu]). Its own script keeps the pins in one place.
# The 3.12 stack on CPU has none of its own: its servers run from .venv (rollout/server.py
# default_server_python), a different Python and torch, which is how GPU clusters run them too.
if [ "$pyver" = 3.12 ] && [ "$flavour" = cpu ]; then
  :
elif [ "$flavour" = cpu ]; then
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
echo "setup_env.sh: $(basename "$VENV") ready ($flavour): $("$VENV/bin/python" -c 'import torch, megatron.core as m; print("torch", torch.__version__, "| megatron-core", m.__version__)' 2>/dev/null)"

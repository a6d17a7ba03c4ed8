#!/usr/bin/env bash
# One GPU acceptance check (docs/gpu.md [gpu-check]): prints a pass/fail table in under 9 minutes on one
# H100/H200. Runs on a bare machine with Python 3.12 and a CUDA torch and no internet: everything else
# comes from the wheel bundle that --fetch-wheels writes on a machine that reaches the package registry.
#
#   bash tools/gpu_check.sh --fetch-wheels     # once, with the registry: .gpu_check_wheels/ (<= 64 MiB)
#   bash tools/gpu_check.sh                    # on the GPU machine (carry .gpu_check_wheels/ along)
#   bash tools/gpu_check.sh --dry-run          # the same checks at toy sizes on the CPU (CI runs this)
#   extra arguments go to tools/gpu_check.py (--checks engine,fp8 --timeout 200 --peak-tflops 790)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=$ROOT/.gpu_check_wheels
PY=${PYTHON:-python3}
# What the checks import beyond torch, for Python 3.12 on x86_64: the dependency closure of megatron-core,
# transformers, pydantic, pyyaml and psutil as .venv312 resolves it (tools/setup_env.sh --python 3.12),
# without torch and its own requirements (the GPU machine has those).
BUNDLE=(megatron-core==0.19.2 transformers==5.19.0 tokenizers==0.23.3 safetensors==0.8.0 huggingface-hub==2.4.0
        hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 anyio==4.16.0 h11==0.16.0 idna==3.20 truststore==0.10.5
        typer==0.29.2 click==8.5.1 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
        shellingham==1.5.4 annotated-doc==0.0.7 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 typing-extensions==4.16.0 pyyaml==6.0.4 psutil==7.2.2 regex==2026.11.19
        packaging==26.4 filelock==4.3.2 tqdm==4.70.1 numpy==2.5.5 fsspec==2026.9.0)
LIMIT_MIB=64

if [ "${1:-}" = --fetch-wheels ]; then
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" "${BUNDLE[@]}"
  mib=$(( $(du -sb "$WHEELS" | cut -f1) / 1048576 ))
  echo "gpu_check.sh: ${#BUNDLE[@]} wheels, ${mib} MiB in $WHEELS"
  if [ "$mib" -gt "$LIMIT_MIB" ]; then echo "gpu_check.sh: the bundle is over ${LIMIT_MIB} MiB" >&2; exit 1; fi
  exit 0
fi

# A venv of ours when there is one (CI's dry run), else this machine's Python with the bundle beside it.
for cand in "$ROOT/.venv312/bin/python" "$ROOT/.venv/bin/python"; do
  if [ -z "${PYTHON:-}" ] && [ -x "$cand" ]; then PY=$cand; break; fi
done
if ! "$PY" -c 'import megatron.core, transformers, pydantic' 2>/dev/null; then
  [ -d "$WHEELS" ] || { echo "gpu_check.sh: megatron-core etc. are missing and there is no $WHEELS; run 'bash tools/gpu_check.sh --fetch-wheels' where the registry is reachable and bring that folder" >&2; exit 2; }
  SITE=${TMPDIR:-/tmp}/gpu_check_site
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" tools/gpu_check.py "$@"

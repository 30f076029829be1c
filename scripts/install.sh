#!/usr/bin/env bash
# Create or reuse a virtual environment and install the project with its dev extra.
# On a machine without CUDA: torch==2.13.0 (CPU wheel) first, then everything else with torch pinned, so pip never
# pulls several GB of CUDA packages. On a machine with CUDA: the torch already in the venv is kept (or pip's default
# CUDA build is installed if there is none), and pinned the same way.
set -euo pipefail
VENV=${1:-.venv}
CPU_TORCH=${CPU_TORCH:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: CUDA machine, installing torch from the index"
    "$PY" -m pip install -q torch
  else
    echo "install: no CUDA, installing torch==$CPU_TORCH (CPU)"
    "$PY" -m pip install -q "torch==$CPU_TORCH"
  fi
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
CONSTRAINTS=$(mktemp)
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
echo "install: torch $TORCH_VERSION pinned; installing the project"
DS_BUILD_OPS=0 "$PY" -m pip install -q -c "$CONSTRAINTS" -e ".[dev]"
rm -f "$CONSTRAINTS"
if "$PY" -m pip list 2>/dev/null | grep -qi '^nvidia-' && ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "install: warning: CUDA packages were installed on a machine without a GPU" >&2
fi
echo "install: done ($VENV)"

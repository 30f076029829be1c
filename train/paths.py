"""Where the repository's own files are: its root and the configuration folders the code reads. Units of memory."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
ACCELERATE_DIR = CONFIGS / "accelerate"  # how to distribute: accelerate launch --config_file <name>.yaml
DEEPSPEED_DIR = CONFIGS / "deepspeed"  # ZeRO settings the accelerate files point to (the planner reads buckets)
MODELS_DIR = CONFIGS / "models"  # config.json shapes the planner and the GPU check know by name (llama3-8b, ...)
MFU_FILE = CONFIGS / "mfu.json"  # MFU per method: assumed, or measured per GPU by scripts/gpu_check.sh

GIB = 1024 ** 3
MIB = 1024 ** 2

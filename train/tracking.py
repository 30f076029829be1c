"""Experiment tracking of a run: `tracking.report_to` names the trackers the Trainer logs to (wandb, tensorboard,
mlflow, or none). W&B runs in `tracking.wandb_mode` (online, offline or disabled: listed but disabled sends nothing);
TensorBoard writes event files to output_dir/runs/ (the same scalars as metrics.jsonl, under the Trainer's names:
`loss` -> `train/loss`, `eval_loss` -> `eval/loss`); MLflow logs to MLFLOW_TRACKING_URI, by default
output_dir/mlruns. Keys and tokens stay in the environment: nothing here writes them anywhere."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import List

# report_to name -> (the module the Trainer's integration imports, how to install it)
TRACKERS = {
    "wandb": ("wandb", "pip install wandb"),
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", "pip install 'sft-launcher[mlflow]' (or pip install mlflow)"),
}
TENSORBOARD_DIR = "runs"  # under output_dir: `tensorboard --logdir <output_dir>/runs`


def trainer_report_to(cfg) -> List[str]:
    """TrainingArguments.report_to: the listed trackers; W&B only when its mode is not disabled."""
    names = [n for n in cfg.tracking.report_to if n != "none"]
    return [n for n in names if n != "wandb" or cfg.tracking.wandb_mode != "disabled"]


def check_trackers(cfg) -> None:
    """A listed tracker whose package is missing is a mistake to report before any data or model is loaded."""
    from train.config import ConfigError

    for name in trainer_report_to(cfg):
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracking.report_to lists {name}, but the `{module}` package is not installed: "
                              f"{install}, or remove {name} from tracking.report_to")


def tensorboard_dir(cfg) -> Path:
    return Path(cfg.output_dir) / TENSORBOARD_DIR


def setup_tracking(cfg, is_main: bool) -> None:
    """Environment for the Trainer's integrations. W&B (it logs from the main process only): the run id is kept in
    output_dir so a resumed or requeued run continues the same W&B run. MLflow: a local store in output_dir unless
    MLFLOW_TRACKING_URI says otherwise."""
    active = trainer_report_to(cfg)
    if "mlflow" in active:
        os.environ.setdefault("MLFLOW_TRACKING_URI", (Path(cfg.output_dir).resolve() / "mlruns").as_uri())
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", cfg.tracking.project)
        if cfg.tracking.run_name:
            os.environ.setdefault("MLFLOW_RUN_NAME", cfg.tracking.run_name)
    if "wandb" not in active:
        os.environ["WANDB_DISABLED"] = "true"
        return
    if not is_main:  # the other ranks never create a W&B run
        return
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    id_file = out / "wandb_run_id.txt"
    if not id_file.exists():
        import uuid

        id_file.write_text(uuid.uuid4().hex[:12])
    os.environ.pop("WANDB_DISABLED", None)
    os.environ.update({"WANDB_MODE": cfg.tracking.wandb_mode, "WANDB_PROJECT": cfg.tracking.project,
                       "WANDB_DIR": str(out), "WANDB_RUN_ID": id_file.read_text().strip(), "WANDB_RESUME": "allow"})
    if cfg.tracking.entity:
        os.environ["WANDB_ENTITY"] = cfg.tracking.entity
    if cfg.tracking.run_name:
        os.environ["WANDB_NAME"] = cfg.tracking.run_name


def log_eval_to_tensorboard(cfg, results: dict, report_markdown: str) -> Path | None:
    """`python -m launch eval` with tensorboard in tracking.report_to: the report (eval_report.md) as a text summary
    and every model's metrics as scalars (`eval_report/<model>/<metric>`), in output_dir/runs/eval. Returns the folder."""
    if "tensorboard" not in trainer_report_to(cfg):
        return None
    from torch.utils.tensorboard import SummaryWriter

    folder = tensorboard_dir(cfg) / "eval"
    with SummaryWriter(log_dir=str(folder)) as writer:
        writer.add_text("eval_report", report_markdown)
        for model, metrics in results.items():
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(f"eval_report/{model}/{name}", value)
    return folder

"""Experiment tracking of a run: `tracking.report_to` names the trackers the Trainer logs to (wandb, tensorboard,
mlflow, or none). W&B runs in `tracking.wandb_mode` (online, offline or disabled: listed but disabled sends nothing);
TensorBoard writes event files to output_dir/runs/ (the same scalars as metrics.jsonl, under the Trainer's names:
`loss` -> `train/loss`, `eval_loss` -> `eval/loss`); MLflow logs to MLFLOW_TRACKING_URI, by default a file store in
output_dir/mlruns. A resumed run continues the same W&B and MLflow run (their ids are kept in output_dir), and
`launch eval` adds its report to them. Keys and tokens stay in the environment: nothing here writes them anywhere."""

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
MLFLOW_DIR = "mlruns"  # under output_dir, the default store: `mlflow ui --backend-store-uri <output_dir>/mlruns`
MLFLOW_RUN_FILE = "mlflow_run_id.txt"  # under output_dir: the run a resumed run and `launch eval` log to


def trainer_report_to(cfg) -> List[str]:
    """TrainingArguments.report_to: the listed trackers; W&B only when its mode is not disabled."""
    names = [n for n in cfg.tracking.report_to if n != "none"]
    return [n for n in names if n != "wandb" or cfg.tracking.wandb_mode != "disabled"]


def check_trackers(cfg, is_main: bool = True) -> None:
    """A listed tracker whose package is missing, or an MLflow store that cannot be opened, is a mistake to report
    before any data or model is loaded (the Trainer would meet it only when training starts)."""
    from train.config import ConfigError

    active = trainer_report_to(cfg)
    for name in active:
        module, install = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"tracking.report_to lists {name}, but the `{module}` package is not installed: "
                              f"{install}, or remove {name} from tracking.report_to")
    if "mlflow" in active and is_main:
        uri = mlflow_environment(cfg)
        if uri.split(":", 1)[0] in ("file", "sqlite") or "://" not in uri:  # a server is not contacted here
            from mlflow import MlflowClient

            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except Exception as e:  # MLflow's own reasons: a refused file store, sqlite without SQLAlchemy, ...
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"tracking.report_to lists mlflow, but MLflow cannot open the store "
                                  f"MLFLOW_TRACKING_URI={uri}: {reason[:400]}. Point MLFLOW_TRACKING_URI at a store "
                                  f"this MLflow can use (a tracking server http://host:5000, sqlite:///path/mlflow.db "
                                  f"with the full mlflow package, a folder), or remove mlflow from "
                                  f"tracking.report_to") from None


def mlflow_environment(cfg) -> str:
    """MLflow's settings for this run, where the environment does not give them (the user's always win): the store
    (a file store in output_dir/mlruns; MLflow 3 needs MLFLOW_ALLOW_FILE_STORE for it), the experiment
    (tracking.project) and the run name. Returns the tracking URI."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", (Path(cfg.output_dir).resolve() / MLFLOW_DIR).as_uri())
    if os.environ["MLFLOW_TRACKING_URI"].startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", cfg.tracking.project)
    if cfg.tracking.run_name:
        os.environ.setdefault("MLFLOW_RUN_NAME", cfg.tracking.run_name)
    return os.environ["MLFLOW_TRACKING_URI"]


def tensorboard_dir(cfg) -> Path:
    return Path(cfg.output_dir) / TENSORBOARD_DIR


def setup_tracking(cfg, is_main: bool, resuming: bool = False) -> None:
    """Environment for the Trainer's integrations. W&B (it logs from the main process only): the run id is kept in
    output_dir so a resumed or requeued run continues the same W&B run. MLflow: mlflow_environment(), and a run that
    resumes from a checkpoint continues the MLflow run its start recorded (start_mlflow_run)."""
    active = trainer_report_to(cfg)
    if "mlflow" in active and is_main:  # the Trainer logs to MLflow from the main process only
        start_mlflow_run(cfg, resuming)
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


def start_mlflow_run(cfg, resuming: bool) -> str:
    """Starts the MLflow run the Trainer's integration then logs to (it uses an active run, and leaves it open: left to
    itself it would end its run with training, and the final evaluation's metrics would open a second one). Its id goes
    to output_dir, so that a run resumed from a checkpoint continues it and `launch eval` adds to it; MLflow ends it
    when the process exits. Returns the run's id."""
    import mlflow

    run_file = _use_store(cfg)
    run_id = run_file.read_text().strip() if resuming and run_file.exists() else None
    run = _start_run(run_id, os.environ.get("MLFLOW_RUN_NAME") or Path(cfg.output_dir).name)
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(run.info.run_id)
    recipe = run_file.parent / "run_config.yaml"  # the recipe as run, secrets redacted (train/config.py save_config)
    if recipe.exists():
        mlflow.log_artifact(str(recipe))
    return run.info.run_id


def _use_store(cfg) -> Path:
    """Points MLflow at this run's store and experiment; returns the file that records the run's id."""
    import mlflow

    mlflow.set_tracking_uri(mlflow_environment(cfg))
    mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    return Path(cfg.output_dir) / MLFLOW_RUN_FILE


def _start_run(run_id: str | None, name: str):
    """The recorded run when this store has it, else a new run `name` (the store changed since, or it was deleted)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if run_id:
        try:
            return mlflow.start_run(run_id=run_id)
        except MlflowException as e:
            print(f"MLflow: the recorded run {run_id} is not in {mlflow.get_tracking_uri()} ({str(e)[:200]}); "
                  f"logging to a new run {name}", flush=True)
    return mlflow.start_run(run_name=name)


def log_eval_to_mlflow(cfg, results: dict, report_markdown: str) -> str | None:
    """`python -m launch eval` with mlflow in tracking.report_to: every model's metrics (`eval_report/<model>/<metric>`)
    and the report (eval_report.md) in the training run recorded in output_dir, or in a new run `<name>-eval` when
    there is none. Returns the run's id."""
    if "mlflow" not in trainer_report_to(cfg):
        return None
    import mlflow

    run_file = _use_store(cfg)
    run_id = run_file.read_text().strip() if run_file.exists() else None
    with _start_run(run_id, f"{cfg.tracking.run_name or Path(cfg.output_dir).name}-eval") as run:
        mlflow.log_metrics({f"eval_report/{model}/{metric}": float(value) for model, metrics in results.items()
                            for metric, value in metrics.items() if isinstance(value, (int, float))})
        mlflow.log_text(report_markdown, "eval_report.md")
        return run.info.run_id


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

"""Experiment tracking of a run: W&B through the Trainer's integration (online, offline or disabled). The W&B key
stays in the environment: nothing here writes it anywhere."""

from __future__ import annotations

import os
from pathlib import Path


def setup_tracking(cfg, is_main: bool) -> None:
    """W&B through the Trainer's integration (it logs from the main process only); the run id is kept in output_dir
    so a resumed or requeued run continues the same W&B run."""
    if cfg.tracking.wandb_mode == "disabled":
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
    os.environ.update({"WANDB_MODE": cfg.tracking.wandb_mode, "WANDB_PROJECT": cfg.tracking.project,
                       "WANDB_DIR": str(out), "WANDB_RUN_ID": id_file.read_text().strip(), "WANDB_RESUME": "allow"})
    if cfg.tracking.entity:
        os.environ["WANDB_ENTITY"] = cfg.tracking.entity
    if cfg.tracking.run_name:
        os.environ["WANDB_NAME"] = cfg.tracking.run_name

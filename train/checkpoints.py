"""Checkpoints that survive being killed: one counts only once every rank has written it and the main process has
written `checkpoint_complete.json` into it (atomically, after a barrier). `train.resume: auto` picks the newest
complete one, half-written ones are removed before training, and old ones are rotated only after a newer one is
complete (the Trainer's own rotation is off)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from train.config import Config

CHECKPOINT_MARKER = "checkpoint_complete.json"


def mark_complete(folder: Path, **record) -> None:
    """Write the completion marker atomically (temp file, fsync, rename): a checkpoint without it does not count."""
    tmp = folder / (CHECKPOINT_MARKER + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({**record, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / CHECKPOINT_MARKER)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkpoint_folders(output_dir: str | Path) -> list[tuple[int, Path]]:
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.glob("checkpoint-*"):
        suffix = p.name.split("-", 1)[1]
        if p.is_dir() and suffix.isdigit():
            found.append((int(suffix), p))
    return sorted(found)


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """checkpoint-N folders that carry the completion marker, oldest first."""
    return [p for _, p in _checkpoint_folders(output_dir) if (p / CHECKPOINT_MARKER).exists()]


def discard_incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Remove checkpoint folders a kill left half-written (main process, before training). Returns them."""
    broken = [p for _, p in _checkpoint_folders(output_dir) if not (p / CHECKPOINT_MARKER).exists()]
    for p in broken:
        shutil.rmtree(p, ignore_errors=True)
    return broken


def rotate_checkpoints(output_dir: str | Path, keep: Optional[int], protect: Optional[str | Path] = None) -> None:
    """Keep the newest `keep` complete checkpoints; delete older folders (complete or not). Never the newest, and
    never `protect` (the best checkpoint so far, when early stopping will load it at the end)."""
    if not keep or keep < 1:
        return
    folders = _checkpoint_folders(output_dir)
    complete_steps = [step for step, p in folders if (p / CHECKPOINT_MARKER).exists()]
    if len(complete_steps) <= keep:
        return
    oldest_kept = complete_steps[-keep]
    protected = Path(protect).resolve() if protect else None
    for step, p in folders:
        if step < oldest_kept and p.resolve() != protected:
            shutil.rmtree(p, ignore_errors=True)


def resume_checkpoint(cfg: Config) -> Optional[str]:
    """train.resume: auto → the newest complete checkpoint in output_dir (None if none), never → None, else the
    given folder, which must hold a complete checkpoint."""
    mode = cfg.train.resume
    if mode == "never":
        if complete_checkpoints(cfg.output_dir):
            raise FileExistsError(f"output_dir={cfg.output_dir} already holds checkpoints of an earlier run and "
                                  f"train.resume=never would mix them with this run's. Choose a new output_dir, "
                                  f"or set train.resume=auto to continue that run")
        return None
    if mode == "auto":
        complete = complete_checkpoints(cfg.output_dir)
        return str(complete[-1]) if complete else None
    if not os.path.isdir(mode):
        raise FileNotFoundError(f"train.resume={mode}: no such checkpoint folder. Use auto, never, or an existing "
                                f"checkpoint-N folder")
    if not (Path(mode) / CHECKPOINT_MARKER).exists() and not (Path(mode) / "trainer_state.json").exists():
        raise FileNotFoundError(f"train.resume={mode}: this folder is not a complete checkpoint (no {CHECKPOINT_MARKER}"
                                f" or trainer_state.json). Use train.resume=auto to pick the newest complete one")
    return mode


def step_of(checkpoint: str | Path) -> int:
    """N of a checkpoint-N folder."""
    return int(Path(checkpoint).name.split("-")[-1])


def finished_before(output_dir: str | Path, resume_from: Optional[str], step: int) -> bool:
    """Whether this run resumed from the checkpoint of its final step and a finished run's record is there: then it
    trained nothing and must overwrite nothing."""
    return bool(resume_from) and step == step_of(resume_from) and (Path(output_dir) / "train_results.json").exists()

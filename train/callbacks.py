"""The Trainer callbacks of a run: the per-step guard (stop requests and non-finite losses, agreed across ranks),
metrics.jsonl with its loss curve, and early stopping.

SIGTERM / SIGUSR1 finish the current step, save a checkpoint and stop (exit code 75 from train/sft.py); a NaN or
infinite loss stops the run before that step is saved (exit code 3). Both decisions are agreed across ranks every
optimizer step (one small all-reduce), so no rank is left waiting in a collective.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Optional

import torch
from transformers import TrainerCallback

from train.checkpoints import complete_checkpoints
from train.errors import TrainingDiverged
from train.plots import plot_loss_curve

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Set by SIGTERM / SIGUSR1 (preemption, scancel, a requeue warning); read once per optimizer step."""

    signal_name: Optional[str] = None

    @classmethod
    def install(cls) -> None:
        cls.signal_name = None

        def handler(signum, frame):
            if cls.signal_name is None:
                cls.signal_name = signal.Signals(signum).name
                print(f"[pid {os.getpid()}] {cls.signal_name}: finishing this step, then saving a checkpoint",
                      flush=True)

        for sig in STOP_SIGNALS:
            signal.signal(sig, handler)


class StepGuard(TrainerCallback):
    """After every optimizer step, before the Trainer logs or saves it: agree across ranks on (stop requested,
    loss not finite) and learn the most and the fewest real tokens a rank processed in the step, in one all-reduce.
    A non-finite loss raises TrainingDiverged (that step is never saved); a stop request saves a checkpoint now and
    ends training."""

    def __init__(self, trainer):  # the SFTTrainer (train/trainer.py) it guards
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        tokens = float(trainer._step_tokens)
        flags = torch.tensor([StopRequest.signal_name is not None, bool(trainer._nonfinite), tokens, -tokens],
                             dtype=torch.float64, device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        stop, nonfinite, most, fewest = flags.tolist()
        stop, nonfinite = bool(stop), bool(nonfinite)
        trainer._rank_tokens[0] += most
        trainer._rank_tokens[1] += -fewest
        trainer._step_tokens = 0
        if nonfinite:
            last = complete_checkpoints(args.output_dir)
            keep = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint was written before it"
            raise TrainingDiverged(
                f"the training loss became NaN or infinite at step {state.global_step}; this step was not saved and "
                f"{keep}. Lower train.learning_rate, raise train.warmup_ratio, check the data (data_report.md) or "
                f"use model.dtype=bfloat16 instead of float16, then run again (train.resume=auto continues from the "
                f"last good checkpoint)")
        if stop:
            StopRequest.signal_name = StopRequest.signal_name or "a peer rank's signal"
            trainer.preempted = StopRequest.signal_name
            control.should_save = True
            control.should_training_stop = True
        return control


class MetricsFileCallback(TrainerCallback):
    """Append every log line to <output_dir>/metrics.jsonl (main process) and draw loss_curve.png at the end."""

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.finished_before = False  # resumed at the step where a finished run ended: its record stays as it is

    def on_train_begin(self, args, state, control, **kwargs):
        # Starting at step N (0, or resumed from checkpoint-N): records a killed run wrote after step N are dropped,
        # so each step appears once; the redone steps follow.
        if state.is_world_process_zero and self.path.exists():
            rows = read_metrics(self.path)
            self.finished_before = state.global_step >= state.max_steps and any(
                "train_runtime" in r and r.get("step") == state.global_step for r in rows)
            if self.finished_before:
                return
            kept = [r for r in rows if r.get("step", 0) <= state.global_step and "train_runtime" not in r]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or self.finished_before:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            plot_loss_curve(self.path, self.path.parent / "loss_curve.png")


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
    return rows


def early_stopping(cfg) -> list:
    """[EarlyStoppingCallback] when train.early_stopping_patience > 0: stop once eval_loss has not improved by more
    than train.early_stopping_threshold for that many evaluations in a row; else []."""
    if not cfg.train.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience,
                                  early_stopping_threshold=cfg.train.early_stopping_threshold)]

"""Trainer wiring: TrainingArguments from the config, a thin Trainer subclass that counts real tokens, and callbacks
that write metrics.jsonl and a loss curve. The loop itself, optimizer, schedule, gradient accumulation, DeepSpeed and
checkpointing are the HF Trainer's.

Loss under gradient accumulation: the Trainer counts the label tokens of all micro-batches of an optimizer step
(`num_items_in_batch`, summed across data-parallel ranks with `average_tokens_across_devices`) and the summed token
loss is divided by that count, so the accumulated loss equals the large-batch loss (tests/test_sft.py).

Label-only logits: in training, the output layer and the cross-entropy run only at positions whose next token carries
a label (`logits_to_keep` as a boolean mask), instead of full-vocabulary fp32 logits for every position. In SFT most
tokens are prompt, so this saves most of the output layer's time and memory; the loss and gradients are the same
(tests/test_trainer.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from train.config import Config


def has_cuda() -> bool:
    return torch.cuda.is_available()


def training_arguments(cfg: Config) -> TrainingArguments:
    t = cfg.train
    cuda = has_cuda()
    report_to = ["wandb"] if cfg.tracking.wandb_mode != "disabled" else []
    return TrainingArguments(
        output_dir=cfg.output_dir,
        max_steps=t.max_steps,
        num_train_epochs=t.num_epochs,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        optim=t.optim,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        seed=t.seed,
        data_seed=t.seed,
        bf16=cuda and cfg.model.dtype == "bfloat16",
        fp16=cuda and cfg.model.dtype == "float16",
        use_cpu=not cuda,
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", 1)) > 1 else None,
        ddp_timeout=t.ddp_timeout_s,
        ddp_find_unused_parameters=False,
        report_to=report_to,
        run_name=cfg.tracking.run_name,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        average_tokens_across_devices=True,
        disable_tqdm=False,
    )


class SFTTrainer(Trainer):
    """The HF Trainer plus token accounting: real tokens and label tokens per second, packing efficiency."""

    def __init__(self, *args, pad_token_id: int, data_stats: Optional[Dict[str, float]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pad_token_id = pad_token_id
        self.data_stats = data_stats or {}  # e.g. packing_efficiency of the prepared rows, logged with every loss
        self._tokens = 0
        self._label_tokens = 0
        self._slots = 0
        self._window_start = time.perf_counter()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training or return_outputs or num_items_in_batch is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        ids, labels = inputs["input_ids"], inputs["labels"]
        real = inputs["attention_mask"].sum() if "attention_mask" in inputs else (ids != self.pad_token_id).sum()
        self._tokens += int(real)
        self._slots += ids.numel()
        self._label_tokens += int((labels != -100).sum())
        return label_only_loss(model, inputs, num_items_in_batch) * self._loss_scale()

    def _loss_scale(self) -> int:
        """As the Trainer does: with token averaging across ranks, DDP's gradient mean must become a sum."""
        if self.args.average_tokens_across_devices:
            return self.accelerator.num_processes // self.get_tp_size()
        return 1

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs and self._slots:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            world = self.args.world_size
            logs["tokens_per_s"] = round(self._tokens * world / elapsed, 2)  # all ranks together
            logs["label_tokens_per_s"] = round(self._label_tokens * world / elapsed, 2)
            logs["padding_fraction"] = round(1 - self._tokens / self._slots, 4)
            logs.update(self.data_stats)
            self._tokens = self._label_tokens = self._slots = 0
            self._window_start = time.perf_counter()
        super().log(logs, start_time)


def label_only_loss(model, inputs: Dict[str, torch.Tensor], num_items_in_batch) -> torch.Tensor:
    """Summed cross-entropy over label tokens / num_items_in_batch, computing logits only where a label follows."""
    labels = inputs["labels"]
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]  # position p predicts token p + 1
    keep = targets != -100
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits  # (label tokens, vocab)
    loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets[keep],
                                             reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


class MetricsFileCallback(TrainerCallback):
    """Append every log line to <output_dir>/metrics.jsonl (main process) and draw loss_curve.png at the end."""

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / "metrics.jsonl"

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
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
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", marker="." if len(train) < 50 else None)
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean per label token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)


def resume_checkpoint(cfg: Config) -> Optional[str]:
    """train.resume: auto → newest checkpoint in output_dir (None if none), never → None, else the given path."""
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode == "auto":
        if not os.path.isdir(cfg.output_dir):
            return None
        return get_last_checkpoint(cfg.output_dir)
    if not os.path.isdir(mode):
        raise FileNotFoundError(f"train.resume={mode}: no such checkpoint folder. Use auto, never, or an existing "
                                f"checkpoint-N folder")
    return mode


def final_losses(output_dir: str | Path) -> Dict[str, Any]:
    rows = read_metrics(Path(output_dir) / "metrics.jsonl")
    out: Dict[str, Any] = {}
    losses = [r["loss"] for r in rows if "loss" in r and not math.isnan(r["loss"])]
    if losses:
        out["first_train_loss"], out["last_train_loss"] = losses[0], losses[-1]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    if evals:
        out["last_eval_loss"] = evals[-1]
    summary = [r for r in rows if "train_runtime" in r]
    if summary:
        out.update({k: summary[-1][k] for k in ("train_runtime", "train_loss") if k in summary[-1]})
    return out

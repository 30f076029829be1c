"""The Trainer of a run: TrainingArguments from the config and a thin subclass of the HF Trainer that counts real
tokens, deals balanced micro-batches, computes the label-only loss (train/kernels/fused_loss.py), marks checkpoints
complete (train/checkpoints.py) and installs the step guard (train/callbacks.py). The loop itself, optimizer,
schedule, gradient accumulation, DeepSpeed and checkpoint contents are the HF Trainer's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Optional

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_pt_utils import BatchRebalanceSampler

from train.callbacks import StepGuard, StopRequest
from train.checkpoints import mark_complete, rotate_checkpoints
from train.config import Config
from train.data import IGNORE_INDEX
from train.data.packing import balance_micro_batches
from train.kernels.cpu_heap import trim_before_embedding_backward
from train.kernels.fused_loss import label_only_loss
from train.kernels.recompute import recomputing
from train.tracking import trainer_report_to


def has_cuda() -> bool:
    return torch.cuda.is_available()


def uses_deepspeed() -> bool:
    """accelerate launch with a DeepSpeed config sets this for every process."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def training_arguments(cfg: Config) -> TrainingArguments:
    t = cfg.train
    cuda = has_cuda()
    report_to = trainer_report_to(cfg)  # tracking.report_to (train/tracking.py)
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
        # early stopping (train/sft.py adds the callback): the Trainer tracks the best eval_loss and, at the end,
        # loads the best checkpoint, which rotate_checkpoints never deletes (config.py checks save_steps % eval_steps)
        metric_for_best_model="eval_loss" if t.early_stopping_patience else None,
        greater_is_better=False if t.early_stopping_patience else None,
        load_best_model_at_end=bool(t.early_stopping_patience),
        restore_callback_states_from_checkpoint=bool(t.early_stopping_patience),  # patience counter survives resume
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=None,  # rotation is ours: only after the newer checkpoint is complete (SFTTrainer)
        seed=t.seed,
        data_seed=t.seed,
        bf16=cuda and cfg.model.dtype == "bfloat16",
        fp16=cuda and cfg.model.dtype == "float16",
        use_cpu=not cuda and not uses_deepspeed(),  # DeepSpeed on a CPU runs as "no device" + gloo
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", 1)) > 1 else None,
        ddp_timeout=t.ddp_timeout_s,
        ddp_find_unused_parameters=False,
        report_to=report_to,
        run_name=cfg.tracking.run_name,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        average_tokens_across_devices=True,
        train_sampling_strategy="batch_rebalance" if t.sampler == "balanced" else "random",
        length_column_name="length",
        disable_tqdm=False,
        logging_nan_inf_filter=False,  # the HF default hides NaN losses in the logs; ours stop the run instead
    )


class SFTTrainer(Trainer):
    """The HF Trainer plus token accounting (real tokens and label tokens per second, packing efficiency), checkpoints
    that count only once complete, preemption on SIGTERM / SIGUSR1, and a stop on a non-finite loss."""

    def __init__(self, *args, pad_token_id: int, data_stats: Optional[Dict[str, float]] = None,
                 keep_checkpoints: Optional[int] = None, **kwargs):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and training_args.n_gpu > 1:
            # One process drives one GPU. transformers counts every visible GPU for a lone process and would wrap the
            # model in nn.DataParallel (and multiply the batch); transformers itself does this for model parallelism.
            training_args._n_gpu = 1
        super().__init__(*args, **kwargs)
        self.pad_token_id = pad_token_id
        self.data_stats = data_stats or {}  # e.g. packing_efficiency of the prepared rows, logged with every loss
        self.keep_checkpoints = keep_checkpoints
        self.preempted: Optional[str] = None  # the signal's name once a preemption checkpoint has been written
        self._nonfinite = torch.zeros((), dtype=torch.bool)
        self._tokens = 0
        self._label_tokens = 0
        self._slots = 0
        self._step_tokens = 0  # this rank's real tokens in the current optimizer step
        self._rank_tokens = [0, 0]  # over the logging window: sum of the busiest rank's and of the idlest rank's
        self._window_start = time.perf_counter()
        self.add_callback(StepGuard(self))
        if not has_cuda():  # CPU training: the freed activations' heap back to the system before that gradient
            trim_before_embedding_backward(self.model)

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "batch_rebalance":  # train.sampler=random
            return super()._get_train_sampler(train_dataset)
        a, world = self.args, max(1, self.args.world_size)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        step_rows = a.train_batch_size * a.gradient_accumulation_steps * world
        self._balanced_sampler = TokenBalancedSampler(
            lengths=list(dataset["length"]), effective_batch_size=step_rows, dp_size=world,
            grad_accum=a.gradient_accumulation_steps, rank=a.process_index if world > 1 else 0, seed=a.data_seed,
            drop_last=a.dataloader_drop_last)
        return self._balanced_sampler

    def _run_epoch(self, model, epoch, *args, **kwargs):
        # The Trainer sets the sampler's epoch through the dataloader, except on resume mid-epoch: the dataloader that
        # skips the trained batches hides the sampler, which would then replay epoch 0's order (transformers 5.23).
        if getattr(self, "_balanced_sampler", None) is not None:
            self._balanced_sampler.set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # no device sync here: the flag is read once per optimizer step, by StepGuard
        self._nonfinite = self._nonfinite.to(loss.device) | ~torch.isfinite(loss.detach())
        return loss

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # Resumed from the checkpoint of the final step: the HF loop would still run one more optimizer step.
        if self.args.max_steps > 0 and self.state.global_step >= self.args.max_steps:
            self.control.should_training_stop = True
            return [], None
        return super().get_batch_samples(epoch_iterator, num_batches, device)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)  # every rank writes its part (RNG state, ZeRO shards)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            mark_complete(folder, step=self.state.global_step, world_size=self.args.world_size,
                          reason=f"preempted ({StopRequest.signal_name})" if StopRequest.signal_name else "interval")
            rotate_checkpoints(folder.parent, self.keep_checkpoints, protect=self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training or return_outputs or num_items_in_batch is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        ids, labels = inputs["input_ids"], inputs["labels"]
        real = inputs["attention_mask"].sum() if "attention_mask" in inputs else (ids != self.pad_token_id).sum()
        self._tokens += int(real)
        self._step_tokens += int(real)
        self._slots += ids.numel()
        self._label_tokens += int((labels != IGNORE_INDEX).sum())
        with recomputing():  # what train/kernels/recompute.py registers is recomputed in backward instead of kept
            loss = label_only_loss(model, inputs, num_items_in_batch)
        return loss * self._loss_scale()

    def strategy_name(self) -> str:
        """How this run is distributed: deepspeed-zero<N>, fsdp, or accelerate's distributed type (no, multi_gpu)."""
        state = self.accelerator.state
        if getattr(state, "deepspeed_plugin", None) is not None:
            return f"deepspeed-zero{state.deepspeed_plugin.zero_stage}"
        if getattr(state, "fsdp_plugin", None) is not None:
            return "fsdp"
        return str(self.accelerator.distributed_type).split(".")[-1].lower()

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
            if world > 1 and self._rank_tokens[1]:  # how much more the busiest rank processed than the idlest
                logs["rank_token_imbalance"] = round(self._rank_tokens[0] / self._rank_tokens[1] - 1, 4)
            logs.update(self.data_stats)
            self._tokens = self._label_tokens = self._slots = 0
            self._rank_tokens = [0, 0]
            self._window_start = time.perf_counter()
        super().log(logs, start_time)


class TokenBalancedSampler(BatchRebalanceSampler):
    """transformers' BatchRebalanceSampler (the Trainer builds it for train_sampling_strategy='batch_rebalance': one
    shared shuffle per epoch, a global batch per optimizer step, each rank yields its own micro-batches) with our
    assignment: fixed-size micro-batches with nearly equal real tokens (`packing.balance_micro_batches`). transformers'
    own assignment balances a padded-cost model with micro-batches of varying size; for packed, padding-free rows and
    for predictable memory we want the row count fixed and the tokens even."""

    def _assign(self, indices, lengths):
        return balance_micro_batches(indices, lengths, self.dp_size, self.grad_accum)

"""Trainer wiring: TrainingArguments from the config, a thin Trainer subclass that counts real tokens, and callbacks
that write metrics.jsonl and a loss curve. The loop itself, optimizer, schedule, gradient accumulation, DeepSpeed and
checkpointing are the HF Trainer's.

Loss under gradient accumulation: the Trainer counts the label tokens of all micro-batches of an optimizer step
(`num_items_in_batch`, summed across data-parallel ranks with `average_tokens_across_devices`) and the summed token
loss is divided by that count, so the accumulated loss equals the large-batch loss (tests/test_sft.py).

Label-only logits: in training, the output layer and the cross-entropy run only at positions whose next token carries
a label (`logits_to_keep` as a boolean mask), instead of full-vocabulary fp32 logits for every position. In SFT most
tokens are prompt, so this saves most of the output layer's time and memory; the loss and gradients are the same
(tests/test_trainer.py). The cross-entropy (`SummedCrossEntropy`) then holds a single (label tokens, vocab) tensor:
its backward turns the logits into their gradient in place.

Checkpoints survive being killed: a checkpoint counts only once every rank has written it and the main process has
written `checkpoint_complete.json` into it (atomically, after a barrier); `train.resume: auto` picks the newest
complete one, and old checkpoints are rotated only after a newer one is complete. SIGTERM / SIGUSR1 finish the current
step, save a checkpoint and stop (exit code 75 from train/sft.py); a NaN or infinite loss stops the run before that
step is saved. Both decisions are agreed across ranks every optimizer step (one small all-reduce), so no rank is left
waiting in a collective.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import BatchRebalanceSampler

from train.config import Config
from train.cpu_heap import trim_before_embedding_backward
from train.recompute import recomputing
from train.data.packing import balance_micro_batches


def has_cuda() -> bool:
    return torch.cuda.is_available()


def uses_deepspeed() -> bool:
    """accelerate launch with a DeepSpeed config sets this for every process."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


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


CHECKPOINT_MARKER = "checkpoint_complete.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving that step."""


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
        self.add_callback(_StepGuard(self))
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
        # no device sync here: the flag is read once per optimizer step, by _StepGuard
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
        self._label_tokens += int((labels != -100).sum())
        with recomputing():  # what train/recompute.py registers is recomputed in backward instead of kept
            loss = label_only_loss(model, inputs, num_items_in_batch)
        return loss * self._loss_scale()

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


def label_only_loss(model, inputs: Dict[str, torch.Tensor], num_items_in_batch) -> torch.Tensor:
    """Summed cross-entropy over label tokens / num_items_in_batch, computing logits only where a label follows.

    Where the output layer is a plain Linear whose logits the model uses as they are (no soft-capping or scaling, not
    partitioned by ZeRO-3), the model's forward returns the final hidden states at those positions (its output layer
    answers with its input for this one call) and `LinearCrossEntropy` computes the logits a chunk of rows at a time:
    memory holds one chunk of logits, whatever the number of label tokens. Otherwise the model computes the label
    positions' logits and `SummedCrossEntropy` takes them."""
    labels = inputs["labels"]
    targets = torch.full_like(labels, -100)
    targets[:, :-1] = labels[:, 1:]  # position p predicts token p + 1
    keep = targets != -100
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    head = fusable_output_layer(model) if torch.is_grad_enabled() else None
    if head is not None:
        with _returns_its_input(head):
            hidden = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits  # (label tokens, hidden)
        loss = LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets[keep])
    else:
        logits = model(**model_inputs, logits_to_keep=keep, use_cache=False).logits  # (label tokens, vocab)
        loss = SummedCrossEntropy.apply(logits.float().reshape(-1, logits.shape[-1]), targets[keep])
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


OUTPUT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier",
                     "lm_head_multiplier")  # config keys of models that change the logits after the output layer


def fusable_output_layer(model) -> Optional[torch.nn.Linear]:
    """The model's output layer when `LinearCrossEntropy` may stand in for it and the loss, else None."""
    while isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        model = model.module
    if type(model).__name__ == "FullyShardedDataParallel":  # FSDP1: weights are sharded outside its forward
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or hasattr(head.weight, "ds_id") or type(head.weight.data) is not torch.Tensor:
        return None  # a LoRA/wrapped head (FSDP2 changes the class too), ZeRO-3-partitioned or a DTensor weight
    config = model.config.get_text_config()
    if any(getattr(config, key, None) not in (None, 1, 1.0) for key in OUTPUT_TRANSFORMS):
        return None
    return head


class _returns_its_input:
    """For one forward pass, `head(x)` returns x: the model hands back its final hidden states."""

    def __init__(self, head: torch.nn.Module):
        self.head = head

    def __enter__(self):
        self.own = self.head.__dict__.get("forward")  # e.g. an accelerate hook's forward: put back afterwards
        self.head.forward = lambda x: x  # an instance attribute shadows the class's forward

    def __exit__(self, *exc):
        if self.own is None:
            del self.head.forward
        else:
            self.head.forward = self.own


class LinearCrossEntropy(torch.autograd.Function):
    """cross_entropy(hidden @ weight.T + bias, targets, reduction="sum") without the (N, vocab) logits: the forward
    computes the logits a chunk of rows at a time and, as the loss is a plain sum, their gradients at once (softmax -
    one-hot, into the hidden states and the output layer's bias, and for an fp32 weight into an fp32 weight gradient);
    the backward scales them by the incoming gradient. Same value and gradients as the plain computation
    (tests/test_trainer.py), and no more arithmetic.

    A 16-bit output layer that trains (full fine-tuning on a GPU) gets its weight gradient in the backward instead, one
    slice of the vocabulary at a time: the slice's logits are recomputed from the kept hidden states and log-sum-exps,
    and its gradient is one product over all label rows in the compute dtype (tensor cores, fp32 accumulation inside
    the product, rounded once), written straight into a weight-dtype gradient. Summing per-chunk products into an fp32
    weight-sized buffer instead would cost 2.1 GB for the Llama-3 vocabulary and an fp32 GEMM per chunk. The price is
    one more product of the output layer's size (about 2% of an 8B model's step)."""

    ROWS = 128  # rows of logits per chunk (CPU, and the floor on a GPU)
    CHUNK_BYTES = 256 * 1024 ** 2  # on a GPU: rows (forward) / vocabulary columns (backward) per chunk up to this

    @staticmethod
    def rows_per_chunk(device: torch.device, vocab: int) -> int:
        if device.type == "cpu":
            return LinearCrossEntropy.ROWS
        return max(LinearCrossEntropy.ROWS, LinearCrossEntropy.CHUNK_BYTES // (4 * vocab) // 128 * 128)

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        weight_in_backward = weight.requires_grad and weight.dtype in (torch.bfloat16, torch.float16)
        weight_grad = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if weight.requires_grad and not weight_in_backward else None
        bias_grad = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) \
            if bias is not None and bias.requires_grad else None
        hidden_grad = torch.empty_like(hidden)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device) if weight_in_backward else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        step = LinearCrossEntropy.rows_per_chunk(hidden.device, weight.shape[0])
        for start in range(0, hidden.shape[0], step):
            rows = slice(start, start + step)
            h, t = hidden[rows], targets[rows]
            logits = torch.nn.functional.linear(h, weight, bias).float()
            # log-sum-exp and softmax in place (torch.logsumexp would allocate a second chunk-sized tensor)
            top = logits.amax(dim=-1, keepdim=True)
            picked = logits.gather(1, t[:, None])
            total = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)
            loss += (total.log() - (picked - top)).sum()
            if lse is not None:
                lse[rows] = (top + total.log()).squeeze(1)
            grad = logits.div_(total)  # softmax
            grad[torch.arange(len(t), device=t.device), t] -= 1
            hidden_grad[rows] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            if weight_grad is not None:
                weight_grad.addmm_(grad.t(), h.float())
            if bias_grad is not None:
                bias_grad += grad.sum(0)
            del logits, grad  # before the next chunk's logits exist: one chunk at a time, not two
        # Kept as attributes, not saved tensors, and dropped in the backward: the engine then holds the only reference
        # to the weight's gradient and the parameter adopts it (a saved tensor would make it copy a weight-sized one).
        ctx.grads = (hidden_grad, weight_grad, bias_grad)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.weight_in_backward = weight_in_backward
        if weight_in_backward:
            ctx.save_for_backward(hidden, weight, bias, targets, lse)
        return loss

    @staticmethod
    def backward(ctx, grad):
        hidden_grad, weight_grad, bias_grad = ctx.grads  # scaled in place: no second weight-sized tensor
        del ctx.grads
        weight_dtype, bias_dtype = ctx.dtypes
        if ctx.weight_in_backward:
            weight_grad = LinearCrossEntropy.weight_gradient(*ctx.saved_tensors, grad)
        else:
            weight_grad = None if weight_grad is None else weight_grad.mul_(grad).to(weight_dtype)
        return (hidden_grad.mul_(grad.to(hidden_grad.dtype)), weight_grad,
                None if bias_grad is None else bias_grad.mul_(grad).to(bias_dtype), None)

    @staticmethod
    def weight_gradient(hidden, weight, bias, targets, lse, grad) -> torch.Tensor:
        """d loss / d weight, a vocabulary slice at a time: softmax - one-hot of the slice's recomputed logits, times
        the incoming gradient, then one (slice, N) x (N, hidden) product in the weight's dtype."""
        h = hidden.to(weight.dtype)
        out = torch.empty_like(weight)
        vocab, n = weight.shape[0], hidden.shape[0]
        step = vocab if n == 0 else max(128, min(vocab, LinearCrossEntropy.CHUNK_BYTES // (4 * n) // 128 * 128))
        rows = torch.arange(n, device=hidden.device)
        for start in range(0, vocab, step):
            stop = min(start + step, vocab)
            logits = torch.nn.functional.linear(h, weight[start:stop], None if bias is None else bias[start:stop])
            g = logits.float().sub_(lse[:, None]).exp_()
            inside = (targets >= start) & (targets < stop)
            g[rows[inside], targets[inside] - start] -= 1
            torch.mm(g.mul_(grad).to(weight.dtype).t(), h, out=out[start:stop])
            del logits, g
        return out


class SummedCrossEntropy(torch.autograd.Function):
    """cross_entropy(logits, targets, reduction="sum") for (N, vocab) fp32 logits, holding one (N, vocab) tensor instead
    of three: the forward keeps the logits and a log-sum-exp per row (F.cross_entropy also keeps the log-probabilities),
    and the backward turns the logits into their gradient in place (softmax - one-hot), a chunk of rows at a time.
    The logits must be used by nothing else (the label-only loss owns them; autograd's version check would catch an
    op that saved them). Same value and gradient as F.cross_entropy (tests/test_trainer.py)."""

    ROWS = 64  # rows per chunk: bounds the temporaries of logsumexp to ROWS x vocab

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        lse = torch.cat([torch.logsumexp(chunk, dim=-1) for chunk in logits.split(SummedCrossEntropy.ROWS)]) \
            if logits.shape[0] else logits.new_zeros(0)
        ctx.save_for_backward(logits, targets, lse)
        return (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad_logits = logits  # reused: nothing else needs the logits
        for chunk, chunk_lse in zip(grad_logits.split(SummedCrossEntropy.ROWS), lse.split(SummedCrossEntropy.ROWS)):
            chunk.sub_(chunk_lse[:, None]).exp_()  # softmax
        grad_logits[torch.arange(len(targets), device=targets.device), targets] -= 1
        return grad_logits.mul_(grad), None


class _StepGuard(TrainerCallback):
    """After every optimizer step, before the Trainer logs or saves it: agree across ranks on (stop requested,
    loss not finite) and learn the most and the fewest real tokens a rank processed in the step, in one all-reduce.
    A non-finite loss raises TrainingDiverged (that step is never saved); a stop request saves a checkpoint now and
    ends training."""

    def __init__(self, trainer: "SFTTrainer"):
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

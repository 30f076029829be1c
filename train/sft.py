"""Supervised fine-tuning, top to bottom: config → data → model → trainer → save → model card.

One process:      python train/sft.py --config configs/recipes/demo_cpu.yaml [key=value ...]
Several (GPUs):   accelerate launch --config_file configs/accelerate/<x>.yaml train/sft.py --config <recipe> [key=value ...]

Every mistake a user can make in the recipe or the data is reported before a model is loaded, as one message that
names the key, file or line and how to fix it (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `train` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Allocator defaults for this machine's device, before torch is imported (PyTorch reads them at its first
# allocation): transparent huge pages for CPU tensors (THP_MEM_ALLOC_ENABLE=1, measured in BENCHMARKS.md, issue 9), or
# expandable CUDA segments on a GPU (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True). A value the user set wins.
from train.device import pin_one_process_gpu, set_allocator_defaults  # noqa: E402 (torch-free)

ALLOCATOR = set_allocator_defaults()

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3  # the loss became NaN/inf; the last good checkpoint is kept
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after saving a checkpoint; requeue and it resumes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. configs/recipes/demo_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10 lora.r=8")
    return parser.parse_args(argv)


def distributed_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as set by accelerate launch / torchrun, before any process group exists."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


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


def main(argv=None) -> int:
    args = parse_args(argv)
    pinned = pin_one_process_gpu()  # one process, one GPU: never nn.DataParallel over every GPU of the node
    if pinned is not None:
        print(f"one process: CUDA_VISIBLE_DEVICES={pinned} (the local rank's GPU)", flush=True)
    # 1. Config: recipe + overrides, validated before anything heavy is imported or loaded.
    from train.config import load_config

    cfg = load_config(args.config, args.overrides)
    trainer = train_sft(cfg, command=["train/sft.py", "--config", args.config, *args.overrides])[0]
    if trainer.preempted:
        print(f"stopped by {trainer.preempted} after saving checkpoint-{trainer.state.global_step}; run the same "
              f"command again (train.resume=auto) to continue. Exit code {EXIT_PREEMPTED}.", flush=True)
        return EXIT_PREEMPTED
    return 0


def train_sft(cfg, command=None, callbacks=()):
    """Run steps 2-6 for a loaded config; returns (trainer, tokenizer, prepared data, the Trainer's TrainOutput).
    `callbacks`: extra TrainerCallbacks (bench/train_throughput.py times the steps with one)."""
    from train.config import save_config

    rank, local_rank, world_size = distributed_env()
    is_main = rank == 0
    out = Path(cfg.output_dir)
    if is_main:
        save_config(cfg, out / "run_config.yaml")
    print(f"[rank {rank}/{world_size} local {local_rank}] method={cfg.method} model={cfg.model.name_or_path} "
          f"output_dir={out}", flush=True)
    print(f"[rank {rank}] {ALLOCATOR}", flush=True)

    import torch
    import transformers

    from train.attention import check_available, needs_varlen_kwargs
    from train.config import ConfigError

    from train.data.packing import Collator
    from train.data.prepare import load_or_build, write_reports
    from train.data.templates import setup_tokenizer
    from train.model import count_parameters, load_model, load_tokenizer, local_parameter_count
    from train.packed_attention import kernel_description
    from train.memory_check import check_memory
    from train.trainer import (MetricsFileCallback, SFTTrainer, StopRequest, discard_incomplete_checkpoints,
                               resume_checkpoint, training_arguments)

    transformers.set_seed(cfg.train.seed)
    problem = check_available(cfg.model.attn_implementation, torch.cuda.is_available())
    if problem:  # before any data is prepared or weight loaded
        raise ConfigError(problem)

    # 2. Data: tokenizer + template, then the prepared (cached) dataset. Rank 0 builds it; the others wait on files.
    tokenizer = load_tokenizer(cfg)
    tokenizer_changes = setup_tokenizer(tokenizer, cfg.data)
    data = load_or_build(cfg, tokenizer, is_main=is_main)
    check_memory(cfg, data.report, vocab=len(tokenizer))  # refuses (exit 2) a run predicted not to fit
    if is_main:
        write_reports(data, out)
        packing = data.report["packing"]
        print(f"data: {len(data.train)} training rows from {data.report['split']['train']} conversations, "
              f"packing efficiency {packing.get('packing_efficiency', 0):.3f}, cache {data.path}", flush=True)

    # Resume from the newest complete checkpoint (a kill during a save leaves an incomplete one: it is discarded).
    if is_main and cfg.train.resume == "auto":
        for broken in discard_incomplete_checkpoints(out):
            print(f"removed {broken}: it was never completely written (the run was killed while saving it)", flush=True)
    resume_from = resume_checkpoint(cfg)
    print(f"[rank {rank}] resume from {resume_from or 'the start'}", flush=True)
    StopRequest.install()  # SIGTERM / SIGUSR1: finish the step, save, exit 75

    # 3. Model: full weights, or LoRA adapters on a 16/32-bit or 4-bit base. The TrainingArguments come first: under
    #    ZeRO-3 they switch on zero.Init, so each rank loads only its shard instead of the whole model, and they pin
    #    each rank to its own GPU, where a 4-bit model is loaded (otherwise every rank would load onto GPU 0).
    setup_tracking(cfg, is_main)
    args_tr = training_arguments(cfg)
    model = load_model(cfg, tokenizer)
    trainable, total = count_parameters(model)
    held = local_parameter_count(model)
    attention = kernel_description(model.config._attn_implementation, args_tr.device.type, cfg.model.dtype)
    print(f"[rank {rank}] parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%); "
          f"this rank holds {held:,} ({100 * held / max(total, 1):.1f}%); "
          f"attention {model.config._attn_implementation}: {attention}", flush=True)

    # 4. Trainer: the HF loop with our collator (packed rows, position_ids restart per sample) and token accounting.
    trainer = SFTTrainer(
        model=model,
        args=args_tr,
        train_dataset=data.train,
        eval_dataset=data.eval if cfg.train.eval_steps else None,
        data_collator=Collator(pad_token_id=tokenizer.pad_token_id, packing=cfg.data.packing,
                               flash_varlen_kwargs=needs_varlen_kwargs(model.config._attn_implementation)),
        processing_class=tokenizer,
        callbacks=[MetricsFileCallback(cfg.output_dir), *early_stopping(cfg), *callbacks],
        pad_token_id=tokenizer.pad_token_id,
        data_stats={"packing_efficiency": data.report["packing"].get("packing_efficiency", 0.0)},
        keep_checkpoints=cfg.train.save_total_limit,
    )
    print(f"[rank {rank}] world_size={args_tr.world_size} process_index={args_tr.process_index} "
          f"device={args_tr.device} strategy={_strategy(trainer)} collective_timeout={args_tr.ddp_timeout}s", flush=True)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.preempted:  # a checkpoint was saved; the final save, evaluation and card wait for the resumed run
        return trainer, tokenizer, data, result
    if resume_from and trainer.state.global_step == int(Path(resume_from).name.split("-")[-1]) \
            and (out / "train_results.json").exists():  # resumed at the final step: keep the finished run's record
        print(f"[rank {rank}] {out} already holds the finished run (step {trainer.state.global_step}); nothing "
              f"trained, nothing overwritten. Start over with train.resume=never and a new output_dir", flush=True)
        return trainer, tokenizer, data, result

    # 5. Save: adapter or full weights (safetensors; ZeRO-3 weights gathered by the Trainer), tokenizer, optional merge.
    if trainer.is_fsdp_enabled:  # checkpoints stay sharded; the final weights are gathered into one loadable file
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(cfg.output_dir)
    metrics = {"train_loss": result.training_loss, "steps": result.global_step,
               "train_runtime_s": round(time.time() - started, 1), "world_size": args_tr.world_size,
               "trainable_parameters": trainable, "total_parameters": total}
    if cfg.train.early_stopping_patience and trainer.state.best_metric is not None:
        # the Trainer loaded the best checkpoint at the end of train(): that is the model saved above
        state = trainer.state
        metrics.update(best_step=state.best_global_step, best_eval_loss=state.best_metric,
                       stopped_early=state.global_step < state.max_steps)
        print(f"early stopping: best eval_loss {state.best_metric:.4f} at step {state.best_global_step} (saved); "
              f"{'stopped early' if metrics['stopped_early'] else 'ran to the end'} at step {state.global_step} "
              f"of {state.max_steps}", flush=True)
    if data.eval is not None and cfg.train.eval_steps:
        metrics.update(trainer.evaluate())  # collective under DDP/ZeRO: every rank takes part
    if is_main:
        tokenizer.save_pretrained(cfg.output_dir)
        (out / "train_results.json").write_text(json.dumps(metrics, indent=2))
        if cfg.save.merged and cfg.method in ("lora", "qlora"):
            from train.model import merge_adapter

            merge_adapter(cfg.model.name_or_path, out, out / "merged", dtype=cfg.model.dtype,
                          trust_remote_code=cfg.model.trust_remote_code)

        # 6. Model card: what was trained on what, how, and how it went.
        from train.card import write_model_card

        write_model_card(cfg, out, data.report, metrics, tokenizer_changes, command=command)
        print(f"saved to {out} (final train loss {result.training_loss:.4f})", flush=True)
    return trainer, tokenizer, data, result


def early_stopping(cfg) -> list:
    """[EarlyStoppingCallback] when train.early_stopping_patience > 0: stop once eval_loss has not improved by more
    than train.early_stopping_threshold for that many evaluations in a row; else []."""
    if not cfg.train.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience,
                                  early_stopping_threshold=cfg.train.early_stopping_threshold)]


def _strategy(trainer) -> str:
    acc = trainer.accelerator
    if getattr(acc.state, "deepspeed_plugin", None) is not None:
        return f"deepspeed-zero{acc.state.deepspeed_plugin.zero_stage}"
    if getattr(acc.state, "fsdp_plugin", None) is not None:
        return "fsdp"
    return str(acc.distributed_type).split(".")[-1].lower()


def run(argv=None) -> int:
    """main() with user errors turned into one readable message and exit code 2, never a bare traceback."""
    from train.config import ConfigError

    from train.data.quality import DataError
    from train.data.templates import TemplateError
    from train.trainer import TrainingDiverged

    try:
        return leave(main(argv), wait_for_peers=True)
    except (ConfigError, DataError, TemplateError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return leave(EXIT_USER_ERROR)
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return leave(EXIT_DIVERGED)


def leave(code: int, wait_for_peers: bool = False) -> int:
    """The exit code, returned; in a process that holds a process group, the process ends here with it.

    Python's interpreter teardown is skipped there (os._exit after everything a normal exit runs first: non-daemon
    threads joined, atexit handlers such as W&B's finish and logging's flush, stdout/stderr flushed). The teardown
    is what aborted ZeRO-3 ranks after complete runs: a gloo worker thread that frees a finished collective's tensor
    needs the GIL, and once the interpreter is finalizing, Python ends a thread asking for it with pthread_exit, which
    in that C++ frame is std::terminate ("terminate called without an active exception", SIGABRT, exit -6; seen in a
    core dump of rank 1). destroy_process_group() does not stop those threads while DeepSpeed still references the
    groups (every ZeRO-3 parameter does). `wait_for_peers`: a barrier first, so no rank leaves while a peer may still
    run a collective with it; not after an error, where a peer may never reach it."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return code
    import atexit
    import threading

    if wait_for_peers:
        dist.barrier()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    if dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(run())

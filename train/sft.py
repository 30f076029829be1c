"""Supervised fine-tuning, top to bottom: config → data → model → trainer → save → model card.

One process:      python train/sft.py --config configs/recipes/demo_cpu.yaml [key=value ...]
Several (GPUs):   accelerate launch --config_file configs/accelerate/<x>.yaml train/sft.py --config <recipe> [key=value ...]

Every mistake a user can make in the recipe or the data is reported before a model is loaded, as one message that
names the key, file or line and how to fix it (exit code 2; the codes are in train/errors.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import `train` from the repository root, and nothing from train/
    _here = Path(__file__).resolve().parent  # itself (train/kernels would shadow the `kernels` package transformers uses)
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

# Allocator defaults for this machine's device, before torch is imported (PyTorch reads them at its first
# allocation): transparent huge pages for CPU tensors, expandable CUDA segments on a GPU; a value the user set wins.
from train.device import distributed_env, pin_one_process_gpu, set_allocator_defaults  # noqa: E402 (torch-free)
from train.errors import EXIT_OK, EXIT_PREEMPTED, describe, leave  # noqa: E402

ALLOCATOR = set_allocator_defaults()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. configs/recipes/demo_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10 lora.r=8")
    parser.add_argument("--verbose", action="store_true",
                        help="show every warning of the libraries (known irrelevant ones are filtered, train/quiet.py)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from train.quiet import quiet

    quiet(args.verbose)  # before torch, transformers, bitsandbytes and DeepSpeed are imported (SFT_VERBOSE=1: all)
    pinned = pin_one_process_gpu()  # one process, one GPU: never nn.DataParallel over every GPU of the node
    if pinned is not None:
        print(f"one process: CUDA_VISIBLE_DEVICES={pinned} (the local rank's GPU)", flush=True)
    # 1. Config: recipe + overrides, validated before anything heavy is imported or loaded.
    from train.config import load_config

    cfg = load_config(args.config, args.overrides)
    # The model and tokenizer references, before torch is imported: a mistyped folder, a hub id with no cached copy
    # while offline, a gated or missing repository each end here with one message that says what to do.
    from train.model_source import check_model_sources

    for note in check_model_sources(cfg):
        print(note, flush=True)
    trainer = train_sft(cfg, command=["train/sft.py", "--config", args.config, *args.overrides])[0]
    if trainer.preempted:
        print(f"stopped by {trainer.preempted} after saving checkpoint-{trainer.state.global_step}; run the same "
              f"command again (train.resume=auto) to continue. Exit code {EXIT_PREEMPTED}.", flush=True)
        return EXIT_PREEMPTED
    return EXIT_OK


def train_sft(cfg, command=None, callbacks=()):
    """Run steps 2-6 for a loaded config; returns (trainer, tokenizer, prepared data, the Trainer's TrainOutput).
    `callbacks`: extra TrainerCallbacks (bench/train_throughput.py times the steps with one)."""
    import torch
    import transformers

    from train.callbacks import MetricsFileCallback, StopRequest, early_stopping
    from train.checkpoints import discard_incomplete_checkpoints, finished_before, resume_checkpoint
    from train.config import ConfigError, save_config
    from train.data.packing import Collator
    from train.data.inspect import untrained_token_warning
    from train.data.prepare import load_or_build, write_reports
    from train.data.report import console_summary
    from train.data.templates import setup_tokenizer
    from train.kernels.attention import check_available, needs_varlen_kwargs
    from train.kernels.packed_attention import kernel_description
    from train.model import count_parameters, load_model, load_tokenizer, local_parameter_count
    from train.plan.check import check_memory
    from train.tracking import check_trackers, setup_tracking
    from train.trainer import SFTTrainer, training_arguments

    rank, local_rank, world_size = distributed_env()
    is_main = rank == 0
    out = Path(cfg.output_dir)
    if is_main:
        save_config(cfg, out / "run_config.yaml")
    print(f"[rank {rank}/{world_size} local {local_rank}] method={cfg.method} model={cfg.model.name_or_path} "
          f"output_dir={out}\n[rank {rank}] {ALLOCATOR}", flush=True)
    transformers.set_seed(cfg.train.seed)
    problem = check_available(cfg.model.attn_implementation, torch.cuda.is_available())
    if problem:  # before any data is prepared or weight loaded
        raise ConfigError(problem)
    check_trackers(cfg, is_main)  # a tracker in tracking.report_to whose package is missing, an MLflow store
    if cfg.save.push_to_hub and is_main:  # a push that could not happen fails now, not after hours of training
        from train.export.hub import hub_token

        hub_token()

    # 2. Data: tokenizer + template, then the prepared (cached) dataset. Rank 0 builds it; the others wait on files.
    tokenizer = load_tokenizer(cfg)
    tokenizer_changes = setup_tokenizer(tokenizer, cfg.data)
    untrained = untrained_token_warning(tokenizer_changes, cfg)  # template tokens new to the vocabulary
    if untrained and is_main:
        print(f"warning: {untrained}", flush=True)
    data = load_or_build(cfg, tokenizer, is_main=is_main)
    check_memory(cfg, data.report, vocab=len(tokenizer))  # refuses (exit 2) a run predicted not to fit
    if is_main:
        write_reports(data, out)
        print(f"{console_summary(data.report)}\n  cache {data.path}", flush=True)

    # Resume from the newest complete checkpoint (a kill during a save leaves an incomplete one: it is discarded).
    if is_main and cfg.train.resume == "auto":
        for broken in discard_incomplete_checkpoints(out):
            print(f"removed {broken}: it was never completely written (the run was killed while saving it)", flush=True)
    resume_from = resume_checkpoint(cfg)
    print(f"[rank {rank}] resume from {resume_from or 'the start'}", flush=True)
    StopRequest.install()  # SIGTERM / SIGUSR1: finish the step, save, exit 75

    # 3. Model: full weights, or LoRA adapters on a 16/32-bit or 4-bit base (train/methods.py). The TrainingArguments
    #    come first: under ZeRO-3 they switch on zero.Init, so each rank loads only its shard instead of the whole
    #    model, and they pin each rank to its own GPU, where a 4-bit model is loaded.
    setup_tracking(cfg, is_main, resuming=resume_from is not None)
    args_tr = training_arguments(cfg)
    model = load_model(cfg, tokenizer)
    trainable, total = count_parameters(model)
    held = local_parameter_count(model)
    attention = model.config._attn_implementation
    print(f"[rank {rank}] parameters: {trainable:,} trainable of {total:,} ({100 * trainable / max(total, 1):.2f}%); "
          f"this rank holds {held:,} ({100 * held / max(total, 1):.1f}%); attention {attention}: "
          f"{kernel_description(attention, args_tr.device.type, cfg.model.dtype)}", flush=True)

    # 4. Trainer: the HF loop with our collator (packed rows, position_ids restart per sample) and token accounting.
    trainer = SFTTrainer(
        model=model,
        args=args_tr,
        train_dataset=data.train,
        eval_dataset=data.eval if cfg.train.eval_steps else None,
        data_collator=Collator(pad_token_id=tokenizer.pad_token_id, packing=cfg.data.packing,
                               flash_varlen_kwargs=needs_varlen_kwargs(attention)),
        processing_class=tokenizer,
        callbacks=[MetricsFileCallback(cfg.output_dir), *early_stopping(cfg), *callbacks],
        pad_token_id=tokenizer.pad_token_id,
        data_stats={"packing_efficiency": data.report.packing_efficiency},
        keep_checkpoints=cfg.train.save_total_limit,
    )
    print(f"[rank {rank}] world_size={args_tr.world_size} process_index={args_tr.process_index} "
          f"device={args_tr.device} strategy={trainer.strategy_name()} collective_timeout={args_tr.ddp_timeout}s",
          flush=True)
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.preempted:  # a checkpoint was saved; the final save, evaluation and card wait for the resumed run
        return trainer, tokenizer, data, result
    if finished_before(out, resume_from, trainer.state.global_step):  # keep the finished run's record
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
    state = trainer.state
    if cfg.train.early_stopping_patience and state.best_metric is not None:
        # the Trainer loaded the best checkpoint at the end of train(): that is the model saved above
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
        # 6. Model card: what was trained on what, how, and how it went.
        from train.card import write_model_card

        write_model_card(cfg, out, data.report, metrics, tokenizer_changes, command=command)
        if cfg.save.merged:  # validated: the method trains an adapter; streamed shard by shard (train/export/merge.py)
            from train.export.merge import merge_run

            merged = merge_run(cfg, tokenizer=tokenizer)
            print(f"merged into {merged.out_dir} ({len(merged.merged_modules)} weights, {merged.seconds} s)", flush=True)
        print(f"saved to {out} (final train loss {result.training_loss:.4f})", flush=True)
        if cfg.save.push_to_hub:  # the merged model when there is one, else the adapter or full weights
            from train.export.hub import push_run

            push_run(cfg, merged=cfg.save.merged)
    return trainer, tokenizer, data, result


def run(argv=None) -> int:
    """main() with user errors turned into one readable message and its exit code, never a bare traceback."""
    try:
        return leave(main(argv), wait_for_peers=True)
    except Exception as error:  # noqa: BLE001 - a bug (describe() gives None) is re-raised with its traceback
        known = describe(error)
        if known is None:
            raise
        code, message = known
        print(message, file=sys.stderr, flush=True)
        return leave(code)


if __name__ == "__main__":
    sys.exit(run())

"""Everything before and around training processes, as one command line:

    python -m launch prepare --config R [key=value ...]        prepare + cache the dataset, write data_report.*
    python -m launch eval --config R [--adapter DIR | --model DIR] [--base] [--limit N] [key=value ...]
                                                               base vs fine-tuned on the held-out split
    python -m launch run --config R [--accelerate NAME] [--gpus N] [--dry-run] [key=value ...]
                                                               choose the accelerate config, print the command, train
    python -m launch slurm --config R --nodes N --gpus-per-node G [--partition P] [--time T] [--dry-run | --submit]
                                                               render the sbatch script (and submit it)
    python -m launch plan --config R | --model M [--nodes N --gpus-per-node G --gpu h100] [--json] [key=value ...]
                                                               memory per GPU per strategy, what fits, step time

This side never joins a process group.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

from train.sft import EXIT_USER_ERROR  # one definition of the exit codes


def _load(args):
    from train.config import load_config
    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    cfg = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(cfg)
    changes = setup_tokenizer(tokenizer, cfg.data)
    return cfg, tokenizer, changes


def cmd_prepare(args) -> int:
    from train.data.prepare import load_or_build, write_reports

    cfg, tokenizer, changes = _load(args)
    started = time.time()
    data = load_or_build(cfg, tokenizer, is_main=True)
    paths = write_reports(data, Path(cfg.output_dir))
    r = data.report
    print(f"prepared in {time.time() - started:.1f}s → {data.path}")
    print(f"  template {changes.get('template')}, pad {changes.get('pad_token')!r}, added tokens {changes.get('added_tokens', 0)}")
    print(f"  conversations: {r['split']['train']} train, {r['split']['eval']} eval; "
          f"rejected {r['rejects'].get('total', 0)}; duplicates removed: {r['duplicates']['exact_removed']} exact, "
          f"{r['duplicates']['near_removed']} near")
    print(f"  rows: {len(data.train)} train" + (f", {len(data.eval)} eval" if data.eval is not None else "")
          + f"; packing efficiency {r['packing'].get('packing_efficiency', 0):.4f}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def cmd_eval(args) -> int:
    import torch

    from train import evaluate as ev
    from train.data.packing import Collator
    from train.data.labels import tokenize_conversation
    from train.data.prepare import load_or_build
    from train.data.templates import generation_prompt
    from train.model import load_base_model, resize_for_tokenizer

    from train.attention import check_available
    from train.config import ConfigError
    from train.device import eval_device_map

    cfg, tokenizer, changes = _load(args)
    problem = check_available(cfg.model.attn_implementation, torch.cuda.is_available())
    if problem:
        raise ConfigError(problem)
    data = load_or_build(cfg, tokenizer, is_main=True)
    conv_file = data.path / "eval_conversations.jsonl"
    if data.eval is None or not conv_file.exists():
        print("error: no held-out split: set data.validation_split > 0 or data.eval_sources", file=sys.stderr)
        return EXIT_USER_ERROR
    records = [json.loads(line) for line in conv_file.read_text(encoding="utf-8").splitlines()]
    records = [records[i] for i in ev.balanced_subset([r["file"] for r in records], args.limit)]
    conversations = [r["messages"] for r in records]
    rows = [tokenize_conversation(tokenizer, messages, cfg.data) for messages in conversations]
    prompts, references, tasks = [], [], []
    for messages in conversations:
        prompt_messages, reference = ev.split_prompt(messages)
        prompts.append(generation_prompt(tokenizer, prompt_messages, cfg.data))
        references.append(reference)
        tasks.append(ev.task_of(prompt_messages, reference))

    encoder, warnings = load_encoder(cfg, references)
    torch.manual_seed(cfg.train.seed)
    collator = Collator(pad_token_id=tokenizer.pad_token_id, packing=False)  # one conversation per row

    def score(model, label: str):
        t0 = time.time()
        preds = ev.generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                            stop_ids=[changes.get("end_of_turn_id")])
        per_sample, metrics = ev.score_all(preds, references, tasks, encoder)
        metrics["eval_loss"] = ev.mean_token_loss(model, rows, collator)
        print(f"  {label}: {len(preds)} samples in {time.time() - t0:.1f}s", flush=True)
        return metrics, preds, per_sample

    # on the local GPU when there is one (in the training dtype), else on the CPU
    device_map = eval_device_map(torch.cuda.is_available(), int(os.environ.get("LOCAL_RANK", 0)))
    print(f"evaluating on {'cuda:%d' % device_map[''] if device_map else 'the CPU'} in {cfg.model.dtype}", flush=True)

    def load(name_or_path: str):
        cfg.model.name_or_path = name_or_path
        model = load_base_model(cfg, device_map=device_map)
        resize_for_tokenizer(model, tokenizer)
        return model

    base_path = cfg.model.name_or_path
    runs = []  # (label, model, context manager factory)
    adapter = Path(args.adapter or cfg.output_dir)
    if args.model or cfg.method == "full":
        tuned_path = args.model or cfg.output_dir
        if not (Path(tuned_path) / "config.json").exists():
            print(f"error: no model in {tuned_path} (config.json missing). Train first, or pass --model DIR",
                  file=sys.stderr)
            return EXIT_USER_ERROR
        if args.base:
            runs.append(("base", lambda: load(base_path)))
        runs.append(("fine-tuned", lambda: load(tuned_path)))
    else:
        if not (adapter / "adapter_config.json").exists():
            print(f"error: no LoRA adapter in {adapter} (adapter_config.json missing). Train first, or pass "
                  f"--adapter DIR", file=sys.stderr)
            return EXIT_USER_ERROR
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(load(base_path), str(adapter))
        if args.base:
            runs.append(("base", lambda: peft_model))  # scored with the adapter disabled
        runs.append(("fine-tuned", lambda: peft_model))

    results, predictions = {}, [{"reference": r} for r in references]
    for label, get_model in runs:
        model = get_model()
        if label == "base" and hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                results[label], preds, scores = score(model, label)
        else:
            results[label], preds, scores = score(model, label)
        for p, pred, s in zip(predictions, preds, scores):
            p.update({label: pred, f"{label}_scores": s})
        del model

    meta = {"model": base_path, "adapter": None if (args.model or cfg.method == "full") else str(adapter),
            "samples": len(prompts), "template": changes.get("template", cfg.data.template),
            "tasks": dict(Counter(tasks)), "embedding_model": cfg.eval.embedding_model, "warnings": warnings}
    paths = ev.write_eval_report(Path(cfg.output_dir) / "eval", results, predictions, meta)
    wandb_dir = ev.log_to_wandb(cfg, results, predictions, paths, meta)
    print()
    print(ev.comparison_table(results))
    for warning in warnings:
        print(f"\nwarning: {warning}")
    print(f"\nreport: {paths['md']}  chart: {paths['chart']}  predictions: {paths['predictions']}")
    if wandb_dir:
        print(f"W&B ({cfg.tracking.wandb_mode}): {wandb_dir}")
    return 0


def load_encoder(cfg, references):
    """(the sentence encoder named by eval.embedding_model or None for `none`, [warnings]). An offline asset name is
    fetched by launch.assets; anything else is a folder or hub id."""
    from launch.assets import ENCODERS
    from train.config import ConfigError
    from train.metrics import SentenceEncoder

    name = cfg.eval.embedding_model.strip()
    if name.lower() == "none":
        return None, []
    path = str(ENCODERS[name]()) if name in ENCODERS else name
    try:
        encoder = SentenceEncoder(path, max_length=cfg.eval.embedding_max_length, name=name)
    except (OSError, ValueError) as err:
        raise ConfigError(f"eval.embedding_model={name}: cannot load it as a sentence encoder ({err}). Use "
                          f"{' or '.join(ENCODERS)} (fetched offline), a local model folder, a hub id on a machine "
                          f"with hub access, or none to skip the cosine metric") from None
    warning = encoder.language_warning(references)
    return encoder, [warning] if warning else []


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="prepare and cache the dataset, write data_report.{json,md,png}")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_prepare)

    e = sub.add_parser("eval", help="generate on the held-out split; compare base and fine-tuned")
    e.add_argument("--config", required=True)
    e.add_argument("--adapter", help="LoRA adapter folder (default: the recipe's output_dir)")
    e.add_argument("--model", help="a full model folder to evaluate instead of base + adapter")
    e.add_argument("--base", action="store_true", help="also evaluate the base model (adapter disabled)")
    e.add_argument("--limit", type=int, default=0,
                   help="evaluate N held-out samples, taken evenly from each eval file (0 = all)")
    e.add_argument("--max-new-tokens", type=int, default=128)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("overrides", nargs="*")
    e.set_defaults(func=cmd_eval)

    from launch.plan import add_parser as add_plan_parser
    from launch.run import add_parser as add_run_parser
    from launch.slurm import add_parser as add_slurm_parser

    add_run_parser(sub)
    add_slurm_parser(sub)
    add_plan_parser(sub)

    args = parser.parse_args(argv)
    from launch.assets import AssetError
    from train.config import ConfigError
    from train.data.quality import DataError
    from train.data.templates import TemplateError

    try:
        return args.func(args)
    except (AssetError, ConfigError, DataError, TemplateError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())

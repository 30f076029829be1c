"""Everything before and around training processes, as one command line:

    python -m launch prepare --config R [key=value ...]        prepare + cache the dataset, write data_report.*
    python -m launch eval --config R [--adapter DIR | --model DIR] [--base] [--limit N] [key=value ...]
                                                               base vs fine-tuned on the held-out split
    python -m launch run --config R [--accelerate NAME] [--gpus N] [--dry-run] [--recipe-batch] [key=value ...]
                                                               choose the accelerate config, print the command, train
    python -m launch slurm --config R --nodes N (--gpus-per-node G | --gres gpu:G) [--partition P] [--time T]
                           [--mem M] [--exclusive] [--constraint C] [--setup LINE] [--offline] [--dry-run | --submit]
                                                               render the sbatch script (and submit it)
    python -m launch plan --config R | --model M [--nodes N --gpus-per-node G --gpu h100] [--json] [key=value ...]
                                                               memory per GPU per strategy, what fits, step time

This side parses arguments and starts processes; what each command does lives in train/ (prepare: train/data/, eval:
train/eval/pipeline.py, plan: train/plan/). It never joins a process group.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from train.errors import describe


def _load(args, need_model: bool):
    from train.config import load_config
    from train.model_source import Reference, check_model_sources, check_reference

    cfg = load_config(args.config, args.overrides)
    # The model and tokenizer references are checked before torch and transformers are imported (seconds) and
    # before anything is loaded: a wrong path or an unreachable hub id is one message, not a traceback.
    for note in check_model_sources(cfg, need_model=need_model):
        print(note, file=sys.stderr, flush=True)
    if getattr(args, "model", None):
        check_reference(Reference("--model", args.model, None, ("model",)))

    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    changes = setup_tokenizer(tokenizer, cfg.data)
    return cfg, tokenizer, changes


def cmd_prepare(args) -> int:
    cfg, tokenizer, changes = _load(args, need_model=False)  # prepare needs only the tokenizer
    from train.data.prepare import load_or_build, write_reports

    started = time.time()
    data = load_or_build(cfg, tokenizer, is_main=True)
    paths = write_reports(data, Path(cfg.output_dir))
    r = data.report
    print(f"prepared in {time.time() - started:.1f}s → {data.path}")
    print(f"  template {changes.get('template')}, pad {changes.get('pad_token')!r}, added tokens {changes.get('added_tokens', 0)}")
    print(f"  conversations: {r.train_conversations} train, {r.eval_conversations} eval; "
          f"rejected {r.rejected}; duplicates removed: {r.duplicates['exact_removed']} exact, "
          f"{r.duplicates['near_removed']} near")
    print(f"  rows: {len(data.train)} train" + (f", {len(data.eval)} eval" if data.eval is not None else "")
          + f"; packing efficiency {r.packing_efficiency:.4f}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def cmd_eval(args) -> int:
    from train.eval.pipeline import EvalOptions, evaluate

    cfg, tokenizer, changes = _load(args, need_model=args.base or not args.model)
    evaluate(cfg, tokenizer, changes, EvalOptions(adapter=args.adapter, model=args.model, base=args.base,
                                                  limit=args.limit, max_new_tokens=args.max_new_tokens,
                                                  batch_size=args.batch_size))
    return 0


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
    try:
        return args.func(args)
    except Exception as error:  # noqa: BLE001 - a bug (describe() gives None) is re-raised with its traceback
        known = describe(error)
        if known is None:
            raise
        code, message = known
        print(message, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())

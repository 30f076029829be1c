"""Everything before and around training processes, as one command line:

    python -m launch prepare --config R [key=value ...]        prepare + cache the dataset, write data_report.*
    python -m launch inspect --config R [--n 3] [--index I] [key=value ...]
                                                               rendered samples, trained spans marked, token counts
    python -m launch eval --config R [--adapter DIR | --model DIR] [--base] [--limit N] [key=value ...]
                                                               base vs fine-tuned on the held-out split
    python -m launch run --config R [--accelerate NAME] [--gpus N] [--dry-run] [key=value ...]
                                                               choose the accelerate config, print the command, train
    python -m launch slurm --config R --nodes N --gpus-per-node G [--partition P] [--time T] [--dry-run | --submit]
                                                               render the sbatch script (and submit it)
    python -m launch plan --config R | --model M [--nodes N --gpus-per-node G --gpu h100] [--json] [key=value ...]
                                                               memory per GPU per strategy, what fits, step time

This side parses arguments and starts processes; what each command does lives in train/ (prepare: train/data/, eval:
train/eval/pipeline.py, inspect: train/data/inspect.py, plan: train/plan/). It never joins a process group.
Known irrelevant warnings of dependencies are filtered (train/quiet.py); `--verbose` on any command shows everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from train.errors import describe


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
    print(f"  conversations: {r.train_conversations} train, {r.eval_conversations} eval; "
          f"rejected {r.rejected}; duplicates removed: {r.duplicates['exact_removed']} exact, "
          f"{r.duplicates['near_removed']} near")
    print(f"  rows: {len(data.train)} train" + (f", {len(data.eval)} eval" if data.eval is not None else "")
          + f"; packing efficiency {r.packing_efficiency:.4f}")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def cmd_inspect(args) -> int:
    from train.data.inspect import inspect_recipe

    cfg, tokenizer, changes = _load(args)
    inspect_recipe(cfg, tokenizer, changes, n=args.n, index=args.index, color=sys.stdout.isatty())
    return 0


def cmd_eval(args) -> int:
    from train.eval.pipeline import EvalOptions, evaluate

    cfg, tokenizer, changes = _load(args)
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

    i = sub.add_parser("inspect", help="print rendered samples with the trained tokens marked, token counts and "
                                       "why samples were dropped")
    i.add_argument("--config", required=True)
    i.add_argument("--n", type=int, default=3, help="how many samples, from the first (default 3)")
    i.add_argument("--index", type=int, default=None,
                   help="show only sample I (0-based, in the order data.sources are read)")
    i.add_argument("overrides", nargs="*")
    i.set_defaults(func=cmd_inspect)

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
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="show every warning of the libraries (known irrelevant ones are filtered)")

    args = parser.parse_args(argv)
    from train.quiet import quiet

    quiet(args.verbose)  # before the libraries are imported by the command
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

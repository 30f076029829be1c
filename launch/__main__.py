"""Everything before and around training processes, as one command line:

    python -m launch prepare --config R [key=value ...]        prepare + cache the dataset, write data_report.*
    python -m launch inspect --config R [--n 3] [--index I] [key=value ...]
                                                               rendered samples, trained spans marked, token counts
    python -m launch eval --config R [--adapter DIR | --model DIR] [--base] [--limit N] [key=value ...]
                                                               base vs fine-tuned on the held-out split
    python -m launch run --config R [--accelerate NAME] [--gpus N] [--dry-run] [--recipe-batch] [key=value ...]
                                                               choose the accelerate config, print the command, train
    python -m launch slurm --config R --nodes N (--gpus-per-node G | --gres gpu:G) [--partition P] [--time T]
                           [--mem M] [--exclusive] [--constraint C] [--setup LINE] [--offline] [--dry-run | --submit]
                                                               render the sbatch script (and submit it)
    python -m launch plan --config R | --model M [--nodes N --gpus-per-node G --gpu h100] [--json] [key=value ...]
                                                               memory per GPU per strategy, what fits, step time
    python -m launch merge --config R [--adapter DIR] [--out DIR] [--dtype bfloat16] [key=value ...]
                                                               adapter + base -> output_dir/merged, shard by shard
    python -m launch export --config R --gguf [--quant q8_0|f16|bf16|q4_k_m...] [--model DIR] [--out DIR]
                                                               GGUF + Ollama Modelfile in output_dir/gguf
    python -m launch push --config R [--merged] [key=value ...]
                                                               the run (or its merged model) to save.hub_repo_id

This side parses arguments and starts processes; what each command does lives in train/ (prepare: train/data/, eval:
train/eval/pipeline.py, inspect: train/data/inspect.py, plan: train/plan/, merge, export and push: train/export/). It
never joins a process group. Known irrelevant warnings of dependencies are filtered (train/quiet.py); `--verbose` on
any command shows everything.
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
    from train.data.report import console_summary

    started = time.time()
    data = load_or_build(cfg, tokenizer, is_main=True)
    paths = write_reports(data, Path(cfg.output_dir))
    print(f"prepared in {time.time() - started:.1f}s → {data.path}")
    print(f"  template {changes.get('template')}, pad {changes.get('pad_token')!r}, added tokens {changes.get('added_tokens', 0)}")
    print(console_summary(data.report))
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def cmd_inspect(args) -> int:
    from train.data.inspect import inspect_recipe

    cfg, tokenizer, changes = _load(args, need_model=False)  # inspect renders and tokenises: the tokenizer only
    inspect_recipe(cfg, tokenizer, changes, n=args.n, index=args.index, color=sys.stdout.isatty())
    return 0


def cmd_eval(args) -> int:
    from train.eval.pipeline import EvalOptions, evaluate

    cfg, tokenizer, changes = _load(args, need_model=args.base or not args.model)
    evaluate(cfg, tokenizer, changes, EvalOptions(adapter=args.adapter, model=args.model, base=args.base,
                                                  limit=args.limit, max_new_tokens=args.max_new_tokens,
                                                  batch_size=args.batch_size))
    return 0


def cmd_merge(args) -> int:
    from train.config import load_config
    from train.export.merge import merge_run

    cfg = load_config(args.config, args.overrides)
    result = merge_run(cfg, adapter_dir=args.adapter, out_dir=args.out, dtype=args.dtype)
    print(f"merged {len(result.merged_modules)} weights ({len(result.replaced)} replaced, {result.quantized} through "
          f"the 4-bit round trip) into {result.out_dir}: {len(result.shards)} shard(s), "
          f"{result.total_bytes / 2**30:.2f} GiB, {result.seconds} s")
    return 0


def cmd_export(args) -> int:
    from train.config import load_config
    from train.export.gguf import export_run

    if not args.gguf:
        print("error: name the format: python -m launch export --config R --gguf", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.overrides)
    path, modelfile = export_run(cfg, model_dir=args.model, quant=args.quant, out_dir=args.out)
    print(f"GGUF ({args.quant}): {path} ({path.stat().st_size / 2**20:.1f} MiB)\nOllama: {modelfile}\n"
          f"  ollama create {Path(cfg.output_dir).name} -f {modelfile} && ollama run {Path(cfg.output_dir).name}\n"
          f"llama.cpp: llama-cli -m {path} -cnv")
    return 0


def cmd_push(args) -> int:
    from train.config import load_config
    from train.export.hub import push_run

    cfg = load_config(args.config, args.overrides)
    push_run(cfg, merged=args.merged)
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

    m = sub.add_parser("merge", help="merge a LoRA/QLoRA adapter into its base, shard by shard")
    m.add_argument("--config", required=True)
    m.add_argument("--adapter", help="adapter folder (default: the recipe's output_dir; a checkpoint-N folder works)")
    m.add_argument("--out", help="where the merged model goes (default: output_dir/merged)")
    m.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], help="merged weights (default: model.dtype)")
    m.add_argument("overrides", nargs="*")
    m.set_defaults(func=cmd_merge)

    x = sub.add_parser("export", help="write a GGUF file and an Ollama Modelfile")
    x.add_argument("--config", required=True)
    x.add_argument("--gguf", action="store_true", help="GGUF for llama.cpp / Ollama (the one format so far)")
    x.add_argument("--quant", default="q8_0", help="f16 | bf16 | f32 | q8_0 | q4_0 | q5_0 ... (k-quants such as "
                                                   "q4_k_m need llama.cpp's llama-quantize)")
    x.add_argument("--model", help="merged or full model folder (default: output_dir/merged, merged first if missing; "
                                   "output_dir for full fine-tuning)")
    x.add_argument("--out", help="output folder (default: output_dir/gguf)")
    x.add_argument("overrides", nargs="*")
    x.set_defaults(func=cmd_export)

    u = sub.add_parser("push", help="upload the run (adapter or full weights, or --merged) to save.hub_repo_id")
    u.add_argument("--config", required=True)
    u.add_argument("--merged", action="store_true", help="push output_dir/merged instead of the adapter")
    u.add_argument("overrides", nargs="*")
    u.set_defaults(func=cmd_push)

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

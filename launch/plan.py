"""`python -m launch plan`: will a run fit, with which strategy, micro-batch and gradient accumulation, and how fast,
before any GPU is touched. The model's shape comes from its config.json (no weights); the memory and throughput
model is train/plan/planner.py (the same one train/sft.py checks a run with before loading the model).

    python -m launch plan --config R [--nodes N --gpus-per-node G --gpu h100] [key=value ...]
    python -m launch plan --model llama3-8b --method lora --gpus-per-node 1 --gpu h100 --seq-len 4096 --global-batch 16
    python -m launch plan --model path/to/config.json|model-folder|org/name ... [--micro-batch b] [--json]

--model takes a config.json, a model folder, a name in configs/models/ (llama3-8b, llama3-70b, qwen3-8b) or a hub id.
A hub id is found as `launch run` finds it (train/plan/shape.py: shape_for): its config.json from the cache or the
hub, else the configs/models/ file that lists it under _hub_ids, else a Llama-style shape of the size in its name;
the model line says which. With --config the recipe's model, method, LoRA/QLoRA
settings, sequence length (data.max_length), batch and optimizer are planned; --model, --method, --seq-len,
--micro-batch and --global-batch override them.
"""

from __future__ import annotations

import json
import sys

from train.methods import NAMES as METHOD_NAMES
from train.plan.planner import GPUS


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="memory per GPU for DDP/ZeRO-2/ZeRO-3/offload/FSDP, what fits, the recommended "
                                    "strategy, micro-batch and accumulation, step time")
    p.add_argument("--config", help="recipe YAML (its model, method, LoRA, sequence length, batch, optimizer)")
    p.add_argument("--model", help="config.json, model folder, configs/models/ name (llama3-8b) or hub id")
    p.add_argument("--method", choices=METHOD_NAMES)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1)
    p.add_argument("--gpu", help=f"GPU type for memory and peak TFLOP/s: {', '.join(GPUS)} (default h100)")
    p.add_argument("--gpu-mem", type=float, help="GiB per GPU (overrides --gpu; alone it names no card, so no speed "
                                                 "is estimated unless --gpu-tflops is given too)")
    p.add_argument("--gpu-tflops", type=float, help="dense bf16 peak TFLOP/s per GPU (overrides --gpu)")
    p.add_argument("--mfu", type=float, help="model FLOP utilisation for the speed line (default: per method and GPU "
                                             "from configs/mfu.json, measured by scripts/gpu_check.sh where it ran)")
    p.add_argument("--seq-len", type=int, help="tokens per sequence (default: the recipe's data.max_length)")
    p.add_argument("--global-batch", type=int, help="sequences per optimizer step over all GPUs (default: the "
                                                    "recipe's micro-batch x accumulation x GPUs; --model: 32)")
    p.add_argument("--micro-batch", type=int, help="sequences per GPU per forward pass to show (default: the "
                                                   "recommended one)")
    p.add_argument("--label-fraction", type=float, default=1.0,
                   help="share of tokens with a label (logits are computed only there; default 1.0, the worst case)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. lora.r=64 train.optim=paged_adamw_8bit")
    p.set_defaults(func=cmd_plan)


def plan_config(args):
    """The Config to plan: the recipe, or the schema's defaults for --model; key=value overrides on top (both
    checked and validated by train/config.py), then the command line's settings."""
    from train.config import ConfigError, load_config

    if args.config:
        cfg = load_config(args.config, args.overrides)
    elif args.model:  # no data is read when planning: a placeholder source satisfies the validation
        cfg = load_config(None, [f"model.name_or_path={args.model}", "data.sources=[{path: none}]",
                                 "output_dir=outputs/plan", *args.overrides])
    else:
        raise ConfigError("python -m launch plan needs --config R or --model M (a config.json, a model folder, "
                          "a configs/models/ name such as llama3-8b, or a hub id)")
    if args.model:
        cfg.model.name_or_path = args.model
    if args.method:
        cfg.method = args.method
    if args.seq_len:
        cfg.data.max_length = args.seq_len
    if args.micro_batch:
        cfg.train.per_device_batch_size = args.micro_batch
    return cfg


def cmd_plan(args) -> int:
    from train.paths import MODELS_DIR
    from train.plan.shape import PlanError, shape_for
    from train.plan.planner import Assumptions, hardware, make_plan, render, to_json
    from train.errors import EXIT_USER_ERROR

    try:
        cfg = plan_config(args)
        # the same resolution as `python -m launch run` (launch/run.py: model_shape), so both plan the same model
        shape = shape_for(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
        if shape is None:
            names = ", ".join(sorted(p.stem for p in MODELS_DIR.glob("*.json")))
            raise PlanError(f"cannot read the config of '{cfg.model.name_or_path}': no local config.json, none in the "
                            f"hub cache or from the hub, no configs/models/*.json that lists it under _hub_ids, and no "
                            f"size in its name. Pass --model with a config.json or model folder, or one of: {names}")
        hw = hardware(args.gpu, args.nodes, args.gpus_per_node, args.gpu_mem, args.gpu_tflops)
        global_batch = args.global_batch
        if global_batch is None and not args.config:
            global_batch = max(32, hw.world) // hw.world * hw.world
        a = Assumptions(mfu=args.mfu, label_fraction=args.label_fraction)
        plan = make_plan(shape, cfg, hw, a, global_batch=global_batch, micro_batch=args.micro_batch,
                         requested_strategy=None)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps(to_json(plan), indent=2) if args.json else render(plan))
    return 0

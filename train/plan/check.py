"""The memory check train/sft.py runs after preparing the data and before loading the model: the plan for this
process's GPU (or, without CUDA, its share of the machine's RAM) under the strategy `accelerate launch` set up, and a
refusal (exit code 2) with the plan and the nearest setting that fits when it is predicted not to fit.
`train.memory_check: false` skips it."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

from train.config import ConfigError
from train.data.report import DataReport
from train.methods import method_of
from train.plan.shape import PlanError, read_shape
from train.paths import GIB, REPO
from train.plan.planner import GPUS, Assumptions, gpu_key, Hardware, Plan, format_gib, make_plan, render, strategy_label


class MemoryPlanError(ConfigError):
    """The recipe's setting is predicted not to fit; train/sft.py reports it with exit code 2."""


def launched_strategy(env) -> str:
    """The strategy accelerate launch set up for this process (a plain `python train/sft.py` is 'ddp' of one)."""
    if str(env.get("ACCELERATE_USE_FSDP", "")).lower() == "true":
        return "fsdp"
    if str(env.get("ACCELERATE_USE_DEEPSPEED", "")).lower() != "true":
        return "ddp"
    stage, offload = int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 0) or 0), \
        env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")
    path = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and not Path(path).is_file() and (REPO / path).is_file():  # the shipped configs, launched from elsewhere
        path = str(REPO / path)
    if path and Path(path).is_file():
        zero = json.loads(Path(path).read_text()).get("zero_optimization", {})
        stage = int(zero.get("stage", stage))
        offload = (zero.get("offload_param") or {}).get("device", offload)
    if stage == 3:
        return "zero3_offload" if offload == "cpu" else "zero3"
    return "zero2"  # stage 1 shards only the optimizer states: planned as ZeRO-2, which also shards gradients


def this_machine(env) -> Hardware:
    """This process's share of the machine: its GPU (all ranks alike), or on a CPU the RAM divided by the processes
    on this node."""
    world = int(env.get("WORLD_SIZE", 1))
    local = int(env.get("LOCAL_WORLD_SIZE", world))
    nodes = max(1, world // max(local, 1))
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(int(env.get("LOCAL_RANK", 0)))
        key = gpu_key(props.name)
        known = GPUS.get(key)
        return Hardware(nodes=nodes, gpus_per_node=local, gpu_mem_gib=props.total_memory / GIB, gpu=props.name,
                        tflops=known.bf16_tflops if known else GPUS["h100"].bf16_tflops, device="cuda", key=key)
    import psutil

    return Hardware(nodes=nodes, gpus_per_node=local, gpu_mem_gib=psutil.virtual_memory().total / GIB / local,
                    gpu="CPU", tflops=1.0, device="cpu")


def check_memory(cfg, data_report: Optional[DataReport] = None, vocab: Optional[int] = None, env=None,
                 hw: Optional[Hardware] = None) -> Optional[Plan]:
    """Plan this process's run and raise MemoryPlanError (train/sft.py: exit code 2) when it is predicted not to fit,
    with the plan and the nearest setting that fits. `train.memory_check: false` skips it. On a CPU the budget is
    the machine's RAM per process, so small CPU runs (tests, `make demo`) always pass."""
    if not cfg.train.memory_check:
        print("memory check: skipped (train.memory_check=false)", flush=True)
        return None
    env = os.environ if env is None else env
    try:
        shape = read_shape(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    except PlanError as e:
        print(f"memory check: skipped, {e}", flush=True)
        return None
    if vocab and vocab > shape.vocab:  # tokens added to the vocabulary grow the embeddings and the logits
        shape = replace(shape, vocab=vocab)
    longest = data_report.longest_sample if data_report else None
    if not cfg.data.packing and longest and longest < cfg.data.max_length:  # unpacked rows are padded only to the
        cfg = copy.deepcopy(cfg)  # longest sample of their batch: plan rows of the longest sample there is
        cfg.data.max_length = int(longest)
    hw = hw or this_machine(env)
    strategy = launched_strategy(env)
    a = Assumptions(label_fraction=data_report.label_fraction(cfg.data.max_length) if data_report else 1.0)
    plan = make_plan(shape, cfg, hw, a, requested_strategy=strategy)
    e = plan.requested.estimate
    unit = "GPU" if hw.device == "cuda" else "process (CPU RAM)"
    if e.fits:
        print(f"memory check: {format_gib(e.total)} of {e.limit / GIB:.1f} GiB per {unit} predicted "
              f"({strategy_label(strategy, hw)}, micro-batch {e.micro_batch}, checkpointing "
              f"{'on' if e.checkpointing else 'off'}; python -m launch plan --config <recipe> for the breakdown)",
              flush=True)
        return plan
    if not e.supported and hw.device == "cpu":  # the planner models GPUs; the CPU test runs of every strategy pass
        print(f"memory check: not planned on a CPU for {strategy} ({e.note})", flush=True)
        return plan
    if not e.supported:
        fix = f"{strategy} cannot run this: {e.note}"
    elif plan.nearest is not None:
        what, c = plan.nearest
        launch = f" (python -m launch run --accelerate {strategy_label(c.estimate.strategy, hw)})" \
            if c.estimate.strategy != strategy else ""
        fix = f"nearest setting that fits: {what}{launch}: {' '.join(c.overrides)}"
    elif hw.device == "cpu":
        fix = "nothing fits in this machine's RAM: train on a GPU machine (python -m launch plan --config <recipe> " \
              "--gpus-per-node N --gpu h100 shows what fits there)"
    else:
        more = f"at least {plan.min_gpus} GPUs of this size, " if plan.min_gpus else ""
        lighter = f"method={method_of(cfg).lighter}" if method_of(cfg).lighter else None
        fix = f"nothing fits on {hw.world} GPU(s): use {more}{'or ' + lighter + ', ' if lighter else ''}or larger GPUs"
    raise MemoryPlanError(
        f"the memory plan predicts {format_gib(e.total)} GiB per {unit} but {e.limit / GIB:.1f} GiB are available "
        f"({strategy_label(strategy, hw)}, micro-batch {e.micro_batch}, gradient checkpointing "
        f"{'on' if e.checkpointing else 'off'}). {fix}. To run anyway, set train.memory_check=false.\n\n{render(plan)}")

"""`python -m launch run`: pick the accelerate configuration that suits a recipe on this machine, print the exact
`accelerate launch ...` command, then run it (or stop there with --dry-run).

The choice, when --accelerate is not given, is the memory planner's (train/plan/planner.py, `python -m launch plan`): the
first of DDP (single_gpu / multi_gpu), ZeRO-2, ZeRO-3, FSDP, ZeRO-3 offload whose weights, gradients, optimizer
states, activations and overhead fit the GPUs with some micro-batch (gradient checkpointing if needed); no GPU → one
CPU process (or --accelerate cpu_ddp for several).
Combinations that cannot work are refused before anything starts, with the reason and the fix.

Preemption: SIGTERM or SIGUSR1 sent to this command is passed to the training processes as SIGUSR1 (the launcher
between them ignores it, so it cannot kill them mid-save); they finish the step, save a checkpoint and stop, and this
command exits 75 so that a scheduler requeues the job; the next run resumes from that checkpoint.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from train.errors import EXIT_PREEMPTED, EXIT_USER_ERROR, UserError
from train.methods import method_of
from train.paths import ACCELERATE_DIR, GIB, REPO


class LaunchError(UserError, ValueError):
    """A combination that cannot work; the message says why and what to do instead."""


@dataclass
class Plan:
    accelerate: str  # name of a configs/accelerate/*.yaml
    processes: int
    reason: str
    env: dict = field(default_factory=dict)
    extra_args: list = field(default_factory=list)
    batch_overrides: list = field(default_factory=list)  # the memory plan's micro-batch, accumulation, checkpointing
    notes: list = field(default_factory=list)  # printed as comments above the command

    def command(self, recipe: str, overrides: list[str], root: Path = Path()) -> list[str]:
        """The command: one CPU process runs train/sft.py itself, everything else goes through accelerate launch.
        Paths are relative to the repository (as printed), or under `root`. The plan's batch overrides come last."""
        script = [str(root / "train/sft.py"), "--config", recipe, *overrides, *self.batch_overrides]
        if self.accelerate == "cpu":
            return ["python", *script]
        return ["accelerate", "launch", "--config_file", str(root / "configs/accelerate" / f"{self.accelerate}.yaml"),
                "--num_processes", str(self.processes), *self.extra_args, *script]

    def shell(self, recipe: str, overrides: list[str]) -> str:
        prefix = "".join(f"{k}={v} " for k, v in self.env.items())
        return prefix + shlex.join(self.command(recipe, overrides))


def available_configs() -> list[str]:
    return sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml"))


def model_shape(cfg):
    """The model's shape as `python -m launch plan --config` finds it (train/plan/shape.py: shape_for): its config.json
    (local, cached or from the hub), configs/models/ by hub id, or the size in its name; None if none works."""
    from train.plan.shape import shape_for

    return shape_for(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)


def local_gpus() -> tuple[int, Optional[float]]:
    """(number of CUDA GPUs, memory of the first in GiB)."""
    import torch

    if not torch.cuda.is_available():
        return 0, None
    return torch.cuda.device_count(), torch.cuda.get_device_properties(0).total_memory / GIB


def _mixed_precision(cfg, cuda: bool) -> list[str]:
    if not cuda or cfg.model.dtype == "float32":
        return ["--mixed_precision", "no"]
    return ["--mixed_precision", "fp16" if cfg.model.dtype == "float16" else "bf16"]


# accelerate configuration -> the planner's strategy
STRATEGY_OF = {"single_gpu": "ddp", "multi_gpu": "ddp", "zero2": "zero2", "zero3": "zero3", "multi_node_zero3": "zero3",
               "zero3_offload": "zero3_offload", "fsdp2": "fsdp"}
BATCH_KEYS = ("train.per_device_batch_size", "train.gradient_accumulation_steps", "train.gradient_checkpointing")


def choose(cfg, gpus: int, gpu_gib: Optional[float], shape, nodes: int = 1) -> tuple[str, str]:
    """(accelerate config name, why) for a recipe on `nodes` x `gpus` GPUs of `gpu_gib` GiB each: the memory plan's
    recommendation. `shape` is a train.plan.shape.ModelShape, a parameter count (a Llama-style shape of that size is
    assumed) or None (unknown: the usual choice for the method)."""
    name, reason, _ = choose_setting(cfg, gpus, gpu_gib, shape, nodes)
    return name, reason


def choose_setting(cfg, gpus: int, gpu_gib: Optional[float], shape, nodes: int = 1, accelerate: Optional[str] = None):
    """(accelerate config name, why, the planner's Choice or None): `choose`, and with `accelerate` given the fastest
    setting of that configuration's strategy. The Choice carries the micro-batch, accumulation and checkpointing the
    plan recommends for the global batch the recipe makes on these GPUs."""
    from train.plan.shape import shape_from_parameter_count
    from train.plan.planner import Assumptions, Hardware, estimate, make_plan, recommend, strategy_label

    if accelerate is not None:
        strategy = STRATEGY_OF.get(accelerate)
        if strategy is None or shape is None or gpus == 0:
            return accelerate, "chosen with --accelerate", None
    if gpus == 0:
        return "cpu", "no GPU here: one CPU process (pass --accelerate cpu_ddp for several)", None
    if shape is None:
        name = "single_gpu" if gpus == 1 else ("zero3" if method_of(cfg).trains_base else "multi_gpu")
        return name, "model size unknown (config not reachable): the usual choice for the method", None
    if isinstance(shape, int):
        shape = shape_from_parameter_count(shape, cfg.model.name_or_path)
    hw = Hardware(nodes=nodes, gpus_per_node=gpus, gpu_mem_gib=gpu_gib)
    params = shape.exact_parameters or shape.parameters().total
    size = f"{params / 1e9:.1f}B parameters, {hw.world} x {gpu_gib:.0f} GiB"
    if accelerate is not None:
        b, a = cfg.train.per_device_batch_size, cfg.train.gradient_accumulation_steps
        c = recommend(shape, cfg, hw, b * a * hw.world, Assumptions(), (strategy,))
        if c is None:
            return accelerate, (f"chosen with --accelerate; {size}: no micro-batch fits with it, even 1 with "
                                f"checkpointing (python -m launch plan --config <recipe> shows what does)"), None
        e = c.estimate
        return accelerate, (f"chosen with --accelerate; {size}: fits with micro-batch {e.micro_batch}, gradient "
                            f"accumulation {c.grad_accum}, checkpointing {'on' if e.checkpointing else 'off'} "
                            f"({e.total / GIB:.1f} GiB per GPU)"), c
    plan = make_plan(shape, cfg, hw)
    if plan.recommended is None:
        need = f"Use at least {plan.min_gpus} GPUs" if plan.min_gpus else "Use more or larger GPUs"
        lighter = method_of(cfg).lighter
        hint = f" or method={lighter}" if lighter else ""
        raise LaunchError(f"{cfg.model.name_or_path} with method={cfg.method} does not fit {hw.world} GPU(s) of "
                          f"{gpu_gib:.0f} GiB with any strategy, micro-batch 1 and gradient checkpointing ({size}). "
                          f"{need}{hint}; python -m launch plan --config <recipe> shows the breakdown")
    c = plan.recommended
    e = c.estimate
    reason = (f"{size}: fits with micro-batch {e.micro_batch}, gradient accumulation {c.grad_accum}, checkpointing "
              f"{'on' if e.checkpointing else 'off'} ({e.total / GIB:.1f} GiB per GPU; python -m launch plan for the "
              f"breakdown)")
    b, per_gpu = cfg.train.per_device_batch_size, c.grad_accum * e.micro_batch
    mine = estimate(shape, cfg, hw, e.strategy, b, cfg.train.gradient_checkpointing, max(1, per_gpu // b))
    if not mine.fits:
        reason += f". The recipe's own setting needs {mine.total / GIB:.1f} GiB"
    return strategy_label(e.strategy, hw), reason, c


def batch_setting(cfg, choice, overrides: list[str], keep: bool, why: str = "") -> tuple[list[str], str]:
    """(overrides to add to the command, the line that says so): the plan's micro-batch, accumulation and
    checkpointing when they differ from the recipe's, unless the command line sets one of them or `keep`
    (--recipe-batch). The global batch does not change: micro-batch x accumulation stays the same per GPU."""
    t = cfg.train
    mine = (f"micro-batch {t.per_device_batch_size}, gradient accumulation {t.gradient_accumulation_steps}, "
            f"checkpointing {'on' if t.gradient_checkpointing else 'off'}")
    if choice is None:
        return [], f"keeps the recipe's {mine}: {why or 'no memory plan for this run'}"
    planned = choice.overrides
    current = [f"train.per_device_batch_size={t.per_device_batch_size}",
               f"train.gradient_accumulation_steps={t.gradient_accumulation_steps}",
               f"train.gradient_checkpointing={'true' if t.gradient_checkpointing else 'false'}"]
    given = [o.split("=", 1)[0].lstrip("+") for o in overrides if o.split("=", 1)[0].lstrip("+") in BATCH_KEYS]
    if planned == current:
        return [], f"keeps the recipe's {mine}: the plan's fastest setting that fits"
    if given:
        return [], (f"keeps {mine} ({', '.join(given)} given on the command line); the plan would use "
                    f"{' '.join(planned)}")
    if keep:
        return [], f"keeps the recipe's {mine} (--recipe-batch); the plan would use {' '.join(planned)}"
    changed = [new for new, old in zip(planned, current) if new != old]
    return changed, (f"applies the plan's {', '.join(changed)} (the recipe has {mine}); the global batch is the same. "
                     f"--recipe-batch keeps the recipe's")


def global_batch_line(cfg, world: int) -> str:
    """The global batch as the recipe is written (one process) and on `world` processes, and how to keep the first."""
    b, a = cfg.train.per_device_batch_size, cfg.train.gradient_accumulation_steps
    one = b * a
    if world <= 1:
        return f"global batch: {one} sequences per optimizer step (micro-batch {b} x accumulation {a})"
    line = (f"global batch: {one} sequences per optimizer step as the recipe is written for one GPU (micro-batch {b} x "
            f"accumulation {a}) -> {one * world} on {world} processes ({b} x {a} x {world}); the learning rate is not "
            f"scaled. ")
    if one % world == 0:
        per = one // world
        keep = f"train.gradient_accumulation_steps={a // world}" if a % world == 0 else \
            f"train.per_device_batch_size={per} train.gradient_accumulation_steps=1"
        return line + f"To keep {one}: {keep}"
    return line + f"{one} cannot be kept on {world} processes (not a multiple of {world})"


def check(cfg, name: str, gpus: int, cuda: bool) -> None:
    """Refuse configurations that cannot work, naming the reason and the fix."""
    names = available_configs() + ["cpu"]
    if name not in names:
        raise LaunchError(f"--accelerate {name}: no configs/accelerate/{name}.yaml. Choose one of: {', '.join(names)}")
    if not cuda and name in ("single_gpu", "multi_gpu", "fsdp2"):
        why = ("FSDP through accelerate does not run on a CPU" if name == "fsdp2"
               else "it needs CUDA GPUs; on a CPU it would start unsynchronised single processes")
        raise LaunchError(f"--accelerate {name}: no CUDA GPU on this machine and {why}. Use --accelerate cpu_ddp "
                          f"(several CPU processes) or run on a GPU node")
    if cuda and name in ("cpu", "cpu_ddp") and gpus:
        print(f"note: --accelerate {name} trains on the CPU although {gpus} GPU(s) are present", file=sys.stderr)
    if name == "single_gpu" and gpus > 1:
        raise LaunchError(f"--accelerate single_gpu runs one process, but --gpus {gpus} asks for more. Use multi_gpu, "
                          f"zero2, zero3 or fsdp2, or --gpus 1")
    from train.plan.planner import method_conflict

    strategy = {"fsdp2": "fsdp", "multi_node_zero3": "zero3"}.get(name, name)
    conflict = method_conflict(strategy, cfg)  # the planner's rules: it never recommends what is refused here
    if conflict:
        raise LaunchError(conflict)


def plan(cfg, accelerate: Optional[str] = None, gpus: Optional[int] = None, gpu_gib: Optional[float] = None,
         nodes: int = 1, node_rank: int = 0, main_addr: Optional[str] = None, main_port: int = 29500,
         dry_run: bool = False, overrides: Optional[list[str]] = None, keep_batch: bool = False) -> Plan:
    """The accelerate configuration, the process count and the training command's extra arguments, plus (in
    `batch_overrides` and `notes`) the memory plan's micro-batch setting and the global batch. `overrides`: the
    command line's key=value list (a batch key given there is kept)."""
    have, have_gib = local_gpus()
    # A dry run with --gpus N on a machine without GPUs plans for a GPU node (e.g. from a laptop or a login node).
    cuda = have > 0 or (dry_run and bool(gpus) and accelerate not in ("cpu", "cpu_ddp"))
    if gpus is not None and have and gpus > have:
        raise LaunchError(f"--gpus {gpus}: this machine has {have} GPU(s). Use --gpus {have} or fewer")
    if gpus is not None and gpus < 0:
        raise LaunchError(f"--gpus {gpus}: must be 0 or more")
    n = have if gpus is None else gpus
    gib = gpu_gib or have_gib or 80.0  # an 80 GiB A100/H100 when planning on a machine without GPUs
    shape = model_shape(cfg) if (cuda and n) else None
    name, reason, choice = choose_setting(cfg, n if cuda else 0, gib, shape, nodes, accelerate)
    check(cfg, name, n, cuda)
    why = ("no memory plan for a CPU run" if not (cuda and n) else "the model's size is unknown, so there is no "
           "memory plan" if shape is None else "the memory plan finds no setting of this configuration that fits")
    batch, batch_note = batch_setting(cfg, choice, list(overrides or []), keep_batch, why)
    notes = [f"model: {cfg.model.name_or_path}, shape from {shape.origin}" if shape is not None and shape.origin else
             "", batch_note]
    if name.startswith("multi_node") and nodes < 2:
        raise LaunchError(f"--accelerate {name} is for several nodes: add --nodes N --node-rank R --main-addr HOST "
                          f"(slurm/ sets them), or use zero3 on one node")

    env, extra = {}, []
    if name == "cpu":
        return Plan("cpu", 1, reason, extra_args=[], batch_overrides=batch,
                    notes=[n for n in notes if n] + [global_batch_line(cfg, 1)])
    if name == "cpu_ddp":
        env["ACCELERATE_USE_CPU"] = "1"  # without it accelerate starts unsynchronised world-size-1 processes
        processes = gpus or 2
    else:
        processes = 1 if name == "single_gpu" else max(n, 1)
    extra += _mixed_precision(cfg, cuda and name != "cpu_ddp")
    if nodes > 1:
        if not main_addr:
            raise LaunchError("--nodes > 1 needs --main-addr (the first node's host name or IP); slurm/ sets it")
        extra += ["--num_machines", str(nodes), "--machine_rank", str(node_rank), "--main_process_ip", main_addr,
                  "--main_process_port", str(main_port)]
        processes *= nodes
    notes.append(global_batch_line(cfg, processes))
    return Plan(name, processes, reason, env=env, extra_args=extra, batch_overrides=batch,
                notes=[n for n in notes if n])


def _ignore_usr1() -> None:
    # Runs in the child before exec: the accelerate/torchrun launcher inherits "ignore SIGUSR1", so a preemption
    # signal reaches the training processes (which install their own handler) without killing the launcher.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def execute(p: Plan, recipe: str, overrides: list[str], output_dir: str) -> int:
    # Run from the caller's folder (the recipe and its data paths are relative to it), with absolute repo paths.
    command = p.command(recipe, overrides, root=REPO)
    if p.accelerate == "cpu":
        argv = [sys.executable, *command[1:]]
    else:
        exe = Path(sys.executable).parent / "accelerate"
        launcher = [str(exe), "launch"] if exe.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
        argv = launcher + command[2:]
    child = subprocess.Popen(argv, env={**os.environ, **p.env}, start_new_session=True, preexec_fn=_ignore_usr1)
    received = []

    def forward(signum, frame):
        received.append(signal.Signals(signum).name)
        signal_process_tree(child.pid, signal.SIGUSR1)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        rc = child.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received and _preempted_checkpoint(output_dir):
        print(f"preempted ({received[0]}): checkpoint saved; exit {EXIT_PREEMPTED} so the job is requeued",
              file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    return rc


def signal_process_tree(pid: int, sig: int) -> None:
    """Send `sig` to a process and all its descendants: torchrun starts each training process in its own session,
    so signalling a process group would miss them."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def _preempted_checkpoint(output_dir: str) -> bool:
    from train.checkpoints import CHECKPOINT_MARKER, complete_checkpoints

    done = complete_checkpoints(output_dir)
    if not done:
        return False
    return json.loads((done[-1] / CHECKPOINT_MARKER).read_text()).get("reason", "").startswith("preempted")


def cmd_run(args) -> int:
    from train.config import load_config

    cfg = load_config(args.config, args.overrides)  # every config error surfaces here, before any process starts
    try:
        p = plan(cfg, accelerate=args.accelerate, gpus=args.gpus, gpu_gib=args.gpu_memory_gib, nodes=args.nodes,
                 node_rank=args.node_rank, main_addr=args.main_addr, main_port=args.main_port, dry_run=args.dry_run,
                 overrides=args.overrides, keep_batch=args.recipe_batch)
        if not args.dry_run:  # before any process starts: a wrong model path is one message, not one per rank
            from train.model_source import check_model_sources

            for note in check_model_sources(cfg):
                print(note, file=sys.stderr, flush=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"# {p.accelerate}: {p.reason}")
    for note in p.notes:
        print(f"# {note}")
    print(p.shell(args.config, args.overrides), flush=True)
    if args.dry_run:
        return 0
    return execute(p, args.config, args.overrides, cfg.output_dir)


def add_parser(sub) -> None:
    r = sub.add_parser("run", help="choose the accelerate configuration, print the accelerate launch command, run it")
    r.add_argument("--config", required=True)
    r.add_argument("--accelerate", help=f"a configs/accelerate name ({', '.join(available_configs())}) or cpu; "
                                        f"default: chosen from the recipe and this machine")
    r.add_argument("--gpus", type=int, help="GPUs per node (default: all on this machine); with cpu_ddp: processes")
    r.add_argument("--gpu-memory-gib", type=float, help="memory per GPU for the choice (default: this machine's, "
                                                        "or 80 when planning on a machine without GPUs)")
    r.add_argument("--nodes", type=int, default=1)
    r.add_argument("--node-rank", type=int, default=0)
    r.add_argument("--main-addr")
    r.add_argument("--main-port", type=int, default=29500)
    r.add_argument("--dry-run", action="store_true", help="print the command and exit")
    r.add_argument("--recipe-batch", action="store_true",
                   help="run the recipe's micro-batch, accumulation and checkpointing as written (default: the memory "
                        "plan's fastest setting for the same global batch, printed in the command)")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(func=cmd_run)

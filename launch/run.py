"""`python -m launch run`: pick the accelerate configuration that suits a recipe on this machine, print the exact
`accelerate launch ...` command, then run it (or stop there with --dry-run).

The choice, when --accelerate is not given (weights/optimizer memory only; `python -m launch plan` will add
activations):
  no GPU                → one CPU process (or --accelerate cpu_ddp for several)
  1 GPU                 → single_gpu; full SFT that does not fit → zero3_offload
  N GPUs, LoRA / QLoRA  → multi_gpu (DDP) when the frozen base fits on one GPU, else zero3
  N GPUs, full SFT      → zero2 when weights + 1/N of gradients and Adam states fit, else zero3, else zero3_offload
Combinations that cannot work are refused before anything starts, with the reason and the fix.

Preemption: SIGTERM or SIGUSR1 sent to this command is passed to the training processes as SIGUSR1 (the launcher
between them ignores it, so it cannot kill them mid-save); they finish the step, save a checkpoint and stop, and this
command exits 75 so that a scheduler requeues the job; the next run resumes from that checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from train.sft import EXIT_PREEMPTED, EXIT_USER_ERROR

REPO = Path(__file__).resolve().parent.parent
ACCELERATE_DIR = REPO / "configs" / "accelerate"
GIB = 1024 ** 3

# Bytes per parameter of the model states, bf16 weights with fp32 Adam states (mixed precision).
FULL_BYTES = 16  # 2 weights + 2 gradients + 12 (fp32 master weights, Adam m and v)
FROZEN_BYTES = {"lora": 2.0, "qlora": 0.56}  # 16-bit base; 4-bit nf4 + double-quant constants
USABLE_FRACTION = 0.85  # leave room for activations, the CUDA context and fragmentation


class LaunchError(ValueError):
    """A combination that cannot work; the message says why and what to do instead."""


@dataclass
class Plan:
    accelerate: str  # name of a configs/accelerate/*.yaml
    processes: int
    reason: str
    env: dict = field(default_factory=dict)
    extra_args: list = field(default_factory=list)

    def command(self, recipe: str, overrides: list[str], root: Path = Path()) -> list[str]:
        """The command: one CPU process runs train/sft.py itself, everything else goes through accelerate launch.
        Paths are relative to the repository (as printed), or under `root`."""
        script = [str(root / "train/sft.py"), "--config", recipe, *overrides]
        if self.accelerate == "cpu":
            return ["python", *script]
        return ["accelerate", "launch", "--config_file", str(root / "configs/accelerate" / f"{self.accelerate}.yaml"),
                "--num_processes", str(self.processes), *self.extra_args, *script]

    def shell(self, recipe: str, overrides: list[str]) -> str:
        prefix = "".join(f"{k}={v} " for k, v in self.env.items())
        return prefix + shlex.join(self.command(recipe, overrides))


def available_configs() -> list[str]:
    return sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml"))


def model_parameters(cfg) -> Optional[int]:
    """Parameter count from the model's config (no weights are read: the model is built on the meta device); from
    the name (e.g. '70B') when the config cannot be reached; None if neither works."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(cfg.model.name_or_path, revision=cfg.model.revision,
                                            trust_remote_code=cfg.model.trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # no hub access on this machine, or an unknown architecture: fall back to the name
        match = re.search(r"(\d+(?:\.\d+)?)\s*[bB](?![a-zA-Z])", cfg.model.name_or_path)
        return int(float(match.group(1)) * 1e9) if match else None


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


def choose(cfg, gpus: int, gpu_gib: Optional[float], params: Optional[int]) -> tuple[str, str]:
    """(accelerate config name, why) for a recipe on `gpus` GPUs of `gpu_gib` GiB each."""
    if gpus == 0:
        return "cpu", "no GPU here: one CPU process (pass --accelerate cpu_ddp for several)"
    if params is None:
        name = "single_gpu" if gpus == 1 else ("zero3" if cfg.method == "full" else "multi_gpu")
        return name, "model size unknown (config not reachable): the usual choice for the method"
    usable = USABLE_FRACTION * gpu_gib * GIB
    size = f"{params / 1e9:.1f}B parameters, {gpus} x {gpu_gib:.0f} GiB"
    if cfg.method == "full":
        if gpus == 1:
            if FULL_BYTES * params <= usable:
                return "single_gpu", f"{size}: weights, gradients and Adam states fit on one GPU"
            return "zero3_offload", f"{size}: full SFT does not fit one GPU; optimizer and weights offloaded to CPU"
        if 2 * params + (FULL_BYTES - 2) * params / gpus <= usable:
            return "zero2", f"{size}: weights fit on each GPU; gradients and Adam states sharded (ZeRO-2)"
        if FULL_BYTES * params / gpus <= usable:
            return "zero3", f"{size}: weights, gradients and Adam states sharded over {gpus} GPUs (ZeRO-3)"
        return "zero3_offload", f"{size}: even sharded, the states do not fit; offloaded to CPU memory"
    frozen = FROZEN_BYTES[cfg.method] * params
    if frozen <= usable:
        if gpus == 1:
            return "single_gpu", f"{size}: the frozen base fits on the GPU"
        return "multi_gpu", f"{size}: the frozen base fits on one GPU; data parallel (DDP) over {gpus}"
    if gpus > 1 and frozen / gpus <= usable:
        return "zero3", f"{size}: the frozen base does not fit one GPU; sharded over {gpus} GPUs (ZeRO-3)"
    need = int(frozen // usable) + 1
    hint = " or method=qlora" if cfg.method == "lora" else ""
    raise LaunchError(f"{cfg.model.name_or_path} with method={cfg.method} needs about {frozen / GIB:.0f} GiB for its "
                      f"frozen weights; {gpus} GPU(s) of {gpu_gib:.0f} GiB cannot hold it. Use at least {need} GPUs"
                      f"{hint}")


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
    sharded = name.startswith("zero3") or name == "fsdp2"
    if cfg.method == "qlora" and sharded:
        from train.config import resolved_quant_storage

        if resolved_quant_storage(cfg) == "uint8":
            raise LaunchError(f"method=qlora under {name} needs the 4-bit weights stored in the model dtype so they "
                              f"can be flattened and sharded; qlora.quant_storage=uint8 fails ('Cannot flatten "
                              f"integer dtype tensors'). Set qlora.quant_storage=auto")
        if name == "zero3_offload":
            raise LaunchError("method=qlora cannot use zero3_offload: DeepSpeed cannot offload bitsandbytes 4-bit "
                              "weights to CPU. Use zero3, or method=lora with zero3_offload")
    if name == "fsdp2" and cfg.method == "qlora" and cfg.qlora.compute_dtype != cfg.model.dtype:
        raise LaunchError(f"method=qlora under fsdp2 needs qlora.compute_dtype = model.dtype (now "
                          f"{cfg.qlora.compute_dtype} vs {cfg.model.dtype}): FSDP shards one dtype. Set both to "
                          f"bfloat16")


def plan(cfg, accelerate: Optional[str] = None, gpus: Optional[int] = None, gpu_gib: Optional[float] = None,
         nodes: int = 1, node_rank: int = 0, main_addr: Optional[str] = None, main_port: int = 29500,
         dry_run: bool = False) -> Plan:
    have, have_gib = local_gpus()
    # A dry run with --gpus N on a machine without GPUs plans for a GPU node (e.g. from a laptop or a login node).
    cuda = have > 0 or (dry_run and bool(gpus) and accelerate not in ("cpu", "cpu_ddp"))
    if gpus is not None and have and gpus > have:
        raise LaunchError(f"--gpus {gpus}: this machine has {have} GPU(s). Use --gpus {have} or fewer")
    if gpus is not None and gpus < 0:
        raise LaunchError(f"--gpus {gpus}: must be 0 or more")
    n = have if gpus is None else gpus
    gib = gpu_gib or have_gib or 80.0  # an 80 GiB A100/H100 when planning on a machine without GPUs
    if accelerate is None:
        name, reason = choose(cfg, n if cuda else 0, gib, model_parameters(cfg))
    else:
        name, reason = accelerate, "chosen with --accelerate"
    check(cfg, name, n, cuda)
    if name.startswith("multi_node") and nodes < 2:
        raise LaunchError(f"--accelerate {name} is for several nodes: add --nodes N --node-rank R --main-addr HOST "
                          f"(slurm/ sets them), or use zero3 on one node")

    env, extra = {}, []
    if name == "cpu":
        return Plan("cpu", 1, reason, extra_args=[])
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
    return Plan(name, processes, reason, env=env, extra_args=extra)


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
    from train.trainer import CHECKPOINT_MARKER, complete_checkpoints

    done = complete_checkpoints(output_dir)
    if not done:
        return False
    return json.loads((done[-1] / CHECKPOINT_MARKER).read_text()).get("reason", "").startswith("preempted")


def cmd_run(args) -> int:
    from train.config import load_config

    cfg = load_config(args.config, args.overrides)  # every config error surfaces here, before any process starts
    try:
        p = plan(cfg, accelerate=args.accelerate, gpus=args.gpus, gpu_gib=args.gpu_memory_gib, nodes=args.nodes,
                 node_rank=args.node_rank, main_addr=args.main_addr, main_port=args.main_port, dry_run=args.dry_run)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"# {p.accelerate}: {p.reason}")
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
    r.add_argument("overrides", nargs="*")
    r.set_defaults(func=cmd_run)

"""`python -m launch slurm`: render an sbatch script for a recipe from the loaded configuration (never by grepping
YAML), print it (--dry-run), write it under the run's output folder, and submit it (--submit).

    python -m launch slurm --config R --nodes 4 --gpus-per-node 8 [--partition P] [--time T] [--account A]
                           [--accelerate NAME] [--dry-run | --submit] [key=value ...]

One node uses slurm/single_node.sbatch (through `python -m launch run`); several nodes use slurm/multi_node.sbatch
(one `accelerate launch` per node, machine rank from each task's own SLURM_NODEID). `--gpus-per-node 0` runs one CPU
process per node over gloo: for trying the path, and for the tests against a real local Slurm cluster.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from launch.run import REPO, LaunchError, plan
from train.errors import EXIT_USER_ERROR

TEMPLATES = {"single": REPO / "slurm" / "single_node.sbatch", "multi": REPO / "slurm" / "multi_node.sbatch"}
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(template: str, values: dict) -> str:
    """Replace every {{name}}; a name without a value is a bug in this file, so it fails loudly. Lines that render
    empty (optional #SBATCH lines) are dropped."""
    missing = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"template fields without a value: {missing}")
    lines = []
    for line in template.split("\n"):
        rendered = PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), line)
        if rendered.strip() or not line.strip():  # drop a line that was only an optional field
            lines.append(rendered)
    return "\n".join(lines)


def render(cfg, recipe: str, overrides: list[str], nodes: int, gpus_per_node: int, time: str = "24:00:00",
           partition: str | None = None, account: str | None = None, accelerate: str | None = None,
           cpus_per_task: int | None = None, job_name: str | None = None, signal_seconds: int = 300,
           render_command: str = "") -> tuple[str, Path]:
    """(script text, the path it is written to) for this recipe on nodes x gpus_per_node."""
    if nodes < 1:
        raise LaunchError(f"--nodes {nodes}: must be 1 or more")
    if gpus_per_node < 0:
        raise LaunchError(f"--gpus-per-node {gpus_per_node}: must be 0 (CPU processes) or more")
    cpu = gpus_per_node == 0
    if cpu:
        accelerate = accelerate or ("cpu_ddp" if nodes > 1 else "cpu")
        if accelerate not in ("cpu", "cpu_ddp"):
            raise LaunchError(f"--gpus-per-node 0 runs CPU processes; --accelerate {accelerate} needs GPUs")
    procs = 1 if cpu else gpus_per_node  # per node
    p = plan(cfg, accelerate=accelerate, gpus=procs, dry_run=True)  # chooses (GPUs) and validates the combination
    name, flags, env_lines = p.accelerate, p.extra_args, "\n".join(f"export {k}={v}" for k, v in p.env.items())
    if nodes > 1 and name in ("single_gpu", "cpu"):
        raise LaunchError(f"--accelerate {name} runs one process; for {nodes} nodes choose multi_gpu, zero2, "
                          f"zero3, zero3_offload or fsdp2")
    # The job runs from the repository root: a recipe path that only makes sense from here becomes absolute.
    if not Path(recipe).is_absolute() and not (REPO / recipe).exists():
        recipe = str(Path(recipe).resolve())
    out = Path(cfg.output_dir)
    out = out if out.is_absolute() else REPO / out
    log_dir = out / "slurm"
    job_name = job_name or re.sub(r"[^\w.-]", "_", Path(recipe).stem)
    script_path = log_dir / f"{job_name}.sbatch"
    values = {
        "job_name": job_name, "nodes": nodes, "procs_per_node": procs,
        "gpus_line": "" if cpu else f"#SBATCH --gpus-per-node={gpus_per_node}",
        "cpus_per_task": cpus_per_task or (4 if cpu else 8 * gpus_per_node),
        "time": time,
        "partition_line": f"#SBATCH --partition={partition}" if partition else "",
        "account_line": f"#SBATCH --account={account}" if account else "",
        "signal_seconds": signal_seconds, "log_dir": log_dir, "repo": shlex.quote(str(REPO)),
        "recipe": shlex.quote(str(recipe)), "overrides": shlex.join(overrides), "env_lines": env_lines,
        "accelerate": name, "accelerate_config": f"configs/accelerate/{name}.yaml", "launch_flags": shlex.join(flags),
        "render_command": render_command or "python -m launch slurm", "script_path": script_path,
    }
    template = TEMPLATES["single" if nodes == 1 else "multi"].read_text(encoding="utf-8")
    return fill(template, values), script_path


def cmd_slurm(args) -> int:
    from train.config import load_config

    cfg = load_config(args.config, args.overrides)  # the whole recipe is validated before anything is written
    command = shlex.join(["python", "-m", "launch", "slurm", *sys.argv[2:]]) if len(sys.argv) > 2 else ""
    try:
        script, path = render(cfg, args.config, args.overrides, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                              time=args.time, partition=args.partition, account=args.account,
                              accelerate=args.accelerate, cpus_per_task=args.cpus_per_task, job_name=args.job_name,
                              signal_seconds=args.signal_seconds, render_command=command)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.dry_run:
        print(script, end="")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)  # Slurm does not create the folder of --output
    path.write_text(script, encoding="utf-8")
    print(f"wrote {path}")
    if not args.submit:
        print(f"submit with: sbatch {path}")
        return 0
    res = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"error: sbatch failed ({res.returncode}): {res.stderr.strip()}", file=sys.stderr)
        return res.returncode or 1
    job_id = res.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}")
    print(f"log: {path.parent / f'{path.stem}-{job_id}.out'}")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("slurm", help="render (and submit) an sbatch script for the recipe")
    s.add_argument("--config", required=True)
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, default=8, help="0 = one CPU process per node (gloo)")
    s.add_argument("--partition")
    s.add_argument("--time", default="24:00:00")
    s.add_argument("--account")
    s.add_argument("--accelerate", help="a configs/accelerate name (default: chosen as `launch run` does)")
    s.add_argument("--cpus-per-task", type=int)
    s.add_argument("--job-name")
    s.add_argument("--signal-seconds", type=int, default=300,
                   help="USR1 this many seconds before the time limit: time to save a checkpoint")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the script, write nothing")
    mode.add_argument("--submit", action="store_true", help="write the script and submit it with sbatch")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_slurm)

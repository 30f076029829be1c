"""`python -m launch slurm`: render an sbatch script for a recipe from the loaded configuration (never by grepping
YAML), print it (--dry-run), write it under the run's output folder, and submit it (--submit).

    python -m launch slurm --config R --nodes 4 (--gpus-per-node 8 | --gres gpu:a100:8) [--partition P] [--time T]
                           [--account A] [--mem 500G] [--cpus-per-task 64] [--exclusive] [--constraint C]
                           [--setup "module load cuda/12.4; source ~/venvs/sft/bin/activate"] [--hf-home DIR]
                           [--offline] [--accelerate NAME] [--dry-run | --submit] [key=value ...]

One node uses slurm/single_node.sbatch (through `python -m launch run`); several nodes use slurm/multi_node.sbatch
(one `accelerate launch` per node, machine rank from each task's own SLURM_NODEID). `--gpus-per-node 0` runs one CPU
process per node over gloo: for trying the path, and for the tests against a real local Slurm cluster.

The environment comes from the recipe's `slurm.setup` lines and `--setup` (run with `set +u`: module and conda scripts
read unset variables); without any, the repository's .venv or the python on PATH, and the job says which and stops
with exit code 2 when that python cannot import torch, transformers and accelerate. `--offline` (or slurm.offline)
is for compute nodes without internet: the job sets HF_HUB_OFFLINE=1, and the model must already be in HF_HOME, which
is checked here before anything is written. No --time: no time line, so the partition's default limit applies, and
this command says so (with the partition's limits when `scontrol` answers).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from launch.run import REPO, LaunchError, plan
from train.errors import EXIT_USER_ERROR, UserError

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


GRES_GPU = re.compile(r"^gpu(?::[\w.-]+)?:(\d+)$")  # gpu:8, gpu:a100:8, gpu:h100_80gb:4
MEMORY = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


@dataclass
class Resources:
    """What the job asks Slurm for, besides nodes and the time limit."""

    gpus_per_node: Optional[int] = None  # None: 8, or the count in --gres
    gres: Optional[str] = None  # e.g. gpu:a100:8, instead of --gpus-per-node
    cpus_per_task: Optional[int] = None  # default: 4 for a CPU job, 8 per GPU
    mem: Optional[str] = None  # per node, as sbatch writes it: 500G, 64000M, 0 (all of the node's memory)
    exclusive: bool = False
    constraint: Optional[str] = None  # node features, e.g. a100|h100 or "ib&a100"
    partition: Optional[str] = None
    account: Optional[str] = None
    time: Optional[str] = None  # None: no --time line, the partition's default applies

    def gpus(self) -> int:
        """GPUs per node: from --gres when given (and --gpus-per-node must agree), else --gpus-per-node (8)."""
        if self.gres is None:
            return 8 if self.gpus_per_node is None else self.gpus_per_node
        m = GRES_GPU.match(self.gres)
        if not m:
            raise LaunchError(f"--gres {self.gres}: give GPUs per node as gpu:N or gpu:TYPE:N (e.g. gpu:8, "
                              f"gpu:a100:8); other generic resources go in a --setup line or your site's defaults")
        n = int(m.group(1))
        if self.gpus_per_node is not None and self.gpus_per_node != n:
            raise LaunchError(f"--gres {self.gres} asks for {n} GPUs per node but --gpus-per-node says "
                              f"{self.gpus_per_node}: give one of them")
        if n == 0:
            raise LaunchError(f"--gres {self.gres}: 0 GPUs; for a CPU job use --gpus-per-node 0 without --gres")
        return n


def setup_block(lines: List[str]) -> str:
    """The job's environment lines, or the default (the repository's .venv, else PATH), then a check that the python
    it ends up with can run training: a clear exit 2 instead of a ModuleNotFoundError traceback per rank."""
    if lines:
        body = "\n".join(["# Environment: slurm.setup (recipe) and --setup lines, run with set +u (module, conda and",
                          "# some activate scripts read unset variables).", "set +u", *lines, "set -u"])
        fix = "fix the slurm.setup / --setup lines"
    else:
        body = ("# Environment: none given (slurm.setup in the recipe or --setup); the repository's .venv when it\n"
                "# exists, else the python first on the compute node's PATH.\n"
                "if [ -f .venv/bin/activate ]; then set +u; source .venv/bin/activate; set -u; fi")
        fix = "give the environment with --setup or slurm.setup, e.g. --setup 'source ~/venvs/sft/bin/activate'"
    check = ('echo "[job $SLURM_JOB_ID] python: $(command -v python || echo none)"\n'
             "python -c 'import torch, transformers, accelerate' || { echo \"[job $SLURM_JOB_ID] error: the job's "
             "python ($(command -v python || echo none)) cannot import torch, transformers and accelerate: " + fix
             + '" >&2; exit 2; }')
    return body + "\n" + check


def hf_lines(hf_home: Optional[str], offline: bool) -> str:
    lines = ["# Hugging Face: where models and datasets are cached, and whether the compute nodes reach the hub."]
    lines.append(f"export HF_HOME={shlex.quote(hf_home)}" if hf_home else
                 "# export HF_HOME=/shared/hf_home   # a folder every node sees that holds the models (--hf-home)")
    lines.append("export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1   # no internet on the compute nodes (--offline)"
                 if offline else
                 "# export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1   # no internet on the compute nodes (--offline)")
    return "\n".join(lines)


def render(cfg, recipe: str, overrides: list[str], nodes: int, res: Resources, accelerate: str | None = None,
           job_name: str | None = None, signal_seconds: int = 300, render_command: str = "",
           setup: Optional[List[str]] = None, hf_home: Optional[str] = None, offline: Optional[bool] = None,
           dry_run: bool = False) -> tuple[str, Path]:
    """(script text, the path it is written to) for this recipe on `nodes` nodes with `res`. `setup`, `hf_home` and
    `offline` add to (setup) or replace the recipe's slurm section."""
    if nodes < 1:
        raise LaunchError(f"--nodes {nodes}: must be 1 or more")
    gpus_per_node = res.gpus()
    if gpus_per_node < 0:
        raise LaunchError(f"--gpus-per-node {gpus_per_node}: must be 0 (CPU processes) or more")
    if res.mem is not None and not MEMORY.match(res.mem):
        raise LaunchError(f"--mem {res.mem}: memory per node as sbatch writes it, e.g. 500G, 64000M, or 0 for all "
                          f"of the node's memory")
    if res.cpus_per_task is not None and res.cpus_per_task < 1:
        raise LaunchError(f"--cpus-per-task {res.cpus_per_task}: must be 1 or more")
    cpu = gpus_per_node == 0
    if cpu:
        accelerate = accelerate or ("cpu_ddp" if nodes > 1 else "cpu")
        if accelerate not in ("cpu", "cpu_ddp"):
            raise LaunchError(f"--gpus-per-node 0 runs CPU processes; --accelerate {accelerate} needs GPUs")
    procs = 1 if cpu else gpus_per_node  # per node
    p = plan(cfg, accelerate=accelerate, gpus=procs, dry_run=True,  # chooses (GPUs) and validates the combination
             overrides=overrides)
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
    lines = [*cfg.slurm.setup, *(setup or [])]
    if nodes > 1:  # accelerate launch runs train/sft.py directly: the memory plan's setting goes into the overrides
        overrides = [*overrides, *p.batch_overrides]  # (one node runs `launch run`, which applies its own plan there)
    if dry_run:  # nothing is written: never point at a file that does not exist
        submit = (f"# Not written (--dry-run): save this output to a file and submit it with sbatch FILE, or run the "
                  f"same command\n# without --dry-run to write {script_path}")
    else:
        submit = f"# Submit:      sbatch {script_path}"
    gpus_line = "" if cpu else \
        (f"#SBATCH --gres={res.gres}" if res.gres else f"#SBATCH --gpus-per-node={gpus_per_node}")
    values = {
        "job_name": job_name, "nodes": nodes, "procs_per_node": procs, "gpus_line": gpus_line,
        "cpus_per_task": res.cpus_per_task or (4 if cpu else 8 * gpus_per_node),
        "mem_line": f"#SBATCH --mem={res.mem}" if res.mem else "",
        "time_line": f"#SBATCH --time={res.time}" if res.time else "# no --time given: the partition's default limit",
        "partition_line": f"#SBATCH --partition={res.partition}" if res.partition else "",
        "account_line": f"#SBATCH --account={res.account}" if res.account else "",
        "constraint_line": f"#SBATCH --constraint={shlex.quote(res.constraint)}" if res.constraint else "",
        "exclusive_line": "#SBATCH --exclusive" if res.exclusive else "",
        "signal_seconds": signal_seconds, "log_dir": log_dir, "repo": shlex.quote(str(REPO)),
        "setup_block": setup_block(lines),
        "hf_lines": hf_lines(hf_home if hf_home is not None else cfg.slurm.hf_home,
                             cfg.slurm.offline if offline is None else offline),
        "recipe": shlex.quote(str(recipe)), "overrides": shlex.join(overrides), "env_lines": env_lines,
        "accelerate": name, "accelerate_config": f"configs/accelerate/{name}.yaml", "launch_flags": shlex.join(flags),
        "render_command": render_command or "python -m launch slurm", "submit_comment": submit,
    }
    template = TEMPLATES["single" if nodes == 1 else "multi"].read_text(encoding="utf-8")
    return fill(template, values), script_path


def check_job_model(cfg, hf_home: Optional[str], offline: bool) -> None:
    """What the job will load, as the job will see it: local paths from the repository root (the job's folder); with
    --offline, hub ids in the job's HF_HOME cache. Without --offline hub ids are not checked here: the compute nodes
    may reach another network than this machine."""
    from huggingface_hub import constants

    from train.model_source import check_model_sources

    cache = Path(hf_home).expanduser() / "hub" if hf_home else Path(constants.HF_HUB_CACHE)
    check_model_sources(cfg, hub=offline, offline=True, cache_dir=cache, base=REPO,
                        offline_why="the job runs offline (--offline or slurm.offline)")


def partition_limits(partition: Optional[str]) -> str:
    """'partition P: DefaultTime=..., MaxTime=...' from scontrol (the named partition, else the default one); '' when
    scontrol is not here or does not answer."""
    try:
        res = subprocess.run(["scontrol", "show", "partition", "-o", *([partition] if partition else [])],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in res.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if partition or fields.get("Default") == "YES":
            return (f"partition {fields.get('PartitionName', '?')}: DefaultTime={fields.get('DefaultTime', '?')}, "
                    f"MaxTime={fields.get('MaxTime', '?')} (with DefaultTime=NONE a job gets MaxTime)")
    return ""


def cmd_slurm(args) -> int:
    from train.config import load_config

    cfg = load_config(args.config, args.overrides)  # the whole recipe is validated before anything is written
    command = shlex.join(["python", "-m", "launch", "slurm", *sys.argv[2:]]) if len(sys.argv) > 2 else ""
    res = Resources(gpus_per_node=args.gpus_per_node, gres=args.gres, cpus_per_task=args.cpus_per_task, mem=args.mem,
                    exclusive=args.exclusive, constraint=args.constraint, partition=args.partition,
                    account=args.account, time=args.time)
    hf_home = args.hf_home if args.hf_home is not None else cfg.slurm.hf_home
    offline = args.offline or cfg.slurm.offline
    try:
        script, path = render(cfg, args.config, args.overrides, nodes=args.nodes, res=res, accelerate=args.accelerate,
                              job_name=args.job_name, signal_seconds=args.signal_seconds, render_command=command,
                              setup=args.setup, hf_home=hf_home, offline=offline, dry_run=args.dry_run)
        check_job_model(cfg, hf_home, offline)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    # Notes go to stderr, so that `--dry-run > job.sbatch` saves the script alone.
    if args.time is None:
        limits = partition_limits(args.partition)
        print(f"note: no --time: the job gets its partition's default time limit"
              f"{f' ({limits})' if limits else ''}; the checkpoint signal comes {args.signal_seconds} s before "
              f"whatever limit applies. Give --time HH:MM:SS to set it", file=sys.stderr)
    if not cfg.slurm.setup and not args.setup:
        where = ".venv of the repository (it exists here)" if (REPO / ".venv/bin/activate").exists() else \
            "python first on the compute node's PATH (no .venv in the repository)"
        print(f"note: no slurm.setup or --setup: the job uses the {where}; it stops with exit code 2 if that python "
              f"cannot import torch, transformers and accelerate", file=sys.stderr)
    if offline and cfg.tracking.wandb_mode == "online":
        print("note: --offline with tracking.wandb_mode=online: W&B needs internet too; set "
              "tracking.wandb_mode=offline and `wandb sync` the run folder later", file=sys.stderr)
    if args.dry_run:
        print(script, end="")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)  # Slurm does not create the folder of --output
    path.write_text(script, encoding="utf-8")
    print(f"wrote {path}")
    if not args.submit:
        print(f"submit with: sbatch {path}")
        return 0
    res_ = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True)
    if res_.returncode != 0:
        print(f"error: sbatch refused the job ({res_.returncode}): {res_.stderr.strip()}. The script is {path}",
              file=sys.stderr)
        return res_.returncode or 1
    job_id = res_.stdout.strip().split(";")[0]
    print(f"submitted job {job_id}")
    print(f"log: {path.parent / f'{path.stem}-{job_id}.out'}")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("slurm", help="render (and submit) an sbatch script for the recipe")
    s.add_argument("--config", required=True)
    s.add_argument("--nodes", type=int, default=1)
    s.add_argument("--gpus-per-node", type=int, help="GPUs per node (default 8; 0 = one CPU process per node, gloo)")
    s.add_argument("--gres", help="GPUs as a generic resource instead of --gpus-per-node: gpu:N or gpu:TYPE:N "
                                  "(clusters that configure GPUs only as gres)")
    s.add_argument("--partition")
    s.add_argument("--time", help="time limit, e.g. 24:00:00 or 2-00:00:00 (default: none given, the partition's "
                                  "default applies; this command says what it is)")
    s.add_argument("--account")
    s.add_argument("--mem", help="memory per node, e.g. 500G (0 = all of it); default: the partition's")
    s.add_argument("--cpus-per-task", type=int, help="CPUs for each node's task, passed to sbatch and srun "
                                                     "(default: 4 for CPU jobs, 8 per GPU)")
    s.add_argument("--exclusive", action="store_true", help="whole nodes, shared with no other job")
    s.add_argument("--constraint", help="node features the job needs, e.g. a100 or 'a100&ib'")
    s.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line the job runs first (repeatable; after the recipe's slurm.setup), e.g. "
                        "'module load cuda/12.4; source ~/venvs/sft/bin/activate'")
    s.add_argument("--hf-home", help="HF_HOME for the job: a folder every node sees that holds the models "
                                     "(default: slurm.hf_home, else the submitting environment's)")
    s.add_argument("--offline", action="store_true", help="compute nodes without internet: HF_HUB_OFFLINE=1 in the "
                                                          "job; the model must be in HF_HOME (checked now)")
    s.add_argument("--accelerate", help="a configs/accelerate name (default: chosen as `launch run` does)")
    s.add_argument("--job-name")
    s.add_argument("--signal-seconds", type=int, default=300,
                   help="USR1 this many seconds before the time limit: time to save a checkpoint")
    mode = s.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the script, write nothing")
    mode.add_argument("--submit", action="store_true", help="write the script and submit it with sbatch")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_slurm)

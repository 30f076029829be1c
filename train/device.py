"""Which device a process trains or evaluates on, and how its memory is allocated: decided from the environment,
before torch touches a device (nothing here imports torch at module level).

- One process on a multi-GPU node (`python train/sft.py`, or `accelerate launch` with configs/accelerate/single_gpu.yaml)
  sees only its own GPU: with every GPU visible, transformers sets `n_gpu` to the device count and the Trainer wraps
  the model in `nn.DataParallel`, which neither this project nor its users asked for (and multiplies the batch).
  `one_process_visible_devices` narrows CUDA_VISIBLE_DEVICES to the local rank's GPU; train/trainer.py also keeps
  `n_gpu` at 1 for the processes where CUDA was initialised before (a benchmark calling train_sft in-process).
- Allocator settings per device (`allocator_settings`): a CPU run puts large tensors on transparent huge pages
  (THP_MEM_ALLOC_ENABLE=1; measured in BENCHMARKS.md, issue 9); a GPU run uses expandable segments
  (PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True), because packed batches change shape every step and fixed-size
  segments fragment. A value the user set is kept. Both variables are read once, by the first allocation: they are
  set when train/sft.py starts, before torch is imported.
- Evaluation (`eval_device_map`): on the local GPU when there is one, in the training dtype, else on the CPU.
"""

from __future__ import annotations

import glob
import os
from typing import Mapping, Optional

CUDA_ALLOC_DEFAULT = "expandable_segments:True"
CUDA_ALLOC_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # the second is PyTorch's newer, general name


def _truthy(value: Optional[str]) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def gpus_present(env: Mapping[str, str] = os.environ, probe: Optional[bool] = None) -> bool:
    """Whether this process will see an NVIDIA GPU, without importing torch: a GPU device file exists (`probe`
    overrides that check) and neither CUDA_VISIBLE_DEVICES hides every GPU nor ACCELERATE_USE_CPU asks for the CPU."""
    if _truthy(env.get("ACCELERATE_USE_CPU")):
        return False
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if probe is None:
        probe = bool(glob.glob("/dev/nvidia[0-9]*") or glob.glob("/proc/driver/nvidia/gpus/*"))
    return probe


def one_process_visible_devices(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """The CUDA_VISIBLE_DEVICES a process should have when it runs alone (WORLD_SIZE unset or 1): the local rank's GPU
    of those visible (the first one for a plain `python train/sft.py`). None when nothing changes: several processes
    (each already pinned to its own GPU by the launcher), the CPU requested, or at most one GPU visible."""
    if int(env.get("WORLD_SIZE", "1") or 1) > 1 or _truthy(env.get("ACCELERATE_USE_CPU")):
        return None
    local = int(env.get("LOCAL_RANK", "0") or 0)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(local)
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if len(entries) <= 1:
        return None
    return entries[local] if local < len(entries) else entries[0]


def allocator_settings(env: Mapping[str, str], cuda: bool) -> dict:
    """{variable: value} to set for a run on a GPU (`cuda`) or a CPU; empty where the user set the variable."""
    if cuda:
        if any(name in env for name in CUDA_ALLOC_VARS):
            return {}
        return {"PYTORCH_CUDA_ALLOC_CONF": CUDA_ALLOC_DEFAULT}
    return {} if "THP_MEM_ALLOC_ENABLE" in env else {"THP_MEM_ALLOC_ENABLE": "1"}


def describe_allocator(env: Mapping[str, str], cuda: bool, defaulted: Mapping[str, str]) -> str:
    """One log line: the allocator setting in force, and whether it is our default or the user's."""
    names = CUDA_ALLOC_VARS if cuda else ("THP_MEM_ALLOC_ENABLE",)
    shown = [f"{n}={env[n]}" for n in names if n in env] or ["defaults"]
    origin = "default for a GPU run" if cuda else "default for a CPU run"
    how = f"{origin}; set the variable to override" if defaulted else "set by the user"
    return f"allocator: {', '.join(shown)} ({how})"


def set_allocator_defaults(env=os.environ, probe: Optional[bool] = None) -> str:
    """When train/sft.py is imported (before torch is): the allocator default for this machine's device, unless the
    user set one. Returns the log line describing the setting in force."""
    cuda = gpus_present(env, probe)
    defaulted = allocator_settings(env, cuda)
    env.update(defaulted)
    return describe_allocator(env, cuda, defaulted)


def pin_one_process_gpu(env=os.environ, probe: Optional[bool] = None) -> Optional[str]:
    """At the start of a `python train/sft.py` process (before CUDA is initialised): a process running alone sees
    only its GPU. Returns the CUDA_VISIBLE_DEVICES it set, or None."""
    if not gpus_present(env, probe):
        return None
    devices = one_process_visible_devices(env)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    return devices


def eval_device_map(cuda_available: bool, local_rank: int = 0) -> Optional[dict]:
    """Where `python -m launch eval` loads a model: the whole model on the local GPU ({"": index}) when CUDA is
    available, else None (the CPU)."""
    return {"": local_rank} if cuda_available else None


def distributed_env(env: Mapping[str, str] = os.environ) -> tuple:
    """(rank, local_rank, world_size) as set by accelerate launch / torchrun, before any process group exists."""
    return int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1))

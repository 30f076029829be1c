"""What the benchmarks share: the machine they ran on, process memory and CPU time, recipes and prepared rows of this
project, the per-step timer both trainers are measured with, and the hand-over of our rows to TRL."""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

SEED = 42  # the training benchmarks' seed, both sides


def machine() -> Dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    versions = {}
    for name in ("datasets", "transformers", "tokenizers", "trl", "pyarrow"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - not installed
            versions[name] = None
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(mem_kb / 2**20, 1), "python": sys.version.split()[0],
            **versions}


def trl_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("trl") is not None
    except ValueError:
        return False


def memory_kb(field: str) -> int:
    """VmRSS / VmHWM of this process in KiB (Linux); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process: unlike wall time, not inflated by other processes
    competing for the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median(values: List[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def sample_spans(position_ids: List[int]) -> List[tuple]:
    """(start, stop) of each sample of a packed row: its position ids restart at 0 for every sample."""
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return list(zip(starts[:-1], starts[1:]))


def trl_rows(train):
    """Our prepared rows in TRL's packed format (input_ids, labels and `seq_lengths`, from which its collator rebuilds
    the position ids), in memory like a dataset a TRL user builds; same rows, same order."""
    import datasets

    rows = train.to_dict()
    return datasets.Dataset.from_dict({
        "input_ids": rows["input_ids"], "labels": rows["labels"],
        "seq_lengths": [[b - a for a, b in sample_spans(p)] for p in rows["position_ids"]]})


def load_recipe(spec: Dict[str, Any], path: Path):
    import yaml

    from train.config import load_config

    path.write_text(yaml.safe_dump(spec, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def tokenizer_for(cfg):
    """The tokenizer of a config, set up as training sets it up (template, pad token, added tokens)."""
    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    setup_tokenizer(tokenizer, cfg.data)
    return tokenizer


def prepared_rows(cfg):
    """(tokenizer, prepared data) for a config: our tokenizer set-up and the cached rows (built on first use)."""
    from train.data.prepare import load_or_build

    tokenizer = tokenizer_for(cfg)
    return tokenizer, load_or_build(cfg, tokenizer)


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Per optimizer step: wall and CPU seconds since the previous step ended, real tokens (the Trainer's
        non-padding count), and the logged loss; peak RSS at the end of training."""

        def __init__(self):
            self.steps: List[Dict[str, Any]] = []
            self.peak_rss_kb = 0
            self.rss_at_start_kb = 0

        def on_train_begin(self, args, state, control, **kwargs):
            args.include_num_input_tokens_seen = "non_padding"  # read by the loop at every micro-batch
            self.rss_at_start_kb = memory_kb("VmRSS")
            self._tokens = state.num_input_tokens_seen
            self._wall, self._cpu = time.perf_counter(), cpu_seconds()

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter(), cpu_seconds()
            self.steps.append({"step": state.global_step, "seconds": wall - self._wall, "cpu_seconds": cpu - self._cpu,
                               "tokens": state.num_input_tokens_seen - self._tokens})
            self._tokens, self._wall, self._cpu = state.num_input_tokens_seen, wall, cpu

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and self.steps and self.steps[-1]["step"] == state.global_step:
                self.steps[-1]["loss"] = logs["loss"]

        def on_train_end(self, args, state, control, **kwargs):
            self.peak_rss_kb = memory_kb("VmHWM")

    return StepTimer()


def summarise(run: Dict[str, Any]) -> Dict[str, Any]:
    """tokens/s and step time over the steps after the first (warm-up), CPU seconds per step, peak RSS."""
    timed = run["steps"][1:] or run["steps"]
    seconds = sum(s["seconds"] for s in timed)
    tokens = sum(s["tokens"] for s in timed)
    return {"variant": run["variant"], "side": run["side"], "attention": run["attention"],
            "timed_steps": len(timed), "tokens_per_step": round(tokens / len(timed)),
            "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
            "step_seconds": round(median([s["seconds"] for s in timed]), 2),
            "cpu_seconds_per_step": round(median([s["cpu_seconds"] for s in timed]), 2),
            "peak_rss_mib": round(run["peak_rss_kb"] / 1024), "rss_at_start_mib": round(run["rss_at_start_kb"] / 1024),
            "losses": [s.get("loss") for s in run["steps"]], "huge_pages": run.get("huge_pages"),
            "load": "/".join(f"{x:.1f}" for x in run.get("load_average", []))}

"""Measure the peak memory of the project's real training (train/sft.py's train_sft) for one or more recipes: import
everything once, then fork one child per run; each child prints, as one JSON line, how far its anonymous resident
memory (RSS minus file-backed pages) rose above the level it started at.

    python tests/peak_memory.py RECIPE[::key=value::key=value] [RECIPE...]

A thread reads /proc/self/statm every millisecond. File-backed pages (shared libraries, memory-mapped safetensors and
Arrow files) are left out, so what is measured is what the planner models: tensors plus allocator and framework
overhead. Linux only; tests/test_plan.py runs it in a subprocess.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
PAGE = os.sysconf("SC_PAGE_SIZE")


def anonymous_rss() -> int:
    with open("/proc/self/statm") as f:
        _, resident, shared = (int(x) for x in f.read().split()[:3])
    return (resident - shared) * PAGE


class PeakSampler(threading.Thread):
    def __init__(self, every_s: float = 0.001):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.stop = every_s, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, anonymous_rss())
            time.sleep(self.every_s)


def measure(recipe: str, overrides: list) -> dict:
    """Runs in a forked child: everything is imported, no model exists yet."""
    from train.config import load_config
    from train.sft import train_sft

    cfg = load_config(recipe, overrides)
    baseline = anonymous_rss()
    sampler = PeakSampler()
    sampler.start()
    started = time.time()
    train_sft(cfg)
    sampler.stop.set()
    sampler.join()
    return {"recipe": recipe, "overrides": overrides, "baseline": baseline, "peak": sampler.peak,
            "growth": sampler.peak - baseline, "seconds": round(time.time() - started, 1)}


def main(jobs: list) -> int:
    # everything train_sft imports, imported once before any child starts (no torch op runs here: fork stays safe)
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # noqa: F401
    from transformers import Trainer  # noqa: F401

    import train.data.prepare  # noqa: F401
    import train.model  # noqa: F401
    import train.plan.check  # noqa: F401
    import train.trainer  # noqa: F401

    failed = 0
    for job in jobs:
        recipe, *overrides = job.split("::")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: one run, its result through the pipe
            os.close(read)
            code = 0
            try:
                result = measure(recipe, overrides)
                os.write(write, json.dumps(result).encode())
            except BaseException as e:  # report and exit; never return into the parent's loop
                print(f"run failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write)
        with os.fdopen(read) as f:
            text = f.read()
        _, status = os.waitpid(pid, 0)
        if status == 0 and text:
            print("PEAK_MEMORY " + text, flush=True)
        else:
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

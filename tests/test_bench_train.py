"""The training-throughput benchmark harness (bench/train_throughput.py) runs in `make test`: `--quick`, our side only
(TRL is not a project dependency), a tiny Llama on the generated Korean corpus, 4 optimizer steps that each train on
all the packed rows. Checked against computations made here: the first step's loss equals a plain full-logits
cross-entropy of the initial model on those rows (transformers' own SDPA block mask, no label-only loss, no packed
attention), and every step counts exactly the rows' tokens."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmark_trains_and_its_first_loss_equals_a_plain_computation(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "bench/train_throughput.py", "--quick", "--out", str(out),
                          "--scratch", str(tmp_path / "scratch")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    quick = result["workloads"]["quick"]
    (run,), (row,) = quick["runs"], quick["rows"]
    assert run["side"] == "ours" and run["attention"] == "sdpa_packed"  # packed rows on a CPU: attention per sample
    losses = [s["loss"] for s in run["steps"]]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.05, losses  # the same rows every step: the loss must fall
    assert row["tokens_per_s"] > 0 and row["step_seconds"] > 0 and row["peak_rss_mib"] > 100
    assert "| quick | ours | sdpa_packed |" in res.stdout

    # The same rows and initial weights, computed plainly here.
    from transformers import AutoModelForCausalLM

    from train.config import load_config
    from train.data.prepare import load_or_build
    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    cfg = load_config(run["recipe"])
    tokenizer = load_tokenizer(cfg)
    setup_tokenizer(tokenizer, cfg.data)
    rows = load_or_build(cfg, tokenizer).train
    assert run["per_device_batch_size"] == len(rows) >= 2  # every step trains on all rows, in one micro-batch
    tokens = sum(len(r) for r in rows["input_ids"])
    assert all(s["tokens"] == tokens for s in run["steps"]), (tokens, run["steps"])

    # LoRA starts with B = 0, so the adapted model's first forward is the base model's.
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels, positions in zip(rows["input_ids"], rows["labels"], rows["position_ids"]):
            logits = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]),
                           use_cache=False).logits[0]  # a cache would switch off the per-sample mask
            targets = torch.tensor(labels[1:])
            keep = targets != -100
            total += torch.nn.functional.cross_entropy(logits[:-1][keep], targets[keep], reduction="sum").item()
            count += int(keep.sum())
    assert count > 0
    assert abs(losses[0] - total / count) < 1e-4, (losses[0], total / count)

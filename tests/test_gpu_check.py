"""scripts/gpu_check.sh, the GPU acceptance kit, rehearsed on the CPU with the tiny model: every step runs (attention
paths against each sample alone, the fused loss against fp32, LoRA / QLoRA / full training through train/sft.py on a
repeated batch, the planner's memory, launch eval, throughput), so the kit cannot rot between GPU loans. On the CPU a
GPU goal is information, never a failure; a failed numerical or functional check fails this test."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from train.eval import metrics

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_cpu_rehearsal_runs_every_step(tmp_path):
    out = tmp_path / "kit"
    res = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-rehearsal", "--no-trl", "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    report = json.loads((out / "gpu_check.json").read_text())
    failed = [c for c in report["checks"] if c["status"] == "fail"]
    assert res.returncode == 0 and not failed, (failed, res.stdout[-3000:], res.stderr[-3000:])
    names = [(c["step"], c["name"]) for c in report["checks"]]
    steps = {step for step, _ in names}
    assert steps == {"environment", "attention", "fused loss", "training", "eval", "throughput"}, names
    passed = {(c["step"], c["name"]) for c in report["checks"] if c["status"] == "pass"}
    # the numerical and functional checks really pass on the CPU (only GPU goals are information here)
    for path in ("sdpa (L x L mask)", "per-sample SDPA", "flex_attention"):
        assert ("attention", f"{path}: per-sample logits") in passed
    assert ("attention", "negative control: samples that attend to each other are caught") in passed
    assert sum(1 for step, _ in passed if step == "fused loss") == 2
    for method in ("lora", "qlora", "full"):
        assert ("training", f"tiny-{method}: finite loss, falling on a repeated batch") in passed
        assert ("training", f"tiny-{method}: one process uses one GPU (n_gpu == 0)") in passed
        plan = next(c for c in report["checks"] if c["name"].startswith(f"tiny-{method}: peak memory vs the plan"))
        assert plan["numbers"]["planned_mib"] > 0 and plan["numbers"]["measured_mib"] > 0
    assert ("eval", "python -m launch eval generates on the CPU") in passed
    # the throughput harness (bench/gpu_throughput.py) underneath: every method, timed steps, MFU, FLOPs per token
    harness = json.loads((out / "throughput.json").read_text())
    assert harness["peak"].startswith("CPU: measured fp32 matmul") and harness["repeat_batch"]
    for key, run in harness["runs"].items():
        (row,) = run["rows"]
        assert "error" not in row, row
        assert row["timed_steps"] == harness["steps"] - 1 and 100 < row["tokens_per_step"] <= harness["seq"]
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1 and row["peak_rss_mib"] > row["rss_at_start_mib"] > 0
    # LoRA and QLoRA count 4 FLOPs per matmul parameter and token, full fine-tuning 6: the difference is 2 x the 2-D
    # weights of the tiny model less its input embedding
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out / "scratch" / "tiny"))
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in name)
    runs = harness["runs"]
    assert runs["tiny-full"]["flops_per_token"] - runs["tiny-lora"]["flops_per_token"] == pytest.approx(2 * matmul)
    assert runs["tiny-qlora"]["flops_per_token"] == runs["tiny-lora"]["flops_per_token"]
    md = (out / "gpu_check.md").read_text()
    assert md.startswith("# GPU check: CPU") and "| training |" in md and "fail 0" in md


def test_scores_fall_back_to_words_without_kiwi_and_say_so(monkeypatch):
    """On a machine without kiwipiepy (the GPU check's minimal install) evaluation still scores, on words, with a
    warning in the report."""
    assert metrics.morphemes_warning() is None  # installed here: morphemes
    assert metrics.tokenize("삼성전자가 올랐다.") == ["삼성전자", "가", "오르", "었", "다"]
    monkeypatch.setattr(metrics, "_kiwi", lambda: None)
    assert metrics.tokenize("삼성전자가 올랐다. The CAT!") == ["삼성전자가", "올랐다", "the", "cat"]
    assert "kiwipiepy is not installed" in metrics.morphemes_warning()

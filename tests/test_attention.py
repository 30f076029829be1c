"""Which attention a run uses (train/kernels/attention.py) and the per-sample kernels for packed rows
(train/kernels/packed_attention.py): the choice per device, dtype and installed packages; the varlen arguments the collator
must pass; the sample boundaries (cu_seq_lens) against an independent computation; the flex and per-sample kernels
against attention run on each sample alone; FlashAttention asked for without its package fails before any work.
The CUDA kernels themselves (PyTorch varlen_attn, compiled flex) run in scripts/gpu_check.sh."""

from __future__ import annotations

import random
import warnings
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from train.kernels import attention as A
from train.kernels import packed_attention as PA
from train.data.packing import Collator, flash_varlen_kwargs, packed_rows

REPO = Path(__file__).resolve().parent.parent
IGNORE = -100


# ----------------------------------------------------------------------------------------------------------------------
# The choice
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("requested,packing,device,dtype,flash,expected", [
    ("sdpa", True, "cpu", "float32", False, A.PACKED_SDPA),  # CPU: SDPA per sample block
    ("sdpa", True, "cpu", "bfloat16", True, A.PACKED_SDPA),  # flash_attn installed changes nothing on a CPU
    ("sdpa", True, "cuda", "bfloat16", True, "flash_attention_2"),  # GPU with flash_attn: its varlen kernel
    ("sdpa", True, "cuda", "bfloat16", False, A.PACKED_VARLEN),  # GPU without: PyTorch's varlen, never a dense mask
    ("sdpa", True, "cuda", "float32", True, A.PACKED_VARLEN),  # fp32: FlashAttention cannot, ours falls back
    ("sdpa", False, "cuda", "bfloat16", False, "sdpa"),  # padded batches: SDPA with its padding mask
    ("sdpa", False, "cpu", "float32", False, "sdpa"),
    ("eager", True, "cuda", "bfloat16", False, "eager"),  # asked for by name: kept
    ("flash_attention_2", True, "cuda", "bfloat16", True, "flash_attention_2"),
    ("kernels-community/flash-attn2", True, "cuda", "bfloat16", False, "kernels-community/flash-attn2"),
])
def test_choose_attention(requested, packing, device, dtype, flash, expected):
    assert A.choose_attention(requested, packing, device, True, dtype, flash_installed=flash) == expected


def test_models_the_per_sample_attention_does_not_know_keep_their_attention():
    from transformers import Gemma2Config, LlamaConfig

    assert PA.supports(LlamaConfig())
    assert not PA.supports(Gemma2Config())  # attention soft-capping: no per-sample kernel applies it
    assert PA.choose_attention("sdpa", True, "cuda", Gemma2Config(), "bfloat16", False) == "sdpa"
    assert A.choose_attention("sdpa", True, "cuda", False, "bfloat16", False) == "sdpa"  # not a text-only causal LM


def test_every_flash_style_kernel_gets_the_varlen_arguments():
    for name in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2",
                 "kernels-community/vllm-flash-attn3", A.PACKED_VARLEN):
        assert A.needs_varlen_kwargs(name), name
    for name in ("sdpa", "eager", A.PACKED_SDPA, "flex_attention"):
        assert not A.needs_varlen_kwargs(name), name
    rows = [{"input_ids": [5] * 4, "labels": [IGNORE] * 4, "position_ids": [0, 1, 0, 1]},
            {"input_ids": [5] * 3, "labels": [IGNORE] * 3, "position_ids": [0, 1, 2]}]
    batch = Collator(pad_token_id=0, packing=True,
                     flash_varlen_kwargs=A.needs_varlen_kwargs("kernels-community/flash-attn2"))(rows)
    assert batch["cu_seq_lens_q"].tolist() == [0, 2, 4, 7, 8]  # 2 | 2 | 3 | the padding of row 2


@pytest.mark.parametrize("device,dtype,dropout,torch_varlen,flex,expected", [
    ("cuda", "bfloat16", 0.0, True, True, "torch_varlen"),
    ("cuda", "float16", 0.0, True, False, "torch_varlen"),
    ("cuda", "bfloat16", 0.0, False, True, "flex"),  # torch < 2.10
    ("cuda", "float32", 0.0, True, True, "flex"),  # FlashAttention kernels take 16-bit tensors only
    ("cuda", "bfloat16", 0.1, True, True, "sdpa_per_sample"),  # attention dropout: neither kernel applies it
    ("cuda", "float32", 0.0, False, False, "sdpa_per_sample"),
    ("cpu", "bfloat16", 0.0, True, True, "sdpa_per_sample"),
])
def test_varlen_kernel_per_call(device, dtype, dropout, torch_varlen, flex, expected):
    assert A.varlen_kernel(device, dtype, dropout, torch_varlen, flex) == expected


def test_varlen_arguments_for_each_torch_signature():
    new = {"query", "key", "value", "window_size", "scale", "enable_gqa"}  # torch 2.13
    old = {"query", "key", "value", "is_causal", "return_aux"}  # torch 2.10
    kwargs, factor, repeats = PA.varlen_arguments(new, 0.125, 64, None, 32, 8)
    assert kwargs == {"window_size": (-1, 0), "scale": 0.125, "enable_gqa": True} and (factor, repeats) == (1.0, 1)
    kwargs, _, _ = PA.varlen_arguments(new, None, 64, 4096, 32, 32)
    assert kwargs == {"window_size": (4095, 0)}  # a sliding window of 4096 keys, the query's own included
    kwargs, factor, repeats = PA.varlen_arguments(old, 0.125, 64, None, 32, 8)
    assert kwargs == {"is_causal": True} and repeats == 4
    assert factor == pytest.approx(1.0)  # 0.125 is 64 ** -0.5: the kernel's own scale
    _, factor, _ = PA.varlen_arguments(old, 0.1, 64, None, 8, 8)
    assert factor * 64 ** -0.5 == pytest.approx(0.1)


def test_flash_attention_without_its_package_is_a_config_error(monkeypatch):
    assert not A.installed("flash_attn")  # this machine has no flash_attn (and no GPU)
    message = A.check_available("flash_attention_2", cuda=True)
    assert "flash_attn" in message and "pip install flash-attn" in message and "attn_implementation=sdpa" in message
    assert "CUDA GPU" in A.check_available("flash_attention_3", cuda=False)
    assert A.check_available("sdpa", cuda=False) is None and A.check_available("eager", cuda=True) is None
    assert "not one of" in A.check_available("flash_attn2", cuda=True)
    monkeypatch.setattr(A, "installed", lambda package: package != "kernels")
    assert "'kernels' package" in A.check_available("kernels-community/flash-attn2", cuda=True)


@pytest.mark.slow
def test_sft_refuses_flash_attention_before_preparing_data(tmp_path):
    from launch.assets import tiny_model_dir
    from tests.tiny_model import write_tiny_recipe

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "model"))
    res = subprocess.run([sys.executable, "train/sft.py", "--config", str(recipe),
                          "model.attn_implementation=flash_attention_2", "model.dtype=bfloat16"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "flash_attention_2" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "cache").exists()  # nothing was prepared, no model loaded


# ----------------------------------------------------------------------------------------------------------------------
# Sample boundaries
# ----------------------------------------------------------------------------------------------------------------------


def test_cumulative_lengths_equal_the_sample_lengths():
    rng = random.Random(3)
    rows, lengths = [], []
    for _ in range(4):
        row_lengths = [rng.randint(1, 9) for _ in range(rng.randint(1, 4))]
        lengths.append(row_lengths)
        rows.append({"input_ids": [7] * sum(row_lengths), "labels": [IGNORE] * sum(row_lengths),
                     "position_ids": [p for n in row_lengths for p in range(n)]})
    batch = Collator(pad_token_id=0, packing=True)(rows)
    width = batch["input_ids"].shape[1]
    expected, offset = [0], 0  # independent: the samples' lengths, each row's padding as a segment of its own
    for row_lengths in lengths:
        for n in row_lengths + ([width - sum(row_lengths)] if sum(row_lengths) < width else []):
            offset += n
            expected.append(offset)
    cu, longest = PA.cumulative_lengths(batch["position_ids"], len(rows))
    assert cu.tolist() == expected and cu.dtype == torch.int32
    assert longest == max(b - a for a, b in zip(expected, expected[1:]))
    assert flash_varlen_kwargs(batch["position_ids"])["cu_seq_lens_q"].tolist() == expected  # the collator's
    # a position that jumps (not only a restart at 0) starts a sample too, as transformers' packed-sequence rule
    cu, _ = PA.cumulative_lengths(torch.tensor([[3, 4, 5, 0, 1, 9, 10]]), 1)
    assert cu.tolist() == [0, 3, 5, 7]


# ----------------------------------------------------------------------------------------------------------------------
# Kernels against attention on each sample alone
# ----------------------------------------------------------------------------------------------------------------------


def _qkv(lengths, heads=4, kv_heads=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(1, h, total, dim, generator=g) for h in (heads, kv_heads, kv_heads))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return q, k, v, cu


def _reference(q, k, v, cu, window=None):
    """Each sample alone: a plain (L, L) causal mask, optionally banded, keys/values expanded to the query heads."""
    out = []
    groups = q.shape[1] // k.shape[1]
    for a, b in zip(cu.tolist(), cu.tolist()[1:]):
        n = b - a
        i = torch.arange(n)
        mask = i[None, :] <= i[:, None]
        if window:
            mask &= i[None, :] > i[:, None] - window
        kk, vv = (t[:, :, a:b].repeat_interleave(groups, dim=1) for t in (k, v))
        out.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], kk, vv, attn_mask=mask)[0]
                   .transpose(0, 1))
    return torch.cat(out)  # (T, H, D)


@pytest.mark.parametrize("window", [None, 3])
def test_flex_kernel_equals_each_sample_alone(window):
    q, k, v, cu = _qkv([5, 1, 9, 3])
    flat = [t[0].transpose(0, 1) for t in (q, k, v)]  # (T, H, D), as "varlen_packed" flattens them
    with warnings.catch_warnings():  # "called without torch.compile": on a GPU it is compiled
        warnings.simplefilter("ignore", UserWarning)
        ours = PA._flex(*flat, cu, None, window)
    assert torch.allclose(ours, _reference(q, k, v, cu, window), atol=1e-5)


@pytest.mark.parametrize("window", [None, 4])
def test_per_sample_kernel_equals_each_sample_alone(window):
    q, k, v, cu = _qkv([6, 2, 11])
    ours = PA._per_sample_sdpa(q, k, v, cu.diff().tolist(), 0.0, None, window)
    assert torch.allclose(ours, _reference(q, k, v, cu, window), atol=1e-5)


def _packed_batch():
    rng = random.Random(11)
    samples = []
    for n in [9, 4, 12, 6, 3, 10]:
        ids = [rng.randint(2, 127) for _ in range(n)]
        samples.append({"input_ids": ids, "labels": [t if rng.random() < 0.6 else IGNORE for t in ids]})
    rows = packed_rows(samples, [[0, 1, 2], [3, 4, 5]])
    return samples, Collator(pad_token_id=0, packing=True, flash_varlen_kwargs=True)(rows)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_varlen_packed_model_gives_each_samples_own_logits_and_builds_no_mask(tiny_causal_lm, arch):
    """A tiny model with "varlen_packed" (on the CPU its per-sample path) on two packed rows with the collator's
    cu_seq_lens: every sample's logits are those of the sample run alone, and no (B, 1, L, L) mask is built."""
    from transformers.masking_utils import create_causal_mask

    PA.register()
    model = tiny_causal_lm(arch, attn_implementation=A.PACKED_VARLEN)
    samples, batch = _packed_batch()
    embeds = model.get_input_embeddings()(batch["input_ids"])
    assert create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None, past_key_values=None,
                              position_ids=batch["position_ids"]) is None
    with torch.no_grad():
        packed = model(**batch).logits
        offsets = [0, 9, 13, 0, 6, 9]
        for i, s in enumerate(samples):
            row, start, n = i // 3, offsets[i], len(s["input_ids"])
            alone = model(input_ids=torch.tensor([s["input_ids"]])).logits[0]
            assert torch.allclose(packed[row, start:start + n], alone, atol=1e-5), i


def test_a_flash_style_kernel_without_the_collators_boundaries_lets_samples_attend_to_each_other(tiny_causal_lm):
    """Why every FlashAttention-style kernel needs cu_seq_lens (needs_varlen_kwargs): a stand-in kernel that, like
    transformers' FlashAttention path, knows sample boundaries only from cu_seq_lens_q and otherwise treats each row
    as one sequence. With the collator's arguments each sample sees only itself; without, the second sample of a
    row attends to the first."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    def standin(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        batch, heads, length, dim = query.shape
        cu = kwargs.get("cu_seq_lens_q")
        if cu is None:  # one sequence per row
            cu = torch.arange(0, batch * length + 1, length, dtype=torch.int32)
        flat = [t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value)]
        out = PA._per_sample_sdpa(*[t.reshape(1, batch * length, t.shape[1], dim).transpose(1, 2) for t in flat],
                                  cu.diff().tolist(), 0.0, scaling)
        return out.view(batch, length, heads, dim), None

    AttentionInterface.register("standin_varlen_kernel", standin)
    AttentionMaskInterface.register("standin_varlen_kernel", lambda **kwargs: None)
    model = tiny_causal_lm("llama", attn_implementation="standin_varlen_kernel")
    samples, batch = _packed_batch()
    without = {k: v for k, v in batch.items() if not k.startswith(("cu_seq", "max_length"))}
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([samples[1]["input_ids"]])).logits[0]
        right = model(**batch).logits[0, 9:13]
        leaky = model(**without).logits[0, 9:13]
    assert torch.allclose(right, alone, atol=1e-5)
    assert (leaky - alone).abs().max() > 1e-2

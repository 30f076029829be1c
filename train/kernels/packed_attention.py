"""Attention per sample for packed rows: no O(L^2) mask, no attention across samples, key/value heads unexpanded.

A packed row holds several samples whose `position_ids` restart at 0 (train/data/packing.py). With plain SDPA,
transformers builds a block-diagonal causal mask for the whole row and SDPA computes every (query, key) pair of the row
under it: O(L^2) work and memory per row and layer, and a masked SDPA cannot use the fast causal kernels. Which
implementation replaces it where is decided in train/kernels/attention.py; the two registered here are:

- "sdpa_packed" (CPU): cuts each row at the sample boundaries (wherever a position does not follow its predecessor by
  1, the rule transformers' `find_packed_sequence_indices` uses) and runs causal SDPA on each sample's block: the work
  is the sum of the squared sample lengths, each call takes SDPA's fused causal kernel.
- "varlen_packed" (GPU): one variable-length kernel over the batch's flattened tokens, with the sample boundaries as
  cumulative lengths (`cu_seq_lens_q`, from the collator; from position_ids if absent): PyTorch's own
  `torch.nn.attention.varlen.varlen_attn` (the FlashAttention kernel shipped inside PyTorch) for 16-bit tensors, else
  `flex_attention` with a document mask (compiled), else causal SDPA per sample as on the CPU. Sliding windows are
  passed to the kernel.

Both mask functions build no mask when there is no padding mask to apply (packed rows carry none); with one (unpacked,
right-padded batches) or a KV cache, mask and attention are exactly SDPA's. Logits and gradients equal the per-sample
computation (tests/test_packing.py on the CPU; the GPU kernels in scripts/gpu_check.sh).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import List, Optional, Tuple

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from train.kernels import attention
from train.kernels.attention import PACKED_SDPA, PACKED_VARLEN
from train.kernels.recompute import register as register_recomputed

try:  # torch >= 2.10
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn

    _VARLEN_PARAMETERS = set(inspect.signature(_torch_varlen_attn).parameters)
except ImportError:
    _torch_varlen_attn, _VARLEN_PARAMETERS = None, set()
try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    create_block_mask = flex_attention = None
_compiled_flex = None
_forced_kernel: Optional[str] = None  # scripts/gpu_check.sh runs each kernel of "varlen_packed" by name


def _sample_starts(position_ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(B, L) booleans: where a sample starts, at position 0 of a row and wherever a position id is not its
    predecessor's + 1 (transformers' `find_packed_sequence_indices` rule)."""
    if position_ids.shape[0] != batch_size:  # position ids are sometimes one row broadcast over the batch
        position_ids = position_ids.expand(batch_size, -1)
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    return starts


def sample_blocks(position_ids: torch.Tensor, batch_size: int) -> Optional[List[Tuple[int, int, int]]]:
    """(row, start, stop) of every sample block of the batch, or None when each row is a single sample. A block starts
    at position 0 of a row and wherever a position id is not its predecessor's + 1."""
    starts = _sample_starts(position_ids, batch_size)
    if int(starts.sum()) == batch_size:
        return None
    length = position_ids.shape[1]
    flat = starts.reshape(-1).nonzero().view(-1).tolist() + [starts.numel()]
    blocks = []
    for begin, end in zip(flat[:-1], flat[1:]):
        row, start = divmod(begin, length)
        blocks.append((row, start, end - row * length))
    return blocks


def cumulative_lengths(position_ids: torch.Tensor, batch_size: int) -> Tuple[torch.Tensor, int]:
    """(cu_seq_lens, longest sample) over the batch's flattened tokens, by the same rule as `sample_blocks`: the
    int32 offsets at which samples start, then the number of tokens. What the collator passes as cu_seq_lens_q."""
    starts = _sample_starts(position_ids, batch_size)
    offsets = starts.reshape(-1).nonzero().view(-1)
    cu = torch.cat([offsets, offsets.new_tensor([starts.numel()])]).to(torch.int32)
    return cu, int(cu.diff().max())


def _window_mask(n: int, window: Optional[int], device) -> Optional[torch.Tensor]:
    """Causal mask of one block with a sliding window of `window` keys (the query's own included), or None."""
    if not window or window >= n:
        return None
    i = torch.arange(n, device=device)
    return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)


def _per_sample_sdpa(query, key, value, sizes: List[int], dropout: float, scaling: Optional[float],
                     window: Optional[int] = None) -> torch.Tensor:
    """Causal SDPA on each sample of the flattened batch (`sizes`: the samples' lengths, in order); (B*L, H, D)."""
    batch, heads, length, _ = query.shape
    # One split per tensor (its backward is one concatenation), never a slice of the whole batch per block (each
    # slice's backward would write a batch-sized gradient). Keys and values keep their own heads (enable_gqa): not
    # expanded to the query heads, so SDPA keeps them at their size for the backward pass.
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], t.shape[-1]).split(sizes)
               for t in (query, key, value))
    gqa = key.shape[1] != heads
    outputs = []  # each (block length, H, D)
    for qb, kb, vb in zip(q, k, v):
        mask = _window_mask(qb.shape[0], window, qb.device)
        outputs.append(torch.nn.functional.scaled_dot_product_attention(
            qb.transpose(0, 1)[None], kb.transpose(0, 1)[None], vb.transpose(0, 1)[None], attn_mask=mask,
            dropout_p=dropout, scale=scaling, is_causal=mask is None, enable_gqa=gqa)[0].transpose(0, 1))
    out = torch.cat(outputs)
    # the output layer keeps its input; in training it is recomputed from the blocks' outputs, which SDPA keeps
    register_recomputed(out, lambda *blocks_out: torch.cat(blocks_out), *outputs)
    return out


def _plain_case(query, key, attention_mask, is_causal, module) -> bool:
    """Padded batches (a mask), decoding with a cache (fewer queries than keys) and non-causal calls: plain SDPA."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    return attention_mask is not None or not causal or not (query.shape[2] == key.shape[2] > 1)


def packed_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                          scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                          **kwargs) -> Tuple[torch.Tensor, None]:
    """"sdpa_packed", an `AttentionInterface` function (query (B, H, L, D), key/value (B, H_kv, L, D); returns
    (B, L, H, D)): causal SDPA per sample block when the batch is packed and no mask applies, else plain SDPA."""
    position_ids = kwargs.get("position_ids")
    blocks = None
    if not _plain_case(query, key, attention_mask, is_causal, module) and position_ids is not None:
        blocks = sample_blocks(position_ids, query.shape[0])
    if blocks is None:  # padded batch (mask), one sample per row, or decoding with a cache: SDPA, as transformers
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, length, _ = query.shape
    out = _per_sample_sdpa(query, key, value, [stop - start for _, start, stop in blocks], dropout, scaling)
    return out.view(batch, length, heads, value.shape[-1]), None


def varlen_arguments(parameters: set, scaling: Optional[float], head_dim: int, window: Optional[int],
                     query_heads: int, kv_heads: int) -> Tuple[dict, float, int]:
    """How to call PyTorch's varlen_attn, whose signature changed across versions (`parameters`: the names it takes):
    (keyword arguments, factor for the queries, repeats of the key/value heads). Causal through `window_size` (2.11+;
    (W - 1, 0) for a sliding window of W keys) or `is_causal` (2.10); the softmax scale as `scale` where taken, else
    folded into the queries; key/value heads unexpanded through `enable_gqa` where taken, else repeated."""
    kwargs, q_factor, repeats = {}, 1.0, 1
    if "window_size" in parameters:
        kwargs["window_size"] = (window - 1 if window else -1, 0)
    else:
        kwargs["is_causal"] = True
    if scaling is not None:
        if "scale" in parameters:
            kwargs["scale"] = scaling
        else:
            q_factor = scaling * head_dim ** 0.5  # the kernel's own 1/sqrt(D) then gives `scaling`
    if kv_heads != query_heads:
        if "enable_gqa" in parameters:
            kwargs["enable_gqa"] = True
        else:
            repeats = query_heads // kv_heads
    return kwargs, q_factor, repeats


def _torch_varlen(q, k, v, cu: torch.Tensor, longest: int, scaling: Optional[float],
                  window: Optional[int]) -> torch.Tensor:
    """PyTorch's varlen_attn on (T, H, D) tensors (`varlen_arguments` adapts the call to this torch's version)."""
    kwargs, q_factor, repeats = varlen_arguments(_VARLEN_PARAMETERS, scaling, q.shape[-1], window, q.shape[1],
                                                 k.shape[1])
    if q_factor != 1.0:
        q = q * q_factor
    if repeats > 1:
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    return _torch_varlen_attn(q, k, v, cu, cu, longest, longest, **kwargs)


def _flex(q, k, v, cu: torch.Tensor, scaling: Optional[float], window: Optional[int]) -> torch.Tensor:
    """flex_attention over (T, H, D) tensors with a document mask (causal within a sample, and within `window`);
    compiled on a GPU (uncompiled, it computes the whole score matrix)."""
    global _compiled_flex
    total = q.shape[0]
    document = torch.repeat_interleave(torch.arange(len(cu) - 1, device=q.device), cu.diff().long(),
                                       output_size=total)

    def mask_mod(b, h, qi, ki):
        allowed = (document[qi] == document[ki]) & (ki <= qi)
        return allowed & (ki > qi - window) if window else allowed

    block_mask = create_block_mask(mask_mod, 1, None, total, total, device=q.device)
    run = flex_attention
    if q.device.type == "cuda":
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=True)
        run = _compiled_flex
    out = run(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=block_mask,
              scale=scaling, enable_gqa=k.shape[1] != q.shape[1])
    return out[0].transpose(0, 1)


@contextlib.contextmanager
def forced_kernel(kernel: Optional[str]):
    """Within the block, "varlen_packed" runs `kernel` ("torch_varlen", "flex" or "sdpa_per_sample"; None: the usual
    choice): how scripts/gpu_check.sh compares every kernel on the same GPU."""
    global _forced_kernel
    previous, _forced_kernel = _forced_kernel, kernel
    try:
        yield
    finally:
        _forced_kernel = previous


def kernel_for(query: torch.Tensor, dropout: float, window: Optional[int]) -> str:
    """The kernel "varlen_packed" uses for these tensors (train/kernels/attention.py's varlen_kernel with what this
    torch has)."""
    if _forced_kernel is not None:
        return _forced_kernel
    torch_varlen = _torch_varlen_attn is not None and (not window or "window_size" in _VARLEN_PARAMETERS)
    dtype = str(query.dtype).replace("torch.", "")
    return attention.varlen_kernel(query.device.type, dtype, dropout, torch_varlen, flex_attention is not None)


def packed_varlen_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                            scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                            **kwargs) -> Tuple[torch.Tensor, None]:
    """"varlen_packed", an `AttentionInterface` function: one variable-length kernel over the batch's samples
    (`kernel_for`), bounded by the collator's cu_seq_lens_q / max_length_q (or position_ids); plain SDPA for padded
    batches and decoding."""
    position_ids = kwargs.get("position_ids")
    if _plain_case(query, key, attention_mask, is_causal, module) or \
            (position_ids is None and kwargs.get("cu_seq_lens_q") is None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, length, head_dim = query.shape
    cu, longest = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None:
        cu, longest = cumulative_lengths(position_ids, batch)
    cu, longest = cu.to(device=query.device, dtype=torch.int32), int(longest)
    window = kwargs.get("sliding_window")
    kernel = kernel_for(query, dropout, window)
    if kernel == "sdpa_per_sample":
        sizes = cu.diff().tolist()
        out = _per_sample_sdpa(query, key, value, sizes, dropout, scaling, window)
    else:
        q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], head_dim) for t in (query, key, value))
        out = _torch_varlen(q, k, v, cu, longest, scaling, window) if kernel == "torch_varlen" \
            else _flex(q, k, v, cu, scaling, window)
    return out.view(batch, length, heads, value.shape[-1]), None


def _no_mask_needed(kwargs: dict, windows_handled: bool) -> bool:
    return (kwargs.get("attention_mask") is None and (windows_handled or kwargs.get("local_size") is None)
            and not kwargs.get("use_vmap") and not kwargs.get("allow_is_bidirectional_skip")
            and kwargs.get("q_length") == kwargs.get("kv_length")
            and not kwargs.get("q_offset") and not kwargs.get("kv_offset"))


def packed_sdpa_mask(**kwargs) -> Optional[torch.Tensor]:
    """The mask function for "sdpa_packed": none when no padding mask and no extra pattern (sliding window, custom
    or bidirectional overlays) applies, so packed rows never get an O(L^2) mask; otherwise SDPA's own mask."""
    return None if _no_mask_needed(kwargs, windows_handled=False) else sdpa_mask(**kwargs)


def packed_varlen_mask(**kwargs) -> Optional[torch.Tensor]:
    """The mask function for "varlen_packed": as "sdpa_packed"'s, and no mask for sliding windows either (the
    kernels apply them)."""
    return None if _no_mask_needed(kwargs, windows_handled=True) else sdpa_mask(**kwargs)


def register() -> None:
    """Make "sdpa_packed" and "varlen_packed" known to transformers (idempotent)."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    AttentionInterface.register(PACKED_VARLEN, packed_varlen_attention)
    AttentionMaskInterface.register(PACKED_VARLEN, packed_varlen_mask)


def supports(config) -> bool:
    """Text-only causal language models without attention soft-capping: their attention gets `position_ids` and a
    causal mask from `create_causal_mask` (multimodal models add bidirectional image blocks these functions do not
    know; soft-capped scores, Gemma-2, need a kernel that applies them)."""
    return config.get_text_config() is config and getattr(config, "is_causal", True) is not False \
        and not getattr(config, "attn_logit_softcapping", None)


def choose_attention(requested: str, packing: bool, device_type: str, config, dtype: str = "bfloat16",
                     flash_installed: Optional[bool] = None) -> str:
    """train/kernels/attention.py's choose_attention for a model config; registers our implementations when one is chosen."""
    chosen = attention.choose_attention(requested, packing, device_type, supports(config), dtype, flash_installed)
    if chosen in (PACKED_SDPA, PACKED_VARLEN):
        register()
    return chosen


def kernel_description(implementation: str, device_type: str, dtype: str, dropout: float = 0.0) -> str:
    """What really runs, with this torch (for the run's log)."""
    if implementation != PACKED_VARLEN:
        return attention.describe(implementation, device_type, dtype)
    kernel = attention.varlen_kernel(device_type, dtype, dropout, _torch_varlen_attn is not None,
                                     flex_attention is not None)
    names = {"torch_varlen": "PyTorch varlen_attn", "flex": "flex_attention with a document mask",
             "sdpa_per_sample": "causal SDPA"}
    return f"{names[kernel]} per sample (packed rows, {PACKED_VARLEN})"

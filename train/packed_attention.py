"""Attention per sample for packed rows on a CPU: no O(L^2) mask, no attention across samples, no wasted blocks.

A packed row holds several samples whose `position_ids` restart at 0 (train/data/packing.py). With plain SDPA,
transformers builds a block-diagonal causal mask for the whole row and SDPA computes every (query, key) pair of the row
under it: O(L^2) work and memory per row and layer, and a masked SDPA cannot use the fast causal kernel. On a CPU that
made a packed row slower than padding short samples.

`packed_sdpa_attention` (registered with transformers' `AttentionInterface` as "sdpa_packed") cuts each row at the
sample boundaries (wherever a position does not follow its predecessor by 1, the rule transformers'
`find_packed_sequence_indices` uses) and runs causal SDPA on each sample's block on its own: the work is the sum of the
squared sample lengths, and each call takes SDPA's fused causal kernel. Its mask function `packed_sdpa_mask` builds no
mask when there is no padding mask to apply (packed rows carry none); with one (unpacked, right-padded batches),
mask and attention are exactly SDPA's. Logits and gradients equal the per-sample computation (tests/test_packing.py).

Which attention runs is chosen per backend by `choose_attention` (train/model.py applies it): packed rows with
`model.attn_implementation: sdpa` on a CPU use "sdpa_packed"; on a GPU, FlashAttention (varlen, from the collator's
cu_seq_lens) or SDPA with transformers' block mask stay as configured. Text-only causal models only; their sliding
window layers (if any) get SDPA's own mask, since transformers passes `local_size` for them.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from train.recompute import register as register_recomputed

PACKED_SDPA = "sdpa_packed"


def sample_blocks(position_ids: torch.Tensor, batch_size: int) -> Optional[List[Tuple[int, int, int]]]:
    """(row, start, stop) of every sample block of the batch, or None when each row is a single sample. A block starts
    at position 0 of a row and wherever a position id is not its predecessor's + 1."""
    if position_ids.shape[0] != batch_size:  # position ids are sometimes one row broadcast over the batch
        position_ids = position_ids.expand(batch_size, -1)
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] - position_ids[:, :-1] != 1
    if int(starts.sum()) == batch_size:
        return None
    length = position_ids.shape[1]
    flat = starts.reshape(-1).nonzero().view(-1).tolist() + [starts.numel()]
    blocks = []
    for begin, end in zip(flat[:-1], flat[1:]):
        row, start = divmod(begin, length)
        blocks.append((row, start, end - row * length))
    return blocks


def packed_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                          scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                          **kwargs) -> Tuple[torch.Tensor, None]:
    """An attention function for `AttentionInterface` (query (B, H, L, D), key/value (B, H_kv, L, D); returns
    (B, L, H, D)): causal SDPA per sample block when the batch is packed and no mask applies, else plain SDPA."""
    position_ids = kwargs.get("position_ids")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    blocks = None
    if attention_mask is None and causal and position_ids is not None and query.shape[2] == key.shape[2] > 1:
        blocks = sample_blocks(position_ids, query.shape[0])
    if blocks is None:  # padded batch (mask), one sample per row, or decoding with a cache: SDPA, as transformers
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, length, _ = query.shape
    # Blocks come row by row, in order, and cover every row: split the flattened (B * L) tokens into them. One split
    # per tensor (its backward is one concatenation), never a slice of the whole batch per block (each slice's
    # backward would write a batch-sized gradient). Keys and values keep their own heads (enable_gqa): not expanded
    # to the query heads, so SDPA keeps them at their size for the backward pass.
    sizes = [stop - start for _, start, stop in blocks]
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], t.shape[-1]).split(sizes)
               for t in (query, key, value))
    gqa = key.shape[1] != heads
    outputs = [  # each (block length, H, D)
        torch.nn.functional.scaled_dot_product_attention(
            qb.transpose(0, 1)[None], kb.transpose(0, 1)[None], vb.transpose(0, 1)[None], dropout_p=dropout,
            scale=scaling, is_causal=True, enable_gqa=gqa)[0].transpose(0, 1)
        for qb, kb, vb in zip(q, k, v)]
    out = torch.cat(outputs)
    # the output layer keeps its input; in training it is recomputed from the blocks' outputs, which SDPA keeps
    register_recomputed(out, lambda *blocks_out: torch.cat(blocks_out), *outputs)
    return out.view(batch, length, heads, value.shape[-1]), None


def packed_sdpa_mask(**kwargs) -> Optional[torch.Tensor]:
    """The mask function for "sdpa_packed": none when no padding mask and no extra pattern (sliding window, custom
    or bidirectional overlays) applies, so packed rows never get an O(L^2) mask; otherwise SDPA's own mask."""
    plain = (kwargs.get("attention_mask") is None and kwargs.get("local_size") is None
             and not kwargs.get("use_vmap") and not kwargs.get("allow_is_bidirectional_skip")
             and kwargs.get("q_length") == kwargs.get("kv_length")
             and not kwargs.get("q_offset") and not kwargs.get("kv_offset"))
    return None if plain else sdpa_mask(**kwargs)


def register() -> str:
    """Make "sdpa_packed" known to transformers (idempotent); returns the name."""
    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)
    return PACKED_SDPA


def supports(config) -> bool:
    """Text-only causal language models: their attention gets `position_ids` and a causal mask from
    `create_causal_mask` (multimodal models add bidirectional image blocks this function does not know)."""
    return config.get_text_config() is config and getattr(config, "is_causal", True) is not False


def choose_attention(requested: str, packing: bool, device_type: str, config) -> str:
    """The attention implementation to train with: "sdpa_packed" for packed rows with SDPA on a CPU, else the
    configured one (FlashAttention varlen on a GPU, SDPA's block mask on a GPU, eager, ...)."""
    if packing and requested == "sdpa" and device_type == "cpu" and supports(config):
        return register()
    return requested

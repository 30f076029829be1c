"""Overlong samples, best-fit-decreasing packing, padding-free collation, and packing statistics.

Packed rows never let samples see each other: each sample's `position_ids` restart at 0, the batch carries no
attention_mask, and transformers turns the position resets into per-sample attention:
- sdpa / eager / flex: `transformers.masking_utils._preprocess_mask_arguments` calls `find_packed_sequence_indices(
  position_ids)` whenever attention_mask is None and there is no KV cache; `create_causal_mask` then combines the causal
  mask with `packed_sequence_mask_function` (via `packed_sequence_compatibility_function`), i.e. a block-diagonal
  causal mask. (Checked in transformers 5.23; `tests/test_packing.py` proves it on tiny Llama and Qwen3 models.)
  The detection is skipped when a KV cache exists, so training must run with use_cache=False (the Trainer's
  default `args.use_cache=False` and train/model.py set it); with use_cache=True packed samples leak into each other.
- flash_attention_2/3: `modeling_flash_attention_utils._flash_attention_forward` calls the varlen kernel with
  `cu_seq_lens_q/k` and `max_length_q/k` when they are passed as model kwargs, and otherwise infers them from
  position_ids (`_is_packed_sequence` + `prepare_fa_kwargs_from_position_ids`) ONLY when the batch has one row.
  With several rows per batch, the varlen kwargs are therefore required: `Collator(..., flash_varlen_kwargs=True)`
  adds them, computed from the flattened position_ids exactly as `prepare_fa_kwargs_from_position_ids` does.
The first label of every packed sample is -100, so the loss never predicts a sample's first token from the previous
sample's last one.
"""

from __future__ import annotations

import heapq
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from train.data import IGNORE_INDEX



# ----------------------------------------------------------------------------------------------------------------------
# Overlong samples
# ----------------------------------------------------------------------------------------------------------------------


def handle_overlong(samples: List[dict], max_length: int, mode: str) -> Tuple[List[dict], dict]:
    """Drop or split the samples longer than `max_length`; samples that fit pass through unchanged.

    mode 'drop': an overlong sample is dropped (its tokens counted in tokens_lost).
    mode 'split': an overlong sample becomes consecutive chunks of at most max_length tokens. Each chunk after the
    first starts with the previous chunk's last token as context (label -100), so every labelled token is still
    predicted from its true predecessor: no input token and no label is lost. Chunks that carry no label (e.g. the
    middle of a long prompt) teach nothing; they are dropped and counted (chunks_without_labels, and their new tokens
    in tokens_lost — prompt tokens, never labels).
    mode 'split_all': as 'split', but chunks without labels are kept too, so no token at all is lost. They cost
    compute and train nothing (a chunk never attends to the previous one); they are still counted in
    chunks_without_labels.
    Returns (samples, counts) with counts {'overlong', 'dropped', 'split_into', 'tokens_lost', 'label_tokens_lost',
    'chunks_without_labels'}.
    """
    if mode not in ("drop", "split", "split_all"):
        raise ValueError(f"data.overlong: '{mode}' is not one of drop, split, split_all")
    if max_length < 2:
        raise ValueError(f"data.max_length must be at least 2, got {max_length}")
    counts = {"overlong": 0, "dropped": 0, "split_into": 0, "tokens_lost": 0, "label_tokens_lost": 0,
              "chunks_without_labels": 0}
    out: List[dict] = []
    for sample in samples:
        ids, labels = sample["input_ids"], sample["labels"]
        if len(ids) <= max_length:
            out.append(sample)
            continue
        counts["overlong"] += 1
        if mode == "drop":
            counts["dropped"] += 1
            counts["tokens_lost"] += len(ids)
            counts["label_tokens_lost"] += sum(1 for x in labels[1:] if x != IGNORE_INDEX)
            continue
        for start, stop in _chunk_bounds(len(ids), max_length):
            chunk_labels = list(labels[start:stop])
            chunk_labels[0] = IGNORE_INDEX  # first token of a chunk: context only (it is the previous chunk's last token)
            new_tokens = stop - start - (1 if start > 0 else 0)
            if all(x == IGNORE_INDEX for x in chunk_labels):
                counts["chunks_without_labels"] += 1
                if mode == "split":
                    counts["dropped"] += 1
                    counts["tokens_lost"] += new_tokens
                    continue
            chunk = {k: v for k, v in sample.items() if k not in ("input_ids", "labels")}
            chunk["input_ids"], chunk["labels"] = list(ids[start:stop]), chunk_labels
            out.append(chunk)
            counts["split_into"] += 1
    return out, counts


def _chunk_bounds(n: int, max_length: int) -> List[Tuple[int, int]]:
    """[start, stop) of chunks covering n tokens, each <= max_length, consecutive chunks sharing one token."""
    bounds, start = [], 0
    while True:
        stop = min(start + max_length, n)
        bounds.append((start, stop))
        if stop == n:
            return bounds
        start = stop - 1


# ----------------------------------------------------------------------------------------------------------------------
# Best-fit-decreasing bin packing
# ----------------------------------------------------------------------------------------------------------------------


class _FreeSpaceIndex:
    """Open bins grouped by free space (0..capacity), with a segment tree over free-space values answering "smallest
    free space >= n that has a bin" in O(log capacity). Within one free-space value the lowest bin index wins."""

    def __init__(self, capacity: int):
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        self.count = [0] * (2 * self.size)  # count[node] = bins whose free space lies in the node's range
        self.bins: Dict[int, List[int]] = {}  # free space -> min-heap of bin indices

    def add(self, free: int, bin_index: int) -> None:
        heapq.heappush(self.bins.setdefault(free, []), bin_index)
        self._update(free, 1)

    def pop_best_fit(self, need: int) -> Optional[Tuple[int, int]]:
        """Remove and return (free, bin_index) of the bin with the least free space >= need, or None."""
        free = self._first_at_least(need)
        if free is None:
            return None
        bin_index = heapq.heappop(self.bins[free])
        self._update(free, -1)
        return free, bin_index

    def _update(self, leaf: int, delta: int) -> None:
        node = leaf + self.size
        while node:
            self.count[node] += delta
            node //= 2

    def _first_at_least(self, need: int) -> Optional[int]:
        if need >= self.size:
            return None
        # Walk up from the leaf `need`: find the first node to its right (or itself) holding a bin, then descend.
        node = need + self.size
        if self.count[node]:
            return need
        while node > 1:
            if node % 2 == 0 and self.count[node + 1]:  # left child: try the right sibling
                node += 1
                break
            node //= 2
        else:
            return None
        while node < self.size:
            node = 2 * node if self.count[2 * node] else 2 * node + 1
        return node - self.size


def pack_bfd(lengths: Sequence[int], max_length: int) -> List[List[int]]:
    """Best-fit-decreasing: place samples, longest first, each into the open bin with the least free space that fits,
    else a new bin. Deterministic (ties: lower sample index first, then lower bin index). O(n log n + n log max_length).
    Returns bins of sample indices, in order of creation. A sample longer than max_length is an error (split or drop
    it first with handle_overlong)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    if order and lengths[order[0]] > max_length:
        raise ValueError(f"sample {order[0]} has {lengths[order[0]]} tokens > max_length {max_length}; "
                         f"call handle_overlong first")
    bins: List[List[int]] = []
    index = _FreeSpaceIndex(max_length)
    for i in order:
        n = lengths[i]
        found = index.pop_best_fit(n)
        if found is None:
            bins.append([i])
            index.add(max_length - n, len(bins) - 1)
        else:
            free, b = found
            bins[b].append(i)
            index.add(free - n, b)
    return bins


def packed_rows(samples: List[dict], bins: Sequence[Sequence[int]]) -> List[dict]:
    """One row per bin: the bin's samples concatenated, position_ids restarting at 0 for each sample, and the first
    label of each sample set to -100 (it must not be predicted from the previous sample)."""
    rows = []
    for b in bins:
        ids: List[int] = []
        labels: List[int] = []
        positions: List[int] = []
        for i in b:
            s = samples[i]
            n = len(s["input_ids"])
            ids.extend(s["input_ids"])
            labels.append(IGNORE_INDEX)
            labels.extend(s["labels"][1:n])
            positions.extend(range(n))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Balancing an optimizer step across data-parallel ranks
# ----------------------------------------------------------------------------------------------------------------------


def balance_micro_batches(indices: Sequence[int], lengths: Sequence[int], world_size: int,
                          grad_accum: int) -> List[List[List[int]]]:
    """Deal the rows of one optimizer step to `world_size` ranks x `grad_accum` micro-batches so that every
    micro-batch holds the same number of rows (the first len % K micro-batches one more, K = world_size * grad_accum)
    and nearly the same number of tokens: rows go longest first to the micro-batch with the fewest tokens that still
    has room (longest-processing-time greedy). The micro-batches are then ranked by tokens and dealt so that the
    world_size busiest form the first accumulation step, and so on: ranks wait on each other as little as possible at
    every collective. Returns result[rank][step] = row indices. Needs len(indices) >= K."""
    k = world_size * grad_accum
    if len(indices) < k:
        raise ValueError(f"{len(indices)} rows cannot fill {world_size} ranks x {grad_accum} micro-batches")
    room = [len(indices) // k + (1 if b < len(indices) % k else 0) for b in range(k)]
    bins: List[List[int]] = [[] for _ in range(k)]
    heap = [(0, b) for b in range(k)]  # (tokens so far, bin): bins that still have room
    for row, length in sorted(zip(indices, lengths), key=lambda x: (-x[1], x[0])):
        tokens, b = heapq.heappop(heap)
        bins[b].append(row)
        if len(bins[b]) < room[b]:
            heapq.heappush(heap, (tokens + length, b))
    length_of = dict(zip(indices, lengths))
    ranked = sorted(bins, key=lambda rows: -sum(length_of[r] for r in rows))
    return [[ranked[step * world_size + rank] for step in range(grad_accum)] for rank in range(world_size)]


# ----------------------------------------------------------------------------------------------------------------------
# Collation
# ----------------------------------------------------------------------------------------------------------------------


class Collator:
    """Turn rows into a batch of tensors.

    packing=True (padding-free): rows padded to the longest row (rounded up to pad_to_multiple_of). Returns input_ids,
    labels (-100 on padding) and position_ids, where the padding is its own segment counting from 0, so it never
    attends into real tokens. No attention_mask: transformers derives per-sample attention from position_ids (module
    doc). With flash_varlen_kwargs=True it also returns cu_seq_lens_q/k and max_length_q/k for FlashAttention's varlen
    kernel (needed whenever a batch has more than one row).
    packing=False: rows right-padded, with attention_mask (1 on real tokens) and labels -100 on padding.
    """

    def __init__(self, pad_token_id: int, packing: bool, pad_to_multiple_of: Optional[int] = None,
                 flash_varlen_kwargs: bool = False):
        if pad_token_id is None:
            raise ValueError("Collator needs a pad_token_id; run templates.setup_tokenizer first")
        self.pad_token_id = pad_token_id
        self.packing = packing
        self.pad_to_multiple_of = pad_to_multiple_of
        self.flash_varlen_kwargs = flash_varlen_kwargs

    def _padded_length(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return longest if not m else -(-longest // m) * m

    def __call__(self, features: List[dict]) -> Dict[str, torch.Tensor]:
        width = self._padded_length(max(len(f["input_ids"]) for f in features))
        input_ids, labels, positions, mask = [], [], [], []
        for f in features:
            n = len(f["input_ids"])
            pad = width - n
            input_ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            if self.packing:
                own = list(f["position_ids"]) if "position_ids" in f else list(range(n))
                positions.append(own + list(range(pad)))
            else:
                mask.append([1] * n + [0] * pad)
        batch = {"input_ids": torch.tensor(input_ids, dtype=torch.long),
                 "labels": torch.tensor(labels, dtype=torch.long)}
        if not self.packing:
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
            return batch
        batch["position_ids"] = torch.tensor(positions, dtype=torch.long)
        if self.flash_varlen_kwargs:
            batch.update(flash_varlen_kwargs(batch["position_ids"]))
        return batch


def flash_varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """cu_seq_lens_q/k and max_length_q/k over the flattened batch: a sequence starts wherever a position is 0."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().view(-1).to(torch.int32)
    cu = torch.cat([starts, torch.tensor([flat.numel()], dtype=torch.int32)])
    longest = int(cu.diff().max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


# ----------------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------------


def packing_stats(rows: Sequence[dict], max_length: int) -> dict:
    """Packing efficiency = real tokens / (rows * max_length); padding fraction = 1 - efficiency (the share of token
    slots a fixed-size batch of max_length rows would spend on padding)."""
    n_rows = len(rows)
    tokens = sum(len(r["input_ids"]) for r in rows)
    label_tokens = sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in rows)
    slots = n_rows * max_length
    efficiency = tokens / slots if slots else 0.0
    return {"rows": n_rows, "tokens": tokens, "label_tokens": label_tokens, "max_length": max_length,
            "packing_efficiency": round(efficiency, 6),
            "padding_fraction": round(1.0 - efficiency, 6) if slots else 0.0}

"""Packing: BFD against independent packers, lossless splitting, collation, and the proof that packed rows give the
same logits and loss as the samples run one by one (tiny Llama and Qwen3; sdpa, eager and the CPU path "sdpa_packed"
that runs attention per sample block, train/kernels/packed_attention.py)."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from train.data.packing import (Collator, balance_micro_batches, flash_varlen_kwargs, handle_overlong, pack_bfd,
                                packed_rows, packing_stats)
from train.kernels.packed_attention import PACKED_SDPA, choose_attention, register, sample_blocks

register()  # "sdpa_packed" becomes a valid attn_implementation

IGNORE = -100


# ----------------------------------------------------------------------------------------------------------------------
# Independent packers
# ----------------------------------------------------------------------------------------------------------------------


def naive_bfd(lengths, capacity):
    """Textbook best-fit-decreasing with a linear scan over open bins (O(n^2))."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins, free = [], []
    for i in order:
        fits = [b for b in range(len(bins)) if free[b] >= lengths[i]]
        if not fits:
            bins.append([i])
            free.append(capacity - lengths[i])
        else:
            b = min(fits, key=lambda b: (free[b], b))
            bins[b].append(i)
            free[b] -= lengths[i]
    return bins


def first_fit(lengths, capacity):
    """First-fit in arrival order (no sorting): the simple baseline."""
    free = []
    for n in lengths:
        for b, f in enumerate(free):
            if f >= n:
                free[b] -= n
                break
        else:
            free.append(capacity - n)
    return len(free)


def optimal_bins(lengths, capacity):
    """Fewest bins by exhaustive search (tiny inputs only)."""
    for k in range(1, len(lengths) + 1):
        for assignment in itertools.product(range(k), repeat=len(lengths)):
            loads = [0] * k
            for n, b in zip(lengths, assignment):
                loads[b] += n
            if max(loads) <= capacity:
                return k
    return len(lengths)


def long_tailed_lengths(n, capacity, seed):
    rng = random.Random(seed)
    return [min(capacity, max(1, int(rng.lognormvariate(5.0, 1.0)))) for _ in range(n)]


def check_partition(bins, lengths, capacity):
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))  # every sample in exactly one bin
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)


# ----------------------------------------------------------------------------------------------------------------------
# BFD
# ----------------------------------------------------------------------------------------------------------------------


def test_bfd_equals_textbook_bfd():
    rng = random.Random(0)
    for _ in range(200):
        capacity = rng.choice([8, 16, 64, 2048])
        lengths = [rng.randint(1, capacity) for _ in range(rng.randint(0, 120))]
        bins = pack_bfd(lengths, capacity)
        assert bins == naive_bfd(lengths, capacity)
        check_partition(bins, lengths, capacity)


def test_bfd_close_to_optimal_on_small_inputs():
    rng = random.Random(1)
    for _ in range(40):
        capacity = 10
        lengths = [rng.randint(1, 10) for _ in range(rng.randint(1, 7))]
        bins = pack_bfd(lengths, capacity)
        check_partition(bins, lengths, capacity)
        assert len(bins) <= 11 / 9 * optimal_bins(lengths, capacity) + 6 / 9  # the known BFD bound


@pytest.mark.parametrize("capacity", [2048, 4096])
def test_bfd_beats_first_fit_on_long_tailed_lengths(capacity):
    lengths = long_tailed_lengths(3000, capacity, seed=capacity)
    bins = pack_bfd(lengths, capacity)
    check_partition(bins, lengths, capacity)
    assert len(bins) <= first_fit(lengths, capacity)
    assert len(bins) == math.ceil(sum(lengths) / capacity)  # with many short samples BFD reaches the lower bound


def test_bfd_is_deterministic_with_ties_by_index():
    lengths = [5, 3, 5, 3, 5, 3, 2]
    assert pack_bfd(lengths, 8) == [[0, 1], [2, 3], [4, 5], [6]]
    assert pack_bfd(lengths, 8) == pack_bfd(list(lengths), 8)


def test_bfd_refuses_overlong_samples():
    with pytest.raises(ValueError, match="handle_overlong"):
        pack_bfd([3, 9, 2], 8)


def test_bfd_scales_to_20k_samples():
    import time

    lengths = long_tailed_lengths(20000, 4096, seed=7)
    started = time.perf_counter()
    bins = pack_bfd(lengths, 4096)
    assert time.perf_counter() - started < 5.0  # about 0.3 s here; a quadratic packer takes minutes
    check_partition(bins, lengths, 4096)
    efficiency = sum(lengths) / (len(bins) * 4096)
    assert efficiency >= 0.99


# ----------------------------------------------------------------------------------------------------------------------
# Overlong samples
# ----------------------------------------------------------------------------------------------------------------------


def sample(n, prompt, seed=0):
    rng = random.Random(seed)
    ids = [rng.randint(2, 127) for _ in range(n)]
    return {"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:], "source": 3}


def test_split_loses_no_token_and_no_label():
    s = sample(50, prompt=1)
    chunks, counts = handle_overlong([s, sample(10, 2)], max_length=16, mode="split")
    assert len(chunks) == 1 + math.ceil((50 - 1) / (16 - 1))
    assert chunks[-1] == sample(10, 2)  # samples that fit pass through unchanged
    pieces = chunks[:-1]
    assert all(len(c["input_ids"]) <= 16 for c in pieces)
    # consecutive chunks share one token (the next chunk's context); without it the concatenation is the original
    assert pieces[0]["input_ids"] + [t for c in pieces[1:] for t in c["input_ids"][1:]] == s["input_ids"]
    assert pieces[0]["labels"] + [t for c in pieces[1:] for t in c["labels"][1:]] == s["labels"]
    assert all(c["labels"][0] == IGNORE for c in pieces)
    trained = lambda labels: sum(1 for x in labels[1:] if x != IGNORE)  # noqa: E731  (labels[0] is never predicted)
    assert sum(trained(c["labels"]) for c in pieces) == trained(s["labels"])
    assert all(c["source"] == 3 for c in pieces)  # other fields are kept
    assert counts == {"overlong": 1, "dropped": 0, "split_into": len(pieces), "tokens_lost": 0,
                      "label_tokens_lost": 0, "chunks_without_labels": 0}


def test_split_drops_and_counts_chunks_without_labels():
    s = sample(50, prompt=40)  # a long prompt, answer in tokens 40..49
    chunks, counts = handle_overlong([s], max_length=16, mode="split")
    # chunks [0,16) [15,31) [30,46) [45,50): the first two are prompt only
    assert [c["input_ids"] for c in chunks] == [s["input_ids"][30:46], s["input_ids"][45:50]]
    assert counts["chunks_without_labels"] == 2 and counts["dropped"] == 2
    assert counts["tokens_lost"] == 16 + 15 and counts["label_tokens_lost"] == 0 and counts["split_into"] == 2


def test_split_all_keeps_chunks_without_labels_so_no_token_is_lost():
    s = sample(50, prompt=40)
    chunks, counts = handle_overlong([s], max_length=16, mode="split_all")
    bounds = [(0, 16), (15, 31), (30, 46), (45, 50)]  # by hand: windows of 16 sharing one token
    assert [c["input_ids"] for c in chunks] == [s["input_ids"][a:b] for a, b in bounds]
    assert [c["labels"] for c in chunks] == [[IGNORE] + s["labels"][a + 1:b] for a, b in bounds]
    assert counts == {"overlong": 1, "dropped": 0, "split_into": 4, "tokens_lost": 0, "label_tokens_lost": 0,
                      "chunks_without_labels": 2}


def test_drop_mode_drops_and_counts():
    kept = sample(16, 4)
    out, counts = handle_overlong([sample(17, 4), kept, sample(40, 30)], max_length=16, mode="drop")
    assert out == [kept]
    assert counts == {"overlong": 2, "dropped": 2, "split_into": 0, "tokens_lost": 57,
                      "label_tokens_lost": (17 - 4) + (40 - 30), "chunks_without_labels": 0}


def test_unknown_overlong_mode_raises():
    with pytest.raises(ValueError, match="drop, split"):
        handle_overlong([], 16, "truncate")


def test_balance_micro_batches_by_hand():
    # rows 0..5 with these lengths, 2 ranks x 1 step, 3 rows each: greedy longest first to the lighter bin
    lengths = [100, 10, 60, 50, 40, 30]
    out = balance_micro_batches(list(range(6)), lengths, world_size=2, grad_accum=1)
    # 100 -> A; 60 -> B; 50 -> B (110); 40 -> A (140); 30 -> B (140, full); 10 -> A (150)
    assert sorted(map(sorted, [out[0][0], out[1][0]])) == [[0, 1, 4], [2, 3, 5]]


def test_balance_micro_batches_partitions_and_evens_out_tokens():
    rng = random.Random(0)
    lengths = [int(20 + 2000 * rng.random() ** 4) for _ in range(64)]  # long-tailed
    rows = list(range(100, 164))
    out = balance_micro_batches(rows, lengths, world_size=4, grad_accum=2)
    length_of = dict(zip(rows, lengths))
    micro = [mb for rank in out for mb in rank]
    assert sorted(r for mb in micro for r in mb) == rows  # every row exactly once
    assert [len(mb) for mb in micro] == [8] * 8  # fixed micro-batch size
    tokens = [sum(length_of[r] for r in mb) for mb in micro]
    assert max(tokens) / min(tokens) - 1 < 0.02
    # the same rows cut in shuffled order, as a random sampler would: far from even
    order = rows[:]
    rng.shuffle(order)
    random_tokens = [sum(length_of[r] for r in order[i:i + 8]) for i in range(0, 64, 8)]
    assert max(random_tokens) / min(random_tokens) - 1 > 0.5
    # step k of every rank holds the k-th busiest group of micro-batches
    per_step = [[sum(length_of[r] for r in out[rank][step]) for rank in range(4)] for step in range(2)]
    assert min(per_step[0]) >= max(per_step[1])


def test_balance_micro_batches_uneven_tail_and_too_few_rows():
    out = balance_micro_batches(list(range(5)), [5, 4, 3, 2, 1], world_size=2, grad_accum=2)
    assert sorted(len(mb) for rank in out for mb in rank) == [1, 1, 1, 2]
    with pytest.raises(ValueError, match="cannot fill"):
        balance_micro_batches([0, 1, 2], [1, 1, 1], world_size=2, grad_accum=2)


# ----------------------------------------------------------------------------------------------------------------------
# Rows and collation
# ----------------------------------------------------------------------------------------------------------------------


def test_packed_rows_concatenate_and_restart_positions():
    samples = [{"input_ids": [1, 2, 3], "labels": [5, 2, 3]}, {"input_ids": [4, 5], "labels": [IGNORE, 5]},
               {"input_ids": [6], "labels": [6]}]
    rows = packed_rows(samples, [[0, 1], [2]])
    assert rows == [{"input_ids": [1, 2, 3, 4, 5], "labels": [IGNORE, 2, 3, IGNORE, 5], "position_ids": [0, 1, 2, 0, 1]},
                    {"input_ids": [6], "labels": [IGNORE], "position_ids": [0]}]


def test_collator_packing_pads_as_its_own_segment():
    rows = [{"input_ids": [1, 2, 3, 4, 5], "labels": [IGNORE, 2, 3, IGNORE, 5], "position_ids": [0, 1, 2, 0, 1]},
            {"input_ids": [6, 7], "labels": [IGNORE, 7], "position_ids": [0, 1]}]
    batch = Collator(pad_token_id=9, packing=True, pad_to_multiple_of=4)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # no attention_mask: padding-free
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 9, 9, 9], [6, 7, 9, 9, 9, 9, 9, 9]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5] + [IGNORE] * 3, [IGNORE, 7] + [IGNORE] * 6]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_collator_without_packing_uses_attention_mask():
    rows = [{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}, {"input_ids": [4], "labels": [IGNORE]}]
    batch = Collator(pad_token_id=0, packing=False)(rows)
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [IGNORE, IGNORE, IGNORE]]


def test_flash_varlen_kwargs_match_transformers():
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    rows = [{"input_ids": [1] * 5, "labels": [IGNORE] * 5, "position_ids": [0, 1, 2, 0, 1]},
            {"input_ids": [1] * 2, "labels": [IGNORE] * 2, "position_ids": [0, 1]}]
    batch = Collator(pad_token_id=0, packing=True, flash_varlen_kwargs=True)(rows)
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 7, 10]  # segments 3, 2 | 2, 3 (padding)
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"])
    assert batch["cu_seq_lens_q"].tolist() == cu_q.tolist() == cu_k.tolist() == batch["cu_seq_lens_k"].tolist()
    assert batch["max_length_q"] == batch["max_length_k"] == int(max_q) == int(max_k) == 3
    assert flash_varlen_kwargs(batch["position_ids"])["cu_seq_lens_q"].dtype == torch.int32


def test_packing_stats():
    rows = [{"input_ids": [1] * 8, "labels": [IGNORE] * 3 + [1] * 5}, {"input_ids": [1] * 6, "labels": [1] * 6}]
    stats = packing_stats(rows, 10)
    assert stats == {"rows": 2, "tokens": 14, "label_tokens": 11, "max_length": 10, "packing_efficiency": 0.7,
                     "padding_fraction": 0.3}


# ----------------------------------------------------------------------------------------------------------------------
# The key test: packed logits and loss equal per-sample ones
# ----------------------------------------------------------------------------------------------------------------------


def _packed_batch(max_length=32):
    rng = random.Random(5)
    samples = []
    for n in [11, 7, 18, 4, 9, 13, 6]:
        ids = [rng.randint(2, 127) for _ in range(n)]
        labels = [t if rng.random() < 0.7 else IGNORE for t in ids]  # a labelled first token is never a target
        labels[0], labels[-1] = ids[0], ids[-1]
        samples.append({"input_ids": ids, "labels": labels})
    bins = pack_bfd([len(s["input_ids"]) for s in samples], max_length)
    rows = packed_rows(samples, bins)
    assert len(rows) >= 2 and len({len(r["input_ids"]) for r in rows}) > 1  # several rows, padding in the batch
    where = {}  # sample index -> (row, offset)
    for r, b in enumerate(bins):
        offset = 0
        for i in b:
            where[i] = (r, offset)
            offset += len(samples[i]["input_ids"])
    return samples, where, Collator(pad_token_id=0, packing=True)(rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager", PACKED_SDPA])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_packed_logits_equal_per_sample_logits(tiny_causal_lm, arch, attn):
    model = tiny_causal_lm(arch, attn_implementation=attn)
    samples, where, batch = _packed_batch()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        leaky = model(input_ids=batch["input_ids"]).logits  # negative control: no position_ids, no isolation
        worst, leak = 0.0, 0.0
        for i, s in enumerate(samples):
            row, offset = where[i]
            n = len(s["input_ids"])
            alone = model(input_ids=torch.tensor([s["input_ids"]])).logits[0]
            worst = max(worst, (packed[row, offset: offset + n] - alone).abs().max().item())
            if offset > 0:
                leak = max(leak, (leaky[row, offset: offset + n] - alone).abs().max().item())
    assert worst < 1e-4
    assert leak > 1e-2  # without position_ids the samples attend to each other and the logits change


def test_packing_isolation_needs_use_cache_false(tiny_causal_lm):
    """transformers only derives the per-sample mask from position_ids when there is no KV cache
    (masking_utils._preprocess_mask_arguments): training must run with use_cache=False (Trainer's default and
    train/model.py set it). With a cache the packed samples leak into each other."""
    model = tiny_causal_lm("llama")
    samples, where, batch = _packed_batch()
    i = next(i for i in where if where[i][1] > 0)
    row, offset = where[i]
    n = len(samples[i]["input_ids"])
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([samples[i]["input_ids"]])).logits[0]
        no_cache = model(**batch, use_cache=False).logits[row, offset: offset + n]
        cached = model(**batch, use_cache=True).logits[row, offset: offset + n]
    assert (no_cache - alone).abs().max().item() < 1e-4
    assert (cached - alone).abs().max().item() > 1e-2


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_packed_loss_is_token_weighted_mean_of_sample_losses(tiny_causal_lm, arch):
    model = tiny_causal_lm(arch, attn_implementation="sdpa")
    samples, _, batch = _packed_batch()
    with torch.no_grad():
        packed_loss = model(**batch).loss.item()
        total, count = 0.0, 0
        for s in samples:
            n_targets = sum(1 for x in s["labels"][1:] if x != IGNORE)
            loss = model(input_ids=torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]])).loss.item()
            total += loss * n_targets
            count += n_targets
    assert abs(packed_loss - total / count) < 1e-5


def test_flash_varlen_kwargs_are_harmless_for_sdpa(tiny_causal_lm):
    """The collator's FlashAttention kwargs may reach an sdpa model (e.g. a recipe switched back): same logits."""
    model = tiny_causal_lm("llama", attn_implementation="sdpa")
    _, _, batch = _packed_batch()
    with torch.no_grad():
        plain = model(**batch).logits
        with_fa = model(**batch, **flash_varlen_kwargs(batch["position_ids"])).logits
    assert torch.equal(plain, with_fa)


# ----------------------------------------------------------------------------------------------------------------------
# Attention per sample block ("sdpa_packed", the CPU path for packed rows)
# ----------------------------------------------------------------------------------------------------------------------


def test_sample_blocks_by_hand():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    assert sample_blocks(positions, 2) == [(0, 0, 3), (0, 3, 5), (0, 5, 6), (1, 0, 4), (1, 4, 6)]
    assert sample_blocks(torch.tensor([[5, 6, 7, 2, 3]]), 1) == [(0, 0, 3), (0, 3, 5)]  # a jump, not only a 0
    assert sample_blocks(torch.arange(6)[None], 3) is None  # one sample per row (broadcast position ids)
    assert sample_blocks(torch.arange(4)[None] + 7, 1) is None  # a continuation (e.g. after a cache) is one block


def test_choose_attention_per_backend():
    from transformers import LlamaConfig

    config = LlamaConfig()
    assert choose_attention("sdpa", True, "cpu", config) == PACKED_SDPA
    assert choose_attention("sdpa", False, "cpu", config) == "sdpa"  # padded batches: SDPA as it is
    # GPU: never transformers' dense block mask (tests/test_attention.py has the whole table)
    assert choose_attention("sdpa", True, "cuda", config, "bfloat16", flash_installed=False) == "varlen_packed"
    assert choose_attention("flash_attention_2", True, "cuda", config) == "flash_attention_2"  # varlen kernels
    assert choose_attention("eager", True, "cpu", config) == "eager"


def _mixed_batch():
    """Packed rows with a 1-token sample, a 2-token one and the collator's padding segment."""
    rng = random.Random(11)
    samples = []
    for n in [1, 12, 2, 9, 15, 5, 3]:
        ids = [rng.randint(2, 127) for _ in range(n)]
        samples.append({"input_ids": ids, "labels": [t if rng.random() < 0.6 else IGNORE for t in ids]})
    rows = packed_rows(samples, [[0, 1, 2], [3, 4], [5, 6]])
    return Collator(pad_token_id=0, packing=True, pad_to_multiple_of=8)(rows)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_packed_attention_loss_and_grads_equal_block_mask(tiny_causal_lm, arch):
    """The training computation (label-only loss, backward) through "sdpa_packed" equals transformers' SDPA with its
    block-diagonal mask, in value and in every gradient (fp32, 1e-5)."""
    from train.kernels.fused_loss import label_only_loss

    batch = _mixed_batch()
    n_items = torch.tensor(int((batch["labels"][:, 1:] != IGNORE).sum()))
    results = {}
    for attn in ("sdpa", PACKED_SDPA):
        model = tiny_causal_lm(arch, attn_implementation=attn).train()
        loss = label_only_loss(model, batch, n_items)
        loss.backward()
        results[attn] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert results[PACKED_SDPA][0] == pytest.approx(results["sdpa"][0], abs=1e-5)
    for name, grad in results["sdpa"][1].items():
        assert torch.allclose(results[PACKED_SDPA][1][name], grad, atol=1e-5), name


def test_packed_attention_builds_no_mask_for_packed_rows_and_sdpa_mask_for_padding(tiny_causal_lm):
    from transformers.masking_utils import create_causal_mask

    model = tiny_causal_lm("llama", attn_implementation=PACKED_SDPA)
    batch = _mixed_batch()
    embeds = model.get_input_embeddings()(batch["input_ids"])
    packed = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None,
                                past_key_values=None, position_ids=batch["position_ids"])
    assert packed is None  # no (B, 1, L, L) mask: the attention cuts the rows at the sample boundaries instead
    reference = tiny_causal_lm("llama", attn_implementation="sdpa")
    block = create_causal_mask(config=reference.config, inputs_embeds=embeds, attention_mask=None,
                               past_key_values=None, position_ids=batch["position_ids"])
    assert block is not None and block.shape[-1] == block.shape[-2] == batch["input_ids"].shape[1]  # what sdpa builds

    padding = torch.ones_like(batch["input_ids"])
    padding[1, -5:] = 0
    ours = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=padding, past_key_values=None)
    theirs = create_causal_mask(config=reference.config, inputs_embeds=embeds, attention_mask=padding,
                                past_key_values=None)
    assert ours is not None and torch.equal(ours, theirs)


def test_packed_attention_on_padded_batches_is_plain_sdpa(tiny_causal_lm):
    """Unpacked, right-padded batches (attention_mask) and single sequences go through SDPA unchanged: same logits."""
    rows = [{"input_ids": list(range(3, 3 + n)), "labels": [IGNORE] * n} for n in (9, 4, 6)]
    batch = Collator(pad_token_id=0, packing=False)(rows)
    ours, reference = (tiny_causal_lm("qwen3", attn_implementation=a) for a in (PACKED_SDPA, "sdpa"))
    with torch.no_grad():
        assert torch.equal(ours(**batch).logits, reference(**batch).logits)
        single = torch.tensor([list(range(5, 30))])
        assert torch.equal(ours(input_ids=single).logits, reference(input_ids=single).logits)

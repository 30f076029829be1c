"""Generation and loss of `python -m launch eval`: greedy, batched decoding of templated prompts, the training loss on
the held-out conversations, and a subset of them that covers every eval file."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from train.data import IGNORE_INDEX




def split_prompt(messages: List[Dict[str, str]]):
    """(messages before the last assistant turn, that turn's content): the prompt and the reference."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


@torch.no_grad()
def generate(model, tokenizer, prompts: List[str], max_new_tokens: int = 128, batch_size: int = 8,
             stop_ids: Sequence[Optional[int]] = ()) -> List[str]:
    """Batched greedy decoding of already-templated prompts (left padding); stops at EOS or any of `stop_ids` (the
    template's end-of-turn token, from setup_tokenizer); returns the new text only."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: List[str] = []
    stops = sorted({i for i in (tokenizer.eos_token_id, *stop_ids) if i is not None})
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, use_cache=True)
            new = out[:, batch["input_ids"].shape[1]:]
            outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return [o.strip() for o in outputs]


@torch.no_grad()
def mean_token_loss(model, rows: List[Dict[str, List[int]]], collator, batch_size: int = 8) -> float:
    """Label-token-weighted mean cross-entropy over tokenised rows (the training loss, logits only where a label
    follows)."""
    from train.kernels.fused_loss import label_only_loss

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(model.device) for k, v in collator(rows[start:start + batch_size]).items()}
            total += label_only_loss(model, batch, 1).item()  # divided by 1: the summed token loss
            count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def balanced_subset(groups: Sequence[str], limit: int) -> List[int]:
    """Indices of at most `limit` items taken round-robin across groups (e.g. eval files), keeping each group's order,
    so a limited evaluation still covers every task."""
    if not limit or limit >= len(groups):
        return list(range(len(groups)))
    queues: Dict[str, List[int]] = {}
    for i, g in enumerate(groups):
        queues.setdefault(g, []).append(i)
    chosen: List[int] = []
    while len(chosen) < limit:
        for q in queues.values():
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    return sorted(chosen)



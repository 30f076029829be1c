"""Generation and loss of `python -m launch eval`: greedy, batched decoding of templated prompts (with progress: a bar
with samples/s and ETA in a terminal, one line per batch in a log), the training loss on the held-out conversations,
and a subset of them that covers every eval file."""

from __future__ import annotations

import sys
import time
from typing import Dict, List, Optional, Sequence, TextIO

import torch

from train.data import IGNORE_INDEX


def progress_line(label: str, done: int, total: int, elapsed_s: float) -> str:
    """One log line of generation progress: "fine-tuned: 16/40 samples, 1.92 samples/s, ETA 12s (8.3s so far)"."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = f"ETA {(total - done) / rate:.0f}s" if rate > 0 and done < total else ("done" if done >= total else "ETA ?")
    return f"{label}: {done}/{total} samples, {rate:.2f} samples/s, {eta} ({elapsed_s:.1f}s so far)"


class Progress:
    """Generation progress for one model. In a terminal a tqdm bar (samples done, samples/s, ETA); otherwise (a log
    file, a Slurm job's output) one `progress_line` per batch, so a log shows how far a long evaluation got."""

    def __init__(self, label: str, total: int, stream: Optional[TextIO] = None):
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stdout
        self.started = time.time()
        self.bar = None
        if self.stream.isatty():
            from tqdm.auto import tqdm

            # rate_noinv: always samples/s (tqdm's default turns a rate below 1 into s/sample)
            self.bar = tqdm(total=total, desc=label, unit=" samples", file=self.stream, dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                       "[{elapsed}<{remaining}, {rate_noinv_fmt}]")

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        else:
            print(progress_line(self.label, self.done, self.total, time.time() - self.started), file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def split_prompt(messages: List[Dict[str, str]]):
    """(messages before the last assistant turn, that turn's content): the prompt and the reference."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


@torch.no_grad()
def generate(model, tokenizer, prompts: List[str], max_new_tokens: int = 128, batch_size: int = 8,
             stop_ids: Sequence[Optional[int]] = (), progress: Optional[str] = None,
             stream: Optional[TextIO] = None) -> List[str]:
    """Batched greedy decoding of already-templated prompts (left padding); stops at EOS or any of `stop_ids` (the
    template's end-of-turn token, from setup_tokenizer); returns the new text only. `progress`: a label (the model's
    name) to show progress under, on `stream` (stdout by default)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: List[str] = []
    stops = sorted({i for i in (tokenizer.eos_token_id, *stop_ids) if i is not None})
    was_training = model.training
    model.eval()
    shown = Progress(progress, len(prompts), stream) if progress else None
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, use_cache=True)
            new = out[:, batch["input_ids"].shape[1]:]
            outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
            if shown is not None:
                shown.update(len(new))
    finally:
        if shown is not None:
            shown.close()
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



"""Evaluation: greedy generation on the held-out conversations with the training template, task scores, loss, and a
side-by-side report of the base and the fine-tuned model.

Task scores follow the seeds: keyword lists (seed 001) get precision/recall/F1 over the set of keywords; dict outputs
(seed 002) get a parse rate, is_stock_related accuracy and F1 of the stock lists; every sample gets exact match.
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch



# ----------------------------------------------------------------------------------------------------------------------
# Parsing and task metrics (pure functions)
# ----------------------------------------------------------------------------------------------------------------------


def parse_structured(text: str) -> Optional[Any]:
    """JSON first, then a Python literal (seed 002's answers use True/False); None when neither parses."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").split("\n", 1)[-1] if "\n" in text else text.strip("`")
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def set_f1(predicted: Sequence[str], reference: Sequence[str]) -> Dict[str, float]:
    """Precision, recall and F1 of two sets of strings (whitespace-normalised). Two empty sets score 1."""
    p = {str(x).strip() for x in predicted if str(x).strip()}
    r = {str(x).strip() for x in reference if str(x).strip()}
    if not p and not r:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    hit = len(p & r)
    precision = hit / len(p) if p else 0.0
    recall = hit / len(r) if r else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def score_sample(prediction: str, reference: str) -> Dict[str, Any]:
    """Scores of one prediction against its reference; which task scores apply depends on the reference's shape."""
    scores: Dict[str, Any] = {"exact_match": float(prediction.strip() == reference.strip())}
    ref = parse_structured(reference)
    if isinstance(ref, list):
        pred = parse_structured(prediction)
        scores["task"] = "keywords"
        scores["parsed"] = float(isinstance(pred, list))
        kw = set_f1(pred if isinstance(pred, list) else [], ref)
        scores.update({f"keyword_{k}": v for k, v in kw.items()})
        scores["task_score"] = kw["f1"]
    elif isinstance(ref, dict):
        pred = parse_structured(prediction)
        ok = isinstance(pred, dict)
        scores["task"] = "dict"
        scores["parsed"] = float(ok)
        pred = pred if ok else {}
        fields = [k for k in ref if isinstance(ref[k], (bool, list))]
        per_field = []
        if "is_stock_related" in ref:
            scores["is_stock_related_acc"] = float(ok and pred.get("is_stock_related") == ref["is_stock_related"])
        for key in fields:
            if isinstance(ref[key], list):
                value = pred.get(key)  # a missing list is wrong, not empty; an unparsable answer scores 0 everywhere
                f1 = set_f1(value, ref[key])["f1"] if isinstance(value, list) else 0.0
                scores[f"{key}_f1"] = f1
                per_field.append(f1)
            else:
                per_field.append(float(ok and pred.get(key) == ref[key]))
        scores["field_accuracy"] = sum(per_field) / len(per_field) if per_field else float(ok)
        scores["task_score"] = scores["field_accuracy"]
    else:
        scores["task"] = "text"
        scores["task_score"] = scores["exact_match"]
    return scores


def aggregate(per_sample: List[Dict[str, Any]]) -> Dict[str, float]:
    """Mean of every numeric score over the samples that have it, plus per-task means of task_score."""
    out: Dict[str, float] = {}
    keys = sorted({k for s in per_sample for k, v in s.items() if isinstance(v, (int, float))})
    for k in keys:
        values = [s[k] for s in per_sample if isinstance(s.get(k), (int, float))]
        out[k] = sum(values) / len(values)
    for task in sorted({s.get("task") for s in per_sample}):
        values = [s["task_score"] for s in per_sample if s.get("task") == task]
        out[f"task_score[{task}]"] = sum(values) / len(values)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Generation and loss
# ----------------------------------------------------------------------------------------------------------------------


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
    from train.trainer import label_only_loss

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(model.device) for k, v in collator(rows[start:start + batch_size]).items()}
            total += label_only_loss(model, batch, 1).item()  # divided by 1: the summed token loss
            count += int((batch["labels"][:, 1:] != -100).sum())
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


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def improvement(base: float, tuned: float, lower_is_better: bool = False) -> str:
    if base is None or tuned is None or (isinstance(base, float) and math.isnan(base)):
        return "n/a"
    if base == 0:
        return "n/a" if tuned == 0 else "up from 0"
    change = (base - tuned) / abs(base) if lower_is_better else (tuned - base) / abs(base)
    return f"{100 * change:+.1f}%"


def comparison_table(results: Dict[str, Dict[str, float]]) -> str:
    """Markdown table: one row per metric, one column per model, and the change from the first model to the last."""
    names = list(results)
    metrics = [k for k in results[names[-1]] if all(k in results[n] for n in names)]
    header = "| metric | " + " | ".join(names) + (" | change |" if len(names) > 1 else " |")
    lines = [header, "|" + " --- |" * (len(names) + 1 + (len(names) > 1))]
    for k in metrics:
        values = [results[n][k] for n in names]
        row = f"| {k} | " + " | ".join(f"{v:.4f}" for v in values)
        if len(names) > 1:
            row += f" | {improvement(values[0], values[-1], lower_is_better='loss' in k)}"
        lines.append(row + " |")
    return "\n".join(lines)


def write_eval_report(out_dir: Path, results: Dict[str, Dict[str, float]], predictions: List[Dict[str, Any]],
                      meta: Dict[str, Any]) -> Dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(results)
    paths = {"json": out_dir / "eval_report.json", "md": out_dir / "eval_report.md",
             "predictions": out_dir / "predictions.jsonl"}
    paths["json"].write_text(json.dumps({"meta": meta, "results": results}, ensure_ascii=False, indent=2), encoding="utf-8")
    md = [f"# Evaluation: {meta.get('model')}", "", f"{meta.get('samples')} held-out samples, greedy decoding, "
          f"template `{meta.get('template')}`.", "", table, ""]
    paths["md"].write_text("\n".join(md), encoding="utf-8")
    with open(paths["predictions"], "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return paths

"""Evaluation: greedy generation on the held-out conversations with the training template, scores, loss, and a
side-by-side report of the base and the fine-tuned model (markdown, JSON, per-sample JSONL, a PNG chart, W&B table).

Every sample gets exact match, ROUGE-1/2/L, sentence BLEU and (with an encoder) embedding cosine similarity, on
Korean-aware morpheme tokens (train/metrics.py); the report's BLEU is corpus BLEU over all samples. Task scores follow
the seeds and apply by the reference's shape:
- keyword lists (seed 001): precision/recall/F1 over the set of keywords;
- dict outputs (seed 002): parse rate, is_stock_related accuracy, F1 of each stock list, field accuracy;
- RAFT answers (seed 003, "추론: ...\n\n답변: ..." as train/data/formats.py writes them, or "<ANSWER>: ..." as in the
  RAFT paper): the final answer is the text after the last answer marker (the whole text when there is none);
  `raft_answer_correct` = the reference's final answer, as morpheme tokens without punctuation, appears as a
  contiguous run in the prediction's final answer (so extra words around it, spacing and punctuation do not matter);
  `raft_answer_f1` = F1 of the two answers' morpheme multisets (partial credit, as SQuAD's token F1);
  `raft_answer_marked` = the prediction has an answer marker.
A thinking block (`<think>...</think>`, Qwen3) is removed from prediction and reference before scoring.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from train import metrics as tm
from train.data.formats import ANSWER_LABEL, PASSAGE_LABEL, QUESTION_LABEL

ANSWER_MARKER = re.compile(r"(?:^|\n)[ \t]*(?:" + re.escape(ANSWER_LABEL.strip()) + r"|<ANSWER>:)[ \t]*")
THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)  # an unclosed block (generation cut) runs to the end
# the order of the report's rows; any other score follows in alphabetical order
REPORT_ORDER = ("rouge1_f1", "rouge1_precision", "rouge1_recall", "rouge2_f1", "rougeL_f1", "bleu", "cosine",
                "exact_match", "parsed", "task_score")


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


def strip_thinking(text: str) -> str:
    """The text without its `<think>...</think>` blocks (Qwen3 thinking mode; the empty no-think block too)."""
    return THINK_BLOCK.sub("", text).strip()


def final_answer(text: str) -> Tuple[str, bool]:
    """(the text after the last answer marker, whether there was one); the whole text when there is no marker."""
    found = list(ANSWER_MARKER.finditer(text))
    return (text[found[-1].end():].strip(), True) if found else (text.strip(), False)


def contains_run(tokens: Sequence[str], run: Sequence[str]) -> bool:
    """Whether `run` occurs as a contiguous sub-sequence of `tokens` (an empty run only in empty tokens)."""
    if not run:
        return not tokens
    return any(list(tokens[i:i + len(run)]) == list(run) for i in range(len(tokens) - len(run) + 1))


def raft_answer_scores(prediction: str, reference: str) -> Dict[str, float]:
    """RAFT answer correctness (reference answer contained in the predicted answer, on morpheme tokens), answer token
    F1, and whether the prediction marks its answer."""
    pred_answer, marked = final_answer(prediction)
    ref_answer, _ = final_answer(reference)
    pred_tokens, ref_tokens = tm.tokenize(pred_answer), tm.tokenize(ref_answer)
    overlap = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    f1 = tm.precision_recall_f1(overlap, len(pred_tokens), len(ref_tokens))["f1"]
    return {"raft_answer_correct": float(contains_run(pred_tokens, ref_tokens)), "raft_answer_f1": f1,
            "raft_answer_marked": float(marked)}


def task_of(prompt_messages: List[Dict[str, str]], reference: str) -> str:
    """keywords | dict | raft | text, from the reference's shape, or a RAFT prompt ("[문서 1] ..." passages and a
    "질문: " line, as train/data/formats.py renders raft records)."""
    ref = parse_structured(strip_thinking(reference))
    if isinstance(ref, list):
        return "keywords"
    if isinstance(ref, dict):
        return "dict"
    user = next((m["content"] for m in reversed(prompt_messages) if m["role"] == "user"), "")
    raft_prompt = PASSAGE_LABEL.format(n=1) in user and ("\n" + QUESTION_LABEL) in user
    if raft_prompt or final_answer(strip_thinking(reference))[1]:
        return "raft"
    return "text"


def score_sample(prediction: str, reference: str, task: Optional[str] = None) -> Dict[str, Any]:
    """Scores of one prediction against its reference: exact match, ROUGE, sentence BLEU, and the task's scores
    (task from `task_of`; by default read from the reference's shape)."""
    prediction, reference = strip_thinking(prediction), strip_thinking(reference)
    scores: Dict[str, Any] = {"exact_match": float(prediction.strip() == reference.strip())}
    scores.update(tm.text_scores(tm.tokenize(prediction), tm.tokenize(reference)))
    task = task or task_of([], reference)
    ref = parse_structured(reference) if task in ("keywords", "dict") else None
    if task == "raft":
        scores["task"] = "raft"
        scores.update(raft_answer_scores(prediction, reference))
        scores["task_score"] = scores["raft_answer_correct"]
    elif isinstance(ref, list):
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
    """Mean of every numeric score over the samples that have it, plus per-task means of task_score. Per-sample-only
    scores (sentence_bleu: the report shows corpus BLEU instead) are left out."""
    out: Dict[str, float] = {}
    keys = sorted({k for s in per_sample for k, v in s.items()
                   if isinstance(v, (int, float)) and not k.startswith("sentence_")})
    for k in keys:
        values = [s[k] for s in per_sample if isinstance(s.get(k), (int, float))]
        out[k] = sum(values) / len(values)
    for task in sorted({s.get("task") for s in per_sample}):
        values = [s["task_score"] for s in per_sample if s.get("task") == task]
        out[f"task_score[{task}]"] = sum(values) / len(values)
    return out


def score_all(predictions: Sequence[str], references: Sequence[str], tasks: Optional[Sequence[str]] = None,
              encoder: Optional["tm.SentenceEncoder"] = None) -> Tuple[List[Dict[str, Any]], Dict[str, float]]:
    """(per-sample scores, report metrics): score_sample for each pair, the encoder's cosine per sample when given,
    their means (aggregate), and corpus BLEU over all samples; metrics in REPORT_ORDER first."""
    tasks = list(tasks) if tasks is not None else [None] * len(predictions)
    per_sample = [score_sample(p, r, t) for p, r, t in zip(predictions, references, tasks)]
    preds = [strip_thinking(p) for p in predictions]
    refs = [strip_thinking(r) for r in references]
    if encoder is not None:
        for s, c in zip(per_sample, encoder.similarities(preds, refs)):
            s["cosine"] = c
    metrics = aggregate(per_sample)
    metrics["bleu"] = tm.corpus_bleu([tm.tokenize(p) for p in preds], [tm.tokenize(r) for r in refs])
    ordered = {k: metrics[k] for k in REPORT_ORDER if k in metrics}
    ordered.update({k: metrics[k] for k in sorted(metrics) if k not in ordered})
    return per_sample, ordered


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


def plot_comparison(results: Dict[str, Dict[str, float]], png_path: Path) -> Path:
    """Grouped bars, one group per metric and one bar per model: scores in [0, 1] on the left, eval loss (lower is
    better) on its own axis on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    shared = [k for k in results[names[-1]] if all(k in results[n] for n in names)]
    scores = [k for k in shared if "loss" not in k]
    losses = [k for k in shared if "loss" in k]
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 0.55 * len(scores) + 3), 4.2), dpi=110,
                             gridspec_kw={"width_ratios": [max(len(scores), 1), max(len(losses), 1) + 0.6]})
    width = 0.8 / len(names)
    for ax, keys in ((axes[0], scores), (axes[1], losses)):
        for i, name in enumerate(names):
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(keys))]
            ax.bar(xs, [results[name][k] for k in keys], width, label=name)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=60, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1.05)
    axes[0].set_ylabel("score (higher is better)")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("loss per label token (lower is better)")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)


METRIC_NOTES = """Scores are means over the samples, in [0, 1], except BLEU (corpus BLEU over all samples, also in [0, 1];
x100 for the usual 0-100 scale). Text is split into Korean morphemes with Kiwi (particles and endings apart from their
stems, Latin words lowercased, punctuation dropped) before ROUGE (F1 of clipped n-gram matches; ROUGE-L from the
longest common subsequence) and BLEU (clipped 1-4-gram precisions, brevity penalty, "exp" smoothing). `cosine` is the
embedding cosine similarity of prediction and reference. `change` is relative to the first model (for the loss, a
drop is a gain). See train/metrics.py and train/evaluate.py for the exact definitions."""


def write_eval_report(out_dir: Path, results: Dict[str, Dict[str, float]], predictions: List[Dict[str, Any]],
                      meta: Dict[str, Any]) -> Dict[str, Path]:
    """eval_report.json (meta + results), eval_report.md (the table, notes, warnings), predictions.jsonl (one line
    per sample: reference, each model's answer and scores) and eval_chart.png into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = comparison_table(results)
    paths = {"json": out_dir / "eval_report.json", "md": out_dir / "eval_report.md",
             "predictions": out_dir / "predictions.jsonl", "chart": out_dir / "eval_chart.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "results": results}, ensure_ascii=False, indent=2), encoding="utf-8")
    md = [f"# Evaluation: {meta.get('model')}", "", f"{meta.get('samples')} held-out samples, greedy decoding, "
          f"template `{meta.get('template')}`, cosine encoder `{meta.get('embedding_model')}`.", "", table, "",
          METRIC_NOTES, ""]
    md += [f"**Warning:** {w}\n" for w in meta.get("warnings", [])]
    md += ["![base vs fine-tuned](eval_chart.png)", ""]
    paths["md"].write_text("\n".join(md), encoding="utf-8")
    with open(paths["predictions"], "w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    plot_comparison(results, paths["chart"])
    return paths


def log_to_wandb(cfg, results: Dict[str, Dict[str, float]], predictions: List[Dict[str, Any]],
                 paths: Dict[str, Path], meta: Dict[str, Any]) -> Optional[Path]:
    """When tracking is on (tracking.wandb_mode online|offline): one W&B run (job_type eval, in output_dir/wandb, in
    the training run's group) with the comparison and the per-sample answers as tables, the chart, and each model's
    metrics in the summary. The config is logged redacted; nothing from the environment. Returns the run's folder."""
    if cfg.tracking.wandb_mode == "disabled":
        return None
    import wandb

    from train.config import redact, to_dict

    out = Path(cfg.output_dir)
    id_file = out / "wandb_run_id.txt"  # written by train/sft.py: the eval run joins the training run's group
    group = id_file.read_text().strip() if id_file.exists() else None
    run = wandb.init(mode=cfg.tracking.wandb_mode, project=cfg.tracking.project, entity=cfg.tracking.entity,
                     name=f"{cfg.tracking.run_name or out.name}-eval", job_type="eval", group=group, dir=str(out),
                     tags=list(cfg.tracking.tags), config={"recipe": redact(to_dict(cfg)), "eval": meta},
                     reinit="finish_previous")
    try:
        names = list(results)
        metrics = [k for k in results[names[-1]] if all(k in results[n] for n in names)]
        rows = [[k, *[results[n][k] for n in names],
                 improvement(results[names[0]][k], results[names[-1]][k], "loss" in k) if len(names) > 1 else ""]
                for k in metrics]
        comparison = wandb.Table(columns=["metric", *names, "change"], data=rows)
        score_keys = sorted({k for p in predictions for n in names for k, v in p.get(f"{n}_scores", {}).items()
                             if isinstance(v, (int, float))})
        sample_rows = [[p["reference"], *[p.get(n, "") for n in names],
                        *[p.get(f"{n}_scores", {}).get(k) for n in names for k in score_keys]] for p in predictions]
        samples = wandb.Table(columns=["reference", *names, *[f"{n}/{k}" for n in names for k in score_keys]],
                              data=sample_rows)
        run.log({"eval/comparison": comparison, "eval/predictions": samples,
                 "eval/chart": wandb.Image(str(paths["chart"]))})
        run.summary.update({f"{n}/{k}": v for n in names for k, v in results[n].items()})
        return Path(run.dir).parent
    finally:
        run.finish()

"""The evaluation's scores, pure functions of (prediction, reference) text.

Every sample gets exact match, ROUGE-1/2/L, sentence BLEU and (with an encoder) embedding cosine similarity, on
Korean-aware morpheme tokens (train/eval/metrics.py); the report's BLEU is corpus BLEU over all samples. Task scores follow
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
import re
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple

from train.eval import metrics as tm
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

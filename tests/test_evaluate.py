"""Evaluation scores against hand-computed values, and `python -m launch eval` end to end on a tiny trained model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train import evaluate as ev

REPO = Path(__file__).resolve().parent.parent


def test_parse_structured_json_and_python_literals():
    assert ev.parse_structured('["진통", "해열"]') == ["진통", "해열"]
    assert ev.parse_structured('{"is_stock_related": True, "summary": ""}') == {"is_stock_related": True, "summary": ""}
    assert ev.parse_structured('```json\n{"a": 1}\n```') == {"a": 1}
    assert ev.parse_structured("진통, 해열") is None


def test_set_f1_by_hand():
    # predicted {진통, 해열, 파스}, reference {진통, 파스, 임산부, 노인}: 2 hits → P 2/3, R 2/4, F1 = 2PR/(P+R) = 4/7
    s = ev.set_f1(["진통", "해열", "파스"], ["진통", "파스", "임산부", "노인"])
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(0.5)
    assert s["f1"] == pytest.approx(4 / 7)
    assert ev.set_f1([], []) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert ev.set_f1(["a"], [])["f1"] == 0.0


def test_score_keywords_and_dict_samples():
    kw = ev.score_sample('["진통", "해열"]', '["진통", "소염"]')
    assert kw["task"] == "keywords" and kw["parsed"] == 1.0 and kw["keyword_f1"] == pytest.approx(0.5)
    bad = ev.score_sample("진통과 해열입니다", '["진통", "소염"]')
    assert bad["parsed"] == 0.0 and bad["task_score"] == 0.0

    ref = '{"is_stock_related": true, "positive_impact_stocks": ["한결전자"], "negative_impact_stocks": []}'
    good = ev.score_sample('{"is_stock_related": true, "positive_impact_stocks": ["한결전자", "다온바이오"], '
                           '"negative_impact_stocks": []}', ref)
    # fields: is_stock_related 1, positive F1 = 2*(1/2*1)/(1/2+1) = 2/3, negative (both empty) 1 → mean 8/9
    assert good["is_stock_related_acc"] == 1.0 and good["positive_impact_stocks_f1"] == pytest.approx(2 / 3)
    assert good["field_accuracy"] == pytest.approx((1 + 2 / 3 + 1) / 3) == good["task_score"]
    wrong = ev.score_sample('{"is_stock_related": false, "summary": "날씨"}', ref)
    assert wrong["is_stock_related_acc"] == 0.0 and wrong["task_score"] == 0.0  # missing lists are wrong, not empty
    partial = ev.score_sample('{"is_stock_related": true, "positive_impact_stocks": []}', ref)
    assert partial["field_accuracy"] == pytest.approx(1 / 3)  # right flag; positive list wrong; negative missing
    unparsable = ev.score_sample('{"is_stock_related": tru', ref)
    assert unparsable["parsed"] == 0.0 and unparsable["task_score"] == 0.0
    assert unparsable["field_accuracy"] == unparsable["negative_impact_stocks_f1"] == 0.0  # no credit for garbage


def test_aggregate_and_table():
    per = [ev.score_sample('["a"]', '["a"]'), ev.score_sample('["b"]', '["a"]')]
    agg = ev.aggregate(per)
    assert agg["keyword_f1"] == 0.5 and agg["task_score[keywords]"] == 0.5 and agg["exact_match"] == 0.5
    table = ev.comparison_table({"base": {"task_score": 0.2, "eval_loss": 2.0},
                                 "fine-tuned": {"task_score": 0.5, "eval_loss": 1.5}})
    assert "| task_score | 0.2000 | 0.5000 | +150.0% |" in table
    assert "| eval_loss | 2.0000 | 1.5000 | +25.0% |" in table  # lower loss is an improvement


def test_balanced_subset_covers_every_group_in_order():
    groups = ["k"] * 5 + ["f"] * 5
    assert ev.balanced_subset(groups, 4) == [0, 1, 5, 6]
    assert ev.balanced_subset(groups, 0) == list(range(10))
    assert ev.balanced_subset(["a", "a", "b"], 2) == [0, 2]


@pytest.mark.slow
def test_eval_command_compares_base_and_fine_tuned(tmp_path):
    """Train the tiny model a few steps, then `launch eval --base`: a side-by-side report with both models."""
    from tests.tiny_model import CONVERSATIONS, build_tiny_model_dir

    import yaml

    model_dir = build_tiny_model_dir(tmp_path / "tiny")
    data = tmp_path / "train.jsonl"
    held = tmp_path / "held.jsonl"
    for path, n, tag in [(data, 24, "학습"), (held, 4, "평가")]:
        with open(path, "w", encoding="utf-8") as f:
            for i in range(n):
                user, answer = CONVERSATIONS[i % len(CONVERSATIONS)]
                f.write(json.dumps({"messages": [{"role": "user", "content": f"{tag} {i}: {user}"},
                                                 {"role": "assistant", "content": answer}]}, ensure_ascii=False) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(model_dir), "dtype": "float32"}, "method": "lora",
        "data": {"sources": [{"path": str(data)}], "eval_sources": [{"path": str(held)}], "max_length": 128,
                 "cache_dir": str(tmp_path / "cache")},
        "train": {"max_steps": 8, "learning_rate": 1e-2, "per_device_batch_size": 4, "save_steps": 100,
                  "logging_steps": 4},
        "output_dir": str(tmp_path / "out")}, allow_unicode=True), encoding="utf-8")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=REPO, env=env, capture_output=True, text=True)  # noqa
    assert run("train/sft.py", "--config", str(recipe)).returncode == 0
    res = run("-m", "launch", "eval", "--config", str(recipe), "--base", "--max-new-tokens", "8")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "eval" / "eval_report.json").read_text(encoding="utf-8"))
    assert set(report["results"]) == {"base", "fine-tuned"} and report["meta"]["samples"] == 4
    base, tuned = report["results"]["base"], report["results"]["fine-tuned"]
    assert tuned["eval_loss"] < base["eval_loss"]  # the adapter learned the held-out answers' format
    predictions = (tmp_path / "out" / "eval" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 4 and {"base", "fine-tuned", "reference"} <= set(json.loads(predictions[0]))
    assert "| eval_loss |" in res.stdout

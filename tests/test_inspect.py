"""`python -m launch inspect`: rendered samples with the trained tokens marked, token counts, why samples are dropped,
and the warning for template tokens the tokenizer lacks. With the real Qwen3, Llama-3 and Gemma tokenizers."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
import yaml

from launch import assets
from launch.__main__ import main
from train.config import load_config
from train.data import IGNORE_INDEX
from train.data.inspect import CLOSE, GREEN, OPEN, inspect_recipe, marked, runs, untrained_token_warning
from train.data.labels import tokenize_conversation
from train.data.templates import render, setup_tokenizer

FOLDERS = {"qwen3": assets.qwen3_tokenizer, "llama3": assets.llama3_tokenizer, "gemma": assets.gemma_tokenizer}
# the end-of-turn token each template writes after an assistant reply: trained with it
END_OF_TURN = {"qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}

CONVERSATION = [  # seed 004's system prompt, two turns; the first reply is a JSON list (brackets inside the reply)
    {"role": "system", "content": "당신은 금융,법률 및 M&A 분야 전문가입니다.\n사용자 질문에 대해 반드시 한국어로만 답변하세요."},
    {"role": "user", "content": "다음 문장에서 키워드를 JSON 배열로 추출하세요: 합병 비율은 주가로 정합니다."},
    {"role": "assistant", "content": '["합병 비율", "주가"]'},
    {"role": "user", "content": "합병 비율은 어떻게 정하나요?"},
    {"role": "assistant", "content": "상장회사의 합병 비율은 자본시장법 시행령에 따라 최근 주가를 가중평균해 정합니다."},
]
BRACKETED = re.compile(re.escape(OPEN) + "(.*?)" + re.escape(CLOSE), re.S)


def recipe(tmp_path: Path, name: str, records, **data) -> Path:
    source = tmp_path / "train.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    raw = {"model": {"name_or_path": str(FOLDERS[name]())},
           "data": {"sources": [{"path": str(source), "format": "messages"}], "template": name, "max_length": 256,
                    "cache_dir": str(tmp_path / "cache"), **data},
           "output_dir": str(tmp_path / "out")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def loaded(path: Path, load_tokenizer, name: str, *overrides):
    cfg = load_config(str(path), list(overrides))
    tokenizer = load_tokenizer(name)
    return cfg, tokenizer, setup_tokenizer(tokenizer, cfg.data)


@pytest.mark.parametrize("name", ["qwen3", "llama3", "gemma"])
def test_bracketed_spans_are_the_labelled_tokens(tmp_path, load_tokenizer, name):
    """What inspect shows between ⟦ ⟧ is, turn by turn, the decoding of the tokens whose label is not -100 (computed
    here by the training's own labelling, decoded in one call), and exactly each assistant reply plus its end-of-turn
    token; without the marks the output is the rendered conversation, so nothing is hidden or added."""
    cfg, tokenizer, changes = loaded(recipe(tmp_path, name, [{"messages": CONVERSATION}]), load_tokenizer, name)
    out = io.StringIO()
    views = inspect_recipe(cfg, tokenizer, changes, n=1, out=out, report=False)
    text = out.getvalue()
    body = text[text.index("── sample 0"):]  # the legend above names the marks
    shown = BRACKETED.findall(body)

    sample = tokenize_conversation(tokenizer, CONVERSATION, cfg.data)
    labelled = [i for i, label in zip(sample["input_ids"], sample["labels"]) if label != IGNORE_INDEX]
    assert "".join(shown) == tokenizer.decode(labelled, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert shown == [reply + END_OF_TURN[name] for reply in replies]  # the header and think block are prompt

    rendered = render(tokenizer, CONVERSATION, cfg.data)
    assert body.split("\n", 1)[1].replace(OPEN, "").replace(CLOSE, "").startswith(rendered)
    view = views[0]
    assert view.tokens == len(sample["input_ids"]) and view.trained_tokens == len(labelled)
    assert f"{view.tokens} tokens, {view.trained_tokens} trained" in text


def test_colour_only_marks_the_trained_runs():
    segments = [("<|im_start|>user\n질문<|im_end|>\n<|im_start|>assistant\n", False), ("답변<|im_end|>", True),
                ("\n", False)]
    coloured = marked(segments, color=True)
    assert coloured.count(GREEN) == 1 and f"{GREEN}답변<|im_end|>" in coloured and OPEN not in coloured
    assert marked(segments) == "<|im_start|>user\n질문<|im_end|>\n<|im_start|>assistant\n⟦답변<|im_end|>⟧\n"
    assert runs([IGNORE_INDEX, IGNORE_INDEX, 5, 6, IGNORE_INDEX, 7]) == [(0, 2, False), (2, 4, True), (4, 5, False),
                                                                       (5, 6, True)]


def test_the_command_prints_plain_marks_and_why_samples_are_dropped(tmp_path, capsys):
    """Through `python -m launch inspect` (stdout is not a terminal here: brackets, no colour): a record that ends on
    a user turn, an overlong sample and a duplicate are each named with the reason, per sample and for the whole
    data from the preparation's report."""
    long_answer = "합병 비율은 자본시장법 시행령에 따라 정합니다. " * 40
    records = [{"messages": CONVERSATION},
               {"messages": [{"role": "user", "content": "질문만 있고 답이 없습니다."}]},
               {"messages": [{"role": "user", "content": "긴 답변을 주세요."},
                             {"role": "assistant", "content": long_answer}]},
               {"messages": CONVERSATION}]
    path = recipe(tmp_path, "qwen3", records, on_error="skip", overlong="drop", validation_split=0.0)
    assert main(["inspect", "--config", str(path), "--n", "4"]) == 0
    text = capsys.readouterr().out
    assert "\033[" not in text and OPEN in text
    assert re.search(r"sample 1 .*train\.jsonl:2.*\ndropped: .*user", text)
    assert re.search(r"sample 2 .*train\.jsonl:3.*\nnote: longer than data.max_length \(\d+ > 256 tokens\): dropped",
                     text)
    assert re.search(r"sample 3 .*\nnote: an exact duplicate of sample 0: removed \(data.dedup=exact\)", text)
    assert "rejected: 1 record(s)" in text and "train.jsonl:2" in text.split("whole dataset")[1]
    assert "duplicates removed (exact): 1 exact" in text
    assert re.search(r"longer than data.max_length \(256\): 1 sample\(s\), data.overlong=drop: 1 dropped", text)

    assert main(["inspect", "--config", str(path), "--index", "3"]) == 0
    one = capsys.readouterr().out
    assert "sample 3 " in one and "sample 0 " not in one
    assert main(["inspect", "--config", str(path), "--index", "9"]) == 2
    assert "--index 9: data.sources hold 4 record(s)" in capsys.readouterr().err


def test_warns_when_the_template_adds_tokens_the_tokenizer_lacks(tmp_path, load_tokenizer):
    """ChatML on the Llama-3 tokenizer adds <|im_start|> and <|im_end|>: new, untrained embeddings, said before the
    samples; the model's own template adds nothing and warns of nothing."""
    path = recipe(tmp_path, "llama3", [{"messages": CONVERSATION}])
    cfg, tokenizer, changes = loaded(path, load_tokenizer, "llama3", "data.template=chatml")
    warning = untrained_token_warning(changes, cfg)
    assert warning and "<|im_start|>, <|im_end|>" in warning and "lora.modules_to_save" in warning
    out = io.StringIO()
    inspect_recipe(cfg, tokenizer, changes, n=1, out=out, report=False)
    assert out.getvalue().startswith(f"warning: {warning}")

    cfg, tokenizer, changes = loaded(path, load_tokenizer, "llama3")
    assert untrained_token_warning(changes, cfg) is None
    cfg, tokenizer, changes = loaded(path, load_tokenizer, "llama3", "data.template=chatml",
                                     "lora.modules_to_save=[embed_tokens,lm_head]")
    assert "they are trained with the model" in untrained_token_warning(changes, cfg)


def test_samples_held_out_or_removed_as_duplicates_are_named(tmp_path):
    """The split decides by a hash of the text (quality.split_train_eval): a share of 0.99 holds nearly every sample
    out, 0 none; an exact duplicate of an earlier sample is removed unless data.dedup=none."""
    from train.data.inspect import placement_note
    from train.data.prepare import _digest

    path = recipe(tmp_path, "qwen3", [{"messages": CONVERSATION}])
    digest = _digest(CONVERSATION)
    held = load_config(str(path), ["data.validation_split=0.99"])
    assert "held out for evaluation (data.validation_split=0.99)" in placement_note(digest, held.data, 0, None)
    kept = load_config(str(path), ["data.validation_split=0"])
    assert placement_note(digest, kept.data, 0, None) is None
    assert placement_note(digest, kept.data, 0, 4) == "an exact duplicate of sample 4: removed (data.dedup=exact)"
    assert placement_note(digest, load_config(str(path), ["data.validation_split=0", "data.dedup=none"]).data, 0,
                          4) is None

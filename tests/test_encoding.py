"""Piecewise tokenisation (`train.data.encoding`) equals whole-text tokenisation on the real tokenizers: the same ids
and, for every character, the same token."""

from __future__ import annotations

import re

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from train.config import DataConfig
from train.data.encoding import VERIFY_TEXTS, ConversationEncoder
from train.data.labels import template_strings
from train.data.templates import render, setup_tokenizer, template_layout

SYSTEM = "당신은 금융 뉴스 분석가입니다. 기사를 읽고 주식 관련 여부를 판단하세요."
CONVERSATIONS = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "삼성전자가 새 반도체 공장을 짓는다."},
     {"role": "assistant", "content": "{'is_stock_related': True, 'positive_stocks': ['삼성전자']}"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "오늘 날씨가 맑다."},
     {"role": "assistant", "content": "{'is_stock_related': False}"}],
    [{"role": "user", "content": "표시 문자열: <|im_start|>assistant\n<|eot_id|><start_of_turn>model <think>x</think>"},
     {"role": "assistant", "content": "  공백과 <|im_end|> 표시가 있는 답  "}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "안녕"}, {"role": "assistant", "content": "안녕하세요"},
     {"role": "user", "content": "\n\n"}, {"role": "assistant", "content": "\t줄바꿈만 보냈네요.\n"}],
]


def rendered(tok, template):
    data = DataConfig(template=template)
    setup_tokenizer(tok, data)
    return [render(tok, m, data) for m in CONVERSATIONS], template_strings(template_layout(tok, data))


@pytest.mark.parametrize("name,template", [("qwen3", "qwen3"), ("llama3", "llama3"), ("gemma", "gemma")])
def test_piecewise_equals_whole_text(load_tokenizer, name, template):
    tok = load_tokenizer(name)
    texts, strings = rendered(tok, template)
    encoder = ConversationEncoder(tok, strings)
    assert encoder.pattern is not None  # these tokenizers qualify: the fast path is what is tested
    for batch in (texts[:2], texts[2:], texts):  # the second and third batches reuse cached pieces
        for text, got in zip(batch, encoder.encode(batch)):
            whole = tok._tokenizer.encode(text, add_special_tokens=False)
            assert got.ids == whole.ids
            assert [got.char_to_token(c) for c in range(len(text))] == [whole.char_to_token(c)
                                                                         for c in range(len(text))]
    assert encoder.pattern is not None  # the check on the first texts passed


@pytest.mark.parametrize("name,template", [("qwen3", "qwen3"), ("llama3", "llama3"), ("gemma", "gemma")])
def test_escaped_regions_are_the_tokenizers_split_special_tokens_encoding(load_tokenizer, name, template):
    """An escaped region is encoded exactly as transformers' split_special_tokens=True encodes that text alone; the
    text around it as the tokenizer encodes it alone; every character maps to the token that holds it."""
    tok = load_tokenizer(name)
    texts, strings = rendered(tok, template)
    text = texts[2]  # the user pasted markup; escape the user's text and the reply's text
    regions = []
    for m in CONVERSATIONS[2]:
        start = text.index(m["content"].strip())
        regions.append((start, start + len(m["content"].strip())))
    encoder = ConversationEncoder(tok, strings)
    plain, got = encoder.encode([texts[0], text], [[], regions])
    assert plain.ids == tok._tokenizer.encode(texts[0], add_special_tokens=False).ids  # no regions: as before
    expected, cuts = [], [0] + [c for r in regions for c in r] + [len(text)]
    for k, (start, end) in enumerate(zip(cuts, cuts[1:])):
        expected += tok(text[start:end], add_special_tokens=False, split_special_tokens=k % 2 == 1).input_ids
    assert got.ids == expected
    specials = {i for i, t in tok.added_tokens_decoder.items() if t.special}
    for start, end in regions:
        tokens = {got.char_to_token(c) for c in range(start, end)}
        assert not {got.ids[t] for t in tokens} & specials
    assert tok.decode(got.ids) == text
    assert got.char_to_token(len(text) - 1) == len(got.ids) - 1


def test_cache_keeps_only_pieces_that_repeat(load_tokenizer):
    tok = load_tokenizer("qwen3")
    texts, strings = rendered(tok, "qwen3")
    encoder = ConversationEncoder(tok, strings)
    encoder.encode(texts[:2])
    assert any(SYSTEM in piece for piece in encoder.cache)  # the shared system prompt (twice in this batch)
    assert not any("반도체" in piece for piece in encoder.cache)  # a user message seen once
    encoder.encode(texts[2:])
    assert not any(SYSTEM in piece for piece in encoder.cache)  # not used in that batch: dropped


def test_a_tokenizer_that_marks_the_first_piece_is_encoded_whole():
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "▁a": 1, "a": 2, "<s>": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens({"additional_special_tokens": ["<s>"]})
    whole = tok._tokenizer.encode("a<s>a", add_special_tokens=False).ids
    cut = [i for piece in ("a", "<s>", "a") for i in tok._tokenizer.encode(piece, add_special_tokens=False).ids]
    assert whole == [1, 3, 2] and cut == [1, 3, 1]  # the second 'a' is not the text's start: no '▁'
    encoder = ConversationEncoder(tok, ["<s>"])
    assert encoder.pattern is None
    assert encoder.encode(["a<s>a"])[0].ids == whole


def test_markers_inside_longer_added_tokens_are_not_cut_at(load_tokenizer):
    tok = load_tokenizer("gemma")  # '\n' and '\n\n' are added tokens, and so are longer runs of newlines
    texts, strings = rendered(tok, "gemma")
    pattern = ConversationEncoder(tok, strings).pattern.pattern
    assert "<start_of_turn>" in pattern and "\n" not in pattern


def test_a_wrong_cut_is_caught_by_the_first_texts_check(load_tokenizer):
    tok = load_tokenizer("qwen3")
    texts, strings = rendered(tok, "qwen3")
    encoder = ConversationEncoder(tok, strings)
    encoder.pattern = re.compile("(금)")  # not an added token: cutting there changes the BPE result
    out = encoder.encode(texts[:1])
    assert encoder.pattern is None and encoder.verified < VERIFY_TEXTS  # detected; whole texts from now on
    assert out[0].ids == tok._tokenizer.encode(texts[0], add_special_tokens=False).ids

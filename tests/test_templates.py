"""Chat templates: built-in copies render like the real tokenizers' own templates and in the known literal layouts;
tokenizer setup gives a pad distinct from eos, single-token markers and domain tokens; inference prompts are the
exact token prefix of the training text."""

from __future__ import annotations

import pytest

from train.config import DataConfig
from train.data.templates import (NAMED_TEMPLATES, TemplateError, choose_template, generation_prompt, render,
                                  setup_tokenizer, template_layout)

SYSTEM_004 = "당신은 금융,법률 및 M&A 분야 전문가입니다.\n사용자 질문에 대해 반드시 한국어로만 답변하세요."

CONVERSATIONS = [
    [{"role": "user", "content": "한국의 수도는 어디인가요?"}, {"role": "assistant", "content": "서울입니다."}],
    [{"role": "system", "content": SYSTEM_004}, {"role": "user", "content": "합병 절차를 알려 주세요./no_think"},
     {"role": "assistant", "content": "  이사회 결의 후 주주총회 특별결의가 필요합니다.\n"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "첫 질문"}, {"role": "assistant", "content": "첫 답"},
     {"role": "user", "content": "둘째 질문"},
     {"role": "assistant", "content": "<think>\n생각해 보면\n</think>\n\n둘째 답"}],
]


def data(**kw) -> DataConfig:
    return DataConfig(**kw)


@pytest.fixture()
def shared(qwen3_tokenizer, llama3_tokenizer, gemma_tokenizer):
    """The session tokenizers by name, for tests that do not change them."""
    return {"qwen3": qwen3_tokenizer, "llama3": llama3_tokenizer, "gemma": gemma_tokenizer}


# ----------------------------------------------------------------------------------------------------------------------
# Built-in templates
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3", "llama3", "gemma"])
@pytest.mark.parametrize("thinking", [False, True])
def test_builtin_template_renders_like_the_real_tokenizer(shared, name, thinking):
    tok = shared[name]
    own = tok.chat_template
    for messages in CONVERSATIONS:
        if name == "gemma" and messages[0]["role"] == "system" and not messages[0]["content"]:
            continue  # same output, but keep the loop simple: Gemma folds the system prompt into the first turn
        for gen in (False, True):
            msgs = messages[:-1] if gen else messages
            kw = dict(tokenize=False, add_generation_prompt=gen, enable_thinking=thinking)
            expected = tok.apply_chat_template(msgs, chat_template=own, **kw)
            got = tok.apply_chat_template(msgs, chat_template=NAMED_TEMPLATES[name], **kw)
            assert got == expected


def test_llama3_literal_layout(load_tokenizer):
    tok = load_tokenizer("llama3")
    tok.chat_template = NAMED_TEMPLATES["llama3"]
    text = render(tok, CONVERSATIONS[1], data())
    assert text == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + SYSTEM_004 + "<|eot_id|>"
                    "<|start_header_id|>user<|end_header_id|>\n\n합병 절차를 알려 주세요./no_think<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n이사회 결의 후 주주총회 특별결의가 필요합니다.<|eot_id|>")
    prompt = generation_prompt(tok, CONVERSATIONS[1], data())
    assert prompt.endswith("/no_think<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_qwen3_no_think_layout_is_seed_004(load_tokenizer):
    """Seed 004: system, user question, then the assistant turn opens with an empty think block."""
    tok = load_tokenizer("qwen3")
    tok.chat_template = NAMED_TEMPLATES["qwen3"]
    messages = [{"role": "system", "content": SYSTEM_004}, {"role": "user", "content": "공개매수란?/no_think"},
                {"role": "assistant", "content": "공개매수는 불특정 다수에게 주식을 사들이는 방법입니다."}]
    text = render(tok, messages, data(enable_thinking=False))
    assert text == ("<|im_start|>system\n" + SYSTEM_004 + "<|im_end|>\n<|im_start|>user\n공개매수란?/no_think<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\n공개매수는 불특정 다수에게 주식을 사들이는 방법입니다.<|im_end|>\n")
    no_think = generation_prompt(tok, messages, data(enable_thinking=False))
    think = generation_prompt(tok, messages, data(enable_thinking=True))
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert think.endswith("/no_think<|im_end|>\n<|im_start|>assistant\n")


def test_chatml_gemma_exaone_literal_layouts(qwen3_tokenizer):
    tok = qwen3_tokenizer
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "질문"}, {"role": "assistant", "content": "답"}]

    def with_template(name, messages, **kw):
        return tok.apply_chat_template(messages, chat_template=NAMED_TEMPLATES[name], tokenize=False, **kw)

    assert with_template("chatml", msgs) == ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n질문<|im_end|>\n"
                                             "<|im_start|>assistant\n답<|im_end|>\n")
    assert with_template("chatml", msgs[:2], add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    assert with_template("gemma", msgs, bos_token="<bos>") == (
        "<bos><start_of_turn>user\nS\n\n질문<end_of_turn>\n<start_of_turn>model\n답<end_of_turn>\n")
    assert with_template("gemma", msgs[:2], bos_token="<bos>", add_generation_prompt=True).endswith(
        "<end_of_turn>\n<start_of_turn>model\n")
    assert with_template("exaone", msgs) == "[|system|]S[|endofturn|]\n[|user|]질문\n[|assistant|]답[|endofturn|]\n"
    assert with_template("exaone", msgs[1:]) == "[|system|][|endofturn|]\n[|user|]질문\n[|assistant|]답[|endofturn|]\n"
    assert with_template("exaone", msgs[:2], add_generation_prompt=True).endswith("[|user|]질문\n[|assistant|]")


@pytest.mark.parametrize("name,end_of_turn,header", [
    ("llama3", "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("qwen3", "<|im_end|>", "<|im_start|>assistant\n"),
    ("gemma", "<end_of_turn>", "<start_of_turn>model\n"),
    ("exaone", "[|endofturn|]", "[|assistant|]"),
    ("chatml", "<|im_end|>", "<|im_start|>assistant\n"),
])
def test_layout_probe_finds_header_and_end_of_turn(load_tokenizer, name, end_of_turn, header):
    tok = load_tokenizer("llama3")
    setup_tokenizer(tok, data(template=name))
    layout = template_layout(tok, data(template=name))
    assert layout.assistant_header == header
    assert layout.end_of_turn == end_of_turn
    assert tok.convert_ids_to_tokens(layout.end_of_turn_id) == end_of_turn


# ----------------------------------------------------------------------------------------------------------------------
# Template choice
# ----------------------------------------------------------------------------------------------------------------------


def test_template_choice(qwen3_tokenizer, bpe_tokenizer):
    tok = qwen3_tokenizer
    own = tok.chat_template
    assert choose_template(tok, "auto") == ("tokenizer", own)
    assert choose_template(tok, "tokenizer") == ("tokenizer", own)
    assert choose_template(tok, "gemma") == ("gemma", NAMED_TEMPLATES["gemma"])
    bpe_tokenizer.chat_template = None
    assert choose_template(bpe_tokenizer, "auto") == ("chatml", NAMED_TEMPLATES["chatml"])
    with pytest.raises(TemplateError, match="has no chat_template.*data.template"):
        choose_template(bpe_tokenizer, "tokenizer")
    with pytest.raises(TemplateError, match="unknown template 'vicuna'"):
        choose_template(tok, "vicuna")


def test_setup_sets_the_named_template_and_makes_its_markers_single_special_tokens(load_tokenizer):
    tok = load_tokenizer("llama3")
    assert len(tok.encode("<|im_start|>", add_special_tokens=False)) > 1
    before = len(tok)
    info = setup_tokenizer(tok, data(template="chatml"))
    assert tok.chat_template == NAMED_TEMPLATES["chatml"]
    assert info["template"] == "chatml"
    assert info["added_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert len(tok) == before + info["added_tokens"] == before + 2
    assert len(tok.encode("<|im_start|>assistant", add_special_tokens=False)) == 2
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.added_tokens_decoder[im_end].special
    assert tok.decode(tok.encode("답<|im_end|>", add_special_tokens=False), skip_special_tokens=True) == "답"
    assert info["end_of_turn"] == "<|im_end|>" and tok.convert_ids_to_tokens(info["end_of_turn_id"]) == "<|im_end|>"


# ----------------------------------------------------------------------------------------------------------------------
# Pad token
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad_before", [None, "eos"])
def test_llama3_pad_becomes_distinct_from_eos_without_new_tokens(load_tokenizer, pad_before):
    tok = load_tokenizer("llama3")
    assert tok.pad_token is None  # as shipped
    if pad_before == "eos":
        tok.pad_token = tok.eos_token  # the classic recipe line that stops the model from learning to stop
    before = len(tok)
    info = setup_tokenizer(tok, data())
    assert info["pad_changed"] and info["added_tokens"] == 0 and len(tok) == before
    assert tok.pad_token_id is not None
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id, tok.convert_tokens_to_ids("<|eot_id|>"))
    assert tok.pad_token in tok.get_vocab()


def test_existing_distinct_pad_is_kept(load_tokenizer):
    tok = load_tokenizer("qwen3")
    info = setup_tokenizer(tok, data())
    assert (info["pad_token"], info["pad_changed"], info["added_tokens"]) == ("<|endoftext|>", False, 0)
    assert tok.pad_token_id != tok.eos_token_id


def test_pad_is_added_when_no_distinct_token_exists():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    raw.train_from_iterator(["안녕하세요 반갑습니다", "hello world"] * 5, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|im_end|>")
    before = len(tok)
    info = setup_tokenizer(tok, data())
    assert info["template"] == "chatml" and info["pad_token"] == "<|pad|>" and info["added_tokens"] == 1
    assert len(tok) == before + 1 and tok.pad_token_id == before
    assert tok.pad_token_id != tok.eos_token_id


# ----------------------------------------------------------------------------------------------------------------------
# Domain tokens (seed 001, level 5)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3", "llama3"])
def test_add_tokens_makes_pas_one_token(load_tokenizer, name):
    tok = load_tokenizer(name)
    sentence = "진통과 해열 효과가 있는 파스형 의약품은 임산부와 노인에게 적합합니다."
    assert len(tok.encode("파스", add_special_tokens=False)) > 1
    before = len(tok)
    info = setup_tokenizer(tok, data(add_tokens=["파스", "연고"]))
    assert info["added_domain_tokens"] == 2 and len(tok) == before + info["added_tokens"]
    pas = tok.convert_tokens_to_ids("파스")
    assert tok.encode("파스", add_special_tokens=False) == [pas]
    ids = tok.encode(sentence, add_special_tokens=False)
    assert pas in ids
    assert tok.decode(ids) == sentence  # a regular (non-special) token decodes back to plain text
    assert tok.decode(ids, skip_special_tokens=True) == sentence
    again = setup_tokenizer(tok, data(add_tokens=["파스", "연고"]))  # idempotent: nothing added twice
    assert again["added_tokens"] == 0 and len(tok) == before + info["added_tokens"]


# ----------------------------------------------------------------------------------------------------------------------
# Inference prompt = training prefix
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,thinking", [("qwen3", False), ("qwen3", True), ("llama3", False), ("gemma", False)])
def test_generation_prompt_is_the_token_prefix_of_the_training_text(shared, name, thinking):
    """Evaluation feeds generation_prompt(); its tokens must be exactly the tokens the model saw before its reply."""
    tok = shared[name]
    d = data(enable_thinking=thinking)
    for messages in CONVERSATIONS[:2]:
        prompt_ids = tok(generation_prompt(tok, messages, d), add_special_tokens=False).input_ids
        full_ids = tok(render(tok, messages, d), add_special_tokens=False).input_ids
        assert full_ids[: len(prompt_ids)] == prompt_ids
        assert len(full_ids) > len(prompt_ids)

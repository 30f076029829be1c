"""Assistant-only labels on the real Qwen3, Llama-3 and Gemma-3 tokenizers, checked against an independent reference.

Reference (no character offsets, no layout probing): for each assistant message i, tokenise the conversation up to
the generation prompt before it and the conversation through that reply with the tokenizer's own __call__; the reply's
tokens are the difference, cut after the first end-of-turn token id (named per tokenizer here). This is valid where the
template is prefix-stable. Qwen3 is not, in one way: the reply after the last user message opens with a think block
(empty in no-think mode) while earlier replies are written without one. For those earlier replies the reference
therefore takes the prefix from the thinking-mode generation prompt ('<|im_start|>assistant\\n', exactly how an
earlier turn opens) and the reply from the render that continues to the next user message, where the reply already has
its final, think-less form. Both prefixes are checked to be token prefixes of the full conversation.
"""

from __future__ import annotations

import dataclasses

import pytest

from train.config import DataConfig
from train.data.formats import RecordError
from train.data.labels import assistant_spans, tokenize_conversation, tokenize_conversations
from train.data.templates import TemplateError, render, setup_tokenizer, template_layout

END_OF_TURN = {"qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>"}
IGNORE = -100

SYSTEM = "당신은 금융, 법률 및 M&A 분야 전문가입니다. 사용자 질문에 대해 반드시 한국어로만 답변하세요."
MULTI_TURN = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "인수합병(M&A)의 기본 절차를 설명해 주세요."},
    {"role": "assistant", "content": "실사, 가치평가, 계약 체결, 승인 순서로 진행됩니다."},
    {"role": "user", "content": "실사는 무엇인가요?"},
    {"role": "assistant", "content": "실사(Due Diligence)는 대상 회사의 재무·법률 위험을 조사하는 과정입니다."},
    {"role": "user", "content": "고맙습니다!"},
    {"role": "assistant", "content": "천만에요. 더 궁금한 점이 있으면 물어보세요."},
]
MARKERS_IN_TEXT = [  # a user pastes template markup; the replies talk about it
    {"role": "user", "content": "다음 문자열의 뜻은?\n<|im_start|>assistant\n<|start_header_id|>assistant<|end_header_id|>\n\n"
                                "<start_of_turn>model\nassistant"},
    {"role": "assistant", "content": "assistant"},
    {"role": "user", "content": "assistant"},
    {"role": "assistant", "content": "'<|im_start|>assistant' 와 '<start_of_turn>model' 은 역할 표시입니다. assistant"},
]
REPEATED = [
    {"role": "user", "content": "예 또는 아니오로 답하세요: 서울은 수도인가요?"}, {"role": "assistant", "content": "예"},
    {"role": "user", "content": "부산은 수도인가요?"}, {"role": "assistant", "content": "아니오"},
    {"role": "user", "content": "서울은 한국에 있나요?"}, {"role": "assistant", "content": "예"},
    {"role": "user", "content": "예"}, {"role": "assistant", "content": "예"},
]
ECHO = [{"role": "system", "content": ""}, {"role": "user", "content": "안녕하세요"},
        {"role": "assistant", "content": "안녕하세요"}]
CASES = {"multi_turn": MULTI_TURN, "markers": MARKERS_IN_TEXT, "repeated": REPEATED, "echo_empty_system": ECHO}


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def reference_labels(tok, name, messages, data):
    """Independent labels: token differences between renders of prefixes of the conversation (module doc)."""
    ids = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
    eot = tok.convert_tokens_to_ids(END_OF_TURN[name])
    full = ids(render(tok, messages, data))
    labels = [IGNORE] * len(full)
    user_after = lambda i: any(m["role"] == "user" for m in messages[i + 1:])  # noqa: E731
    thinking = dataclasses.replace(data, enable_thinking=True)
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or (data.train_on == "last_assistant" and i != len(messages) - 1):
            continue
        if name == "qwen3" and user_after(i):
            prefix = ids(render(tok, messages[:i], thinking, add_generation_prompt=True))
            through = ids(render(tok, messages[: i + 2], data))
        else:
            prefix = ids(render(tok, messages[:i], data, add_generation_prompt=True))
            through = ids(render(tok, messages[: i + 1], data))
        assert full[: len(prefix)] == prefix and full[: len(through)] == through  # prefix-stable as described
        reply = through[len(prefix):]
        reply = reply[: reply.index(eot) + 1]
        labels[len(prefix): len(prefix) + len(reply)] = reply
    if data.train_on == "all":
        labels = list(full)
    labels[0] = IGNORE
    return full, labels


def labelled_runs(ids, labels):
    runs, run = [], []
    for i, l in zip(ids, labels):
        if l != IGNORE:
            assert l == i
            run.append(i)
        elif run:
            runs.append(run)
            run = []
    return runs + ([run] if run else [])


# ----------------------------------------------------------------------------------------------------------------------
# Against the reference
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name,thinking", [("qwen3", False), ("qwen3", True), ("llama3", False), ("gemma", False)])
def test_labels_match_reference(load_tokenizer, qwen3_tokenizer, llama3_tokenizer, gemma_tokenizer, name, thinking,
                                case):
    tok = {"qwen3": qwen3_tokenizer, "llama3": llama3_tokenizer, "gemma": gemma_tokenizer}[name]
    # the reference tokenises whole texts, so markup pasted into messages stays control tokens: the 'keep' policy
    # (the default 'escape' is checked in tests/test_special_tokens.py)
    data = cfg(enable_thinking=thinking, special_tokens_in_content="keep")
    messages = CASES[case]
    out = tokenize_conversation(tok, messages, data)
    full, expected = reference_labels(tok, name, messages, data)
    assert out["input_ids"] == full
    assert out["labels"] == expected
    # decode(labelled tokens) == each reply (as the template writes it) + end of turn, in order
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    if name == "qwen3" and thinking:
        replies[-1] = "<think>\n\n</think>\n\n" + replies[-1]  # thinking mode: the model writes the think block
    if name == "gemma":
        replies = [r.strip() for r in replies]  # Gemma's template trims
    decoded = [tok.decode(run) for run in labelled_runs(out["input_ids"], out["labels"])]
    assert decoded == [r + END_OF_TURN[name] for r in replies]


@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
@pytest.mark.parametrize("name", ["qwen3", "llama3"])
def test_train_on_modes(qwen3_tokenizer, llama3_tokenizer, name, train_on):
    tok = qwen3_tokenizer if name == "qwen3" else llama3_tokenizer
    data = cfg(train_on=train_on)
    out = tokenize_conversation(tok, MULTI_TURN, data)
    full, expected = reference_labels(tok, name, MULTI_TURN, data)
    assert out["labels"] == expected
    n_trained = sum(1 for x in out["labels"] if x != IGNORE)
    if train_on == "all":
        assert n_trained == len(full) - 1 and out["labels"][1:] == full[1:]
    elif train_on == "last_assistant":
        runs = labelled_runs(out["input_ids"], out["labels"])
        assert [tok.decode(r) for r in runs] == [MULTI_TURN[-1]["content"] + END_OF_TURN[name]]


# ----------------------------------------------------------------------------------------------------------------------
# Qwen3 thinking
# ----------------------------------------------------------------------------------------------------------------------


def test_seed_004_no_think_block_is_prompt(qwen3_tokenizer):
    tok = qwen3_tokenizer
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "공개매수란?/no_think"},
                {"role": "assistant", "content": "공개매수는 불특정 다수의 주주로부터 주식을 사들이는 방법입니다."}]
    out = tokenize_conversation(tok, messages, cfg(enable_thinking=False))
    first = next(i for i, l in enumerate(out["labels"]) if l != IGNORE)
    prompt = tok.decode(out["input_ids"][:first])
    assert prompt.endswith("/no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.decode(out["input_ids"][first:]) == messages[-1]["content"] + "<|im_end|>\n"
    assert [tok.decode(r) for r in labelled_runs(out["input_ids"], out["labels"])] == [
        messages[-1]["content"] + "<|im_end|>"]  # the trailing newline after <|im_end|> is not trained


@pytest.mark.parametrize("field", ["inline", "reasoning_content"])
def test_thinking_mode_trains_the_reasoning_of_the_last_turn_only(qwen3_tokenizer, field):
    tok = qwen3_tokenizer
    answer, reasoning = "둘째 답입니다.", "질문을 보면 합병 비율이 핵심이다."
    last = ({"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{answer}"} if field == "inline"
            else {"role": "assistant", "content": answer, "reasoning_content": reasoning})
    messages = [{"role": "user", "content": "첫 질문"},
                {"role": "assistant", "content": "<think>\n지난 생각\n</think>\n\n첫 답"},
                {"role": "user", "content": "둘째 질문"}, last]
    data = cfg(enable_thinking=True)
    out = tokenize_conversation(tok, messages, data)
    runs = [tok.decode(r) for r in labelled_runs(out["input_ids"], out["labels"])]
    # The template drops reasoning of turns before the last user message; the last turn's think block is trained.
    assert runs == ["첫 답<|im_end|>", f"<think>\n{reasoning}\n</think>\n\n{answer}<|im_end|>"]
    if field == "inline":
        full, expected = reference_labels(tok, "qwen3", messages, data)
        assert out["labels"] == expected


def test_reasoning_in_no_think_mode_is_refused(qwen3_tokenizer):
    messages = [{"role": "user", "content": "질문"},
                {"role": "assistant", "content": "<think>\n생각\n</think>\n\n답"}]
    with pytest.raises(ValueError, match="enable_thinking=true"):
        tokenize_conversation(qwen3_tokenizer, messages, cfg(enable_thinking=False))


# ----------------------------------------------------------------------------------------------------------------------
# BOS
# ----------------------------------------------------------------------------------------------------------------------


def test_llama3_exactly_one_bos(llama3_tokenizer):
    tok = llama3_tokenizer
    assert tok("안녕").input_ids[0] == 128000  # the tokenizer prepends BOS by default, and the template writes one
    out = tokenize_conversation(tok, MULTI_TURN, cfg())
    assert out["input_ids"][0] == 128000 and out["input_ids"].count(128000) == 1
    assert out["labels"][0] == IGNORE


@pytest.mark.parametrize("template", ["chatml", "doubled"])
def test_llama3_bos_added_once_when_template_has_none_and_deduplicated_when_doubled(load_tokenizer, template):
    tok = load_tokenizer("llama3")
    setup_tokenizer(tok, cfg(template="chatml"))
    if template == "doubled":
        tok.chat_template = "{{ bos_token }}" + tok.chat_template.replace("{% for", "{{ bos_token }}{% for", 1)
        assert render(tok, ECHO, cfg()).startswith("<|begin_of_text|><|begin_of_text|>")
    out = tokenize_conversation(tok, ECHO, cfg())
    assert out["input_ids"][0] == 128000 and out["input_ids"].count(128000) == 1
    assert tok.decode(out["input_ids"][1:]) == render(tok, ECHO, cfg()).replace("<|begin_of_text|>", "")
    assert [tok.decode(r) for r in labelled_runs(out["input_ids"], out["labels"])] == ["안녕하세요<|im_end|>"]


def test_qwen3_gets_no_bos(qwen3_tokenizer):
    out = tokenize_conversation(qwen3_tokenizer, ECHO, cfg())
    assert out["input_ids"][0] == qwen3_tokenizer.convert_tokens_to_ids("<|im_start|>")


# ----------------------------------------------------------------------------------------------------------------------
# Other templates (built-in ones on a real tokenizer, a tokenizer without a template)
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template,end", [("exaone", "[|endofturn|]"), ("chatml", "<|im_end|>"),
                                          ("llama3", "<|eot_id|>")])
def test_builtin_templates_on_qwen3_tokenizer(load_tokenizer, template, end):
    tok = load_tokenizer("qwen3")
    data = cfg(template=template)
    setup_tokenizer(tok, data)
    out = tokenize_conversation(tok, REPEATED, data)
    runs = [tok.decode(r) for r in labelled_runs(out["input_ids"], out["labels"])]
    assert runs == [m["content"] + end for m in REPEATED if m["role"] == "assistant"]
    # prefix-difference reference, generic for these prefix-stable templates
    ids = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
    end_id = tok.convert_tokens_to_ids(end)
    expected = [IGNORE] * len(out["input_ids"])
    for i, m in enumerate(REPEATED):
        if m["role"] == "assistant":
            prefix = ids(render(tok, REPEATED[:i], data, add_generation_prompt=True))
            reply = ids(render(tok, REPEATED[: i + 1], data))[len(prefix):]
            reply = reply[: reply.index(end_id) + 1]
            expected[len(prefix): len(prefix) + len(reply)] = reply
    assert out["labels"] == expected


def test_tokenizer_without_template_uses_chatml(bpe_tokenizer):
    bpe_tokenizer.chat_template = None
    data = cfg(template="auto")
    info = setup_tokenizer(bpe_tokenizer, data)
    assert info["template"] == "chatml"
    out = tokenize_conversation(bpe_tokenizer, ECHO, data)
    assert [bpe_tokenizer.decode(r) for r in labelled_runs(out["input_ids"], out["labels"])] == ["안녕하세요<|im_end|>"]


# ----------------------------------------------------------------------------------------------------------------------
# Failures are loud
# ----------------------------------------------------------------------------------------------------------------------


def test_no_assistant_message_raises(qwen3_tokenizer):
    with pytest.raises(ValueError, match="no assistant message"):
        tokenize_conversation(qwen3_tokenizer, [{"role": "user", "content": "질문"}], cfg())


def test_template_that_rewrites_replies_raises(load_tokenizer):
    tok = load_tokenizer("qwen3")
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + (m['content'] | upper if "
                         "m['role'] == 'assistant' and m['content'] != 'PROBEASSISTANTONE' and m['content'] != "
                         "'PROBEASSISTANTTWO' else m['content']) + '<|im_end|>\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(ValueError, match="message 1 \\(assistant\\).*rewrites it"):
        tokenize_conversation(tok, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer"}], cfg())


def test_template_without_end_of_turn_token_is_refused(load_tokenizer):
    tok = load_tokenizer("qwen3")
    tok.chat_template = ("{% for m in messages %}{{ '### ' + m['role'] + ':\n' + m['content'] + '\n\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}")
    with pytest.raises(TemplateError, match="not a special token, so the model could not learn to stop"):
        template_layout(tok, cfg())


def test_tokenising_without_setup_for_a_named_template_raises(load_tokenizer):
    tok = load_tokenizer("llama3")  # has its own template; data.template asks for chatml
    with pytest.raises(TemplateError, match="call train.data.templates.setup_tokenizer"):
        tokenize_conversation(tok, ECHO, cfg(template="chatml"))
    with pytest.raises(TemplateError, match="setup_tokenizer"):
        tokenize_conversation(tok, ECHO, cfg(template="qwen3"))


def test_non_text_content_raises(qwen3_tokenizer):
    layout = template_layout(qwen3_tokenizer, cfg())
    with pytest.raises(ValueError, match="message 1 \\(assistant\\): content must be text"):
        assistant_spans("", [{"role": "user", "content": "q"}, {"role": "assistant", "content": None}], layout)


# ----------------------------------------------------------------------------------------------------------------------
# Issue 20: a template that refuses one conversation, whitespace at the edges of replies, explicit empty think blocks
# ----------------------------------------------------------------------------------------------------------------------

TOKENIZERS = [("qwen3", False), ("qwen3", True), ("llama3", False), ("gemma", False)]


def _tok(name, qwen3_tokenizer, llama3_tokenizer, gemma_tokenizer):
    return {"qwen3": qwen3_tokenizer, "llama3": llama3_tokenizer, "gemma": gemma_tokenizer}[name]


@pytest.mark.parametrize("turns", [
    [{"role": "assistant", "content": "무엇을 도와드릴까요?"}, {"role": "user", "content": "환율"},
     {"role": "assistant", "content": "1,350원입니다."}],
    [{"role": "user", "content": "환율"}, {"role": "assistant", "content": "1,350원"},
     {"role": "assistant", "content": "입니다."}],
], ids=["assistant_first", "two_assistant_turns"])
def test_a_template_that_refuses_one_conversation_rejects_only_that_one(gemma_tokenizer, turns):
    good = [{"role": "user", "content": "환율"}, {"role": "assistant", "content": "1,350원입니다."}]
    out = tokenize_conversations(gemma_tokenizer, [good, turns, good], cfg())
    assert isinstance(out[0], dict) and out[2] == out[0]  # the batch goes on
    err = out[1]
    assert isinstance(err, RecordError) and err.reason == "template_error"
    assert "Conversation roles must alternate" in str(err) and "Gemma" in err.hint
    with pytest.raises(RecordError, match="roles must alternate"):
        tokenize_conversation(gemma_tokenizer, turns, cfg())


WHITESPACE = {"space": " ", "newline": "\n", "tab": "\t", "two_newlines": "\n\n", "space_newline": " \n"}


@pytest.mark.parametrize("edge", ["leading", "trailing"])
@pytest.mark.parametrize("ws", list(WHITESPACE))
@pytest.mark.parametrize("name,thinking", TOKENIZERS)
def test_whitespace_at_the_edges_of_replies(qwen3_tokenizer, llama3_tokenizer, gemma_tokenizer, name, thinking, ws,
                                            edge):
    """Leading whitespace of a reply is not part of it (module doc); trailing whitespace is trained as the template
    writes it. Checked against the prefix-difference reference on the conversation with the leading whitespace
    removed, which also proves each reply's prompt is an exact token prefix of the conversation, as at inference."""
    tok = _tok(name, qwen3_tokenizer, llama3_tokenizer, gemma_tokenizer)
    data = cfg(enable_thinking=thinking)
    w = WHITESPACE[ws]
    reply = lambda text: w + text if edge == "leading" else text + w  # noqa: E731
    messages = [{"role": "user", "content": "질문입니다"}, {"role": "assistant", "content": reply("첫 답입니다")},
                {"role": "user", "content": "둘째 질문"}, {"role": "assistant", "content": reply("둘째 답입니다")}]
    out = tokenize_conversation(tok, messages, data)
    stripped = [dict(m, content=m["content"].lstrip()) if m["role"] == "assistant" else m for m in messages]
    full, expected = reference_labels(tok, name, stripped, data)
    assert out["input_ids"] == full and out["labels"] == expected
    written = [m["content"].lstrip() for m in messages if m["role"] == "assistant"]
    if name != "qwen3":
        written = [r.strip() for r in written]  # Llama-3 and Gemma trim
    if thinking:
        written[-1] = "<think>\n\n</think>\n\n" + written[-1]
    assert [tok.decode(r) for r in labelled_runs(out["input_ids"], out["labels"])] == [
        r + END_OF_TURN[name] for r in written]


@pytest.mark.parametrize("block", ["<think>\n\n</think>\n\n", "<think></think>", "<think>\n</think>\n"])
def test_an_explicit_empty_think_block_in_no_think_mode_trains_the_answer(qwen3_tokenizer, block):
    data = cfg(enable_thinking=False)
    plain = [{"role": "user", "content": "질문"}, {"role": "assistant", "content": "답입니다."}]
    explicit = [plain[0], {"role": "assistant", "content": block + "답입니다."}]
    full, expected = reference_labels(qwen3_tokenizer, "qwen3", plain, data)
    out = tokenize_conversation(qwen3_tokenizer, explicit, data)
    assert out["input_ids"] == full and out["labels"] == expected  # what the template writes for the plain answer
    assert [qwen3_tokenizer.decode(r) for r in labelled_runs(out["input_ids"], out["labels"])] == ["답입니다.<|im_end|>"]
    thinking = tokenize_conversation(qwen3_tokenizer, explicit, cfg(enable_thinking=True))
    assert [qwen3_tokenizer.decode(r) for r in labelled_runs(thinking["input_ids"], thinking["labels"])] == [
        "<think>\n\n</think>\n\n답입니다.<|im_end|>"]  # in thinking mode the model writes the block itself

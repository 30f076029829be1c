"""Every record format our users bring becomes the expected chat messages; every user mistake is a precise RecordError.

Records are the seeds' own examples (shared/seeds 001-004). Expected messages are written out by hand.
"""

import json

import pytest

from train.config import DataConfig, DataSource
from train.data.formats import (DEFAULT_KEYWORD_INSTRUCTION, RecordError, RecordWarning, detect_format,
                                 required_columns, to_messages)

# seed 001, level 3: instruction tuning with a list output
SEED1_ALPACA = {
    "instruction": "다음 문장에서 의약품 키워드를 추출하세요.",
    "input": "진통·소염 작용이 있는 파스형 의약품은 신신제약이 제조한 타이레놀입니다.",
    "output": ["진통", "소염", "파스", "신신제약", "타이레놀"],
}
# seed 001, level 4: text + labels
SEED1_KEYWORDS = {"text": "진통·소염 효과가 있는 파스형 의약품은 임산부에게 사용됩니다.", "labels": ["진통", "소염", "파스", "임산부"]}
# seed 003: RAFT with distractors and a chain of thought
SEED3_RAFT = {
    "instruction": "다음 문맥을 읽고 질문에 답하세요. 여러 문맥이 주어질 수 있으며, 그 중 질문에 답하기 위한 가장 적절한 정보를 찾아 활용해야 합니다.",
    "context": [
        "한국의 수도는 서울이며, 인구는 약 1천만 명입니다. 서울은 정치, 경제, 문화의 중심지입니다.",
        "대한민국의 상징인 태극기는 흰색 바탕에 중앙의 태극 문양과 네 모서리의 건곤감리가 그려져 있습니다.",
        "부산은 한국의 제2의 도시로, 해양 산업과 관광으로 유명합니다.",
    ],
    "question": "한국의 수도는 어디인가요?",
    "answer": "한국의 수도는 서울입니다. 제공된 문맥에 따르면 서울은 약 1천만 명의 인구를 가진 정치·경제·문화의 중심지입니다. 다른 문맥들은 질문과 직접적인 관련이 없습니다.",
    "cot": "주어진 세 가지 문맥 중 첫 번째 문맥('한국의 수도는 서울이며...')이 질문('한국의 수도는 어디인가요?')에 직접적인 답변을 제공합니다. 나머지 문맥들은 각각 태극기와 부산에 대한 정보로 질문과 무관하므로 무시하고 첫 번째 문맥에서 '서울'을 추출하여 답변을 구성합니다.",
}
# seed 002: finance-news judgement, one column per role, dict answer
SEED2_SYSTEM = "당신은 주어진 뉴스로부터 종목에 영향을 주는 뉴스인지 판별하는 금융 뉴스 판별기입니다."
SEED2_COLUMNS = {
    "system_prompt": SEED2_SYSTEM,
    "user_prompt": "삼성전자가 2분기 반도체 부문에서 사상 최대 실적을 기록했다.",
    "assistant": {"is_stock_related": True, "positive_impact_stocks": ["삼성전자"],
                  "reason_for_positive_impact": "반도체 실적 개선", "positive_keywords": ["사상 최대 실적"]},
}
# seed 004: M&A QA with a system prompt
SEED4_SYSTEM = "당신은 금융,법률 및 M&A 분야 전문가입니다.\n사용자 질문에 대해 반드시 한국어로만 답변하세요."
SEED4_QA = {"question": "실사(Due Diligence)란 무엇인가요?",
            "answer": "실사는 인수 대상 기업의 재무, 법률, 영업 상태를 인수 전에 조사하는 절차입니다."}


def src(**kw) -> DataSource:
    return DataSource(path="data.jsonl", **kw)


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def error(record, source=None, data=None) -> RecordError:
    with pytest.raises(RecordError) as info:
        to_messages(record, source or src(), data or cfg())
    return info.value


# ----------------------------------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------------------------------


def test_alpaca_list_output_becomes_json_text():
    assert to_messages(SEED1_ALPACA, src(), cfg()) == [
        {"role": "user", "content": "다음 문장에서 의약품 키워드를 추출하세요.\n\n"
                                    "진통·소염 작용이 있는 파스형 의약품은 신신제약이 제조한 타이레놀입니다."},
        {"role": "assistant", "content": '["진통", "소염", "파스", "신신제약", "타이레놀"]'},
    ]


def test_alpaca_without_input_and_with_system_prompt():
    record = {"instruction": "파스의 용도를 한 문장으로 설명하세요.", "input": "", "output": "근육통 완화에 붙이는 외용제입니다."}
    assert to_messages(record, src(system_prompt="당신은 약사입니다."), cfg()) == [
        {"role": "system", "content": "당신은 약사입니다."},
        {"role": "user", "content": "파스의 용도를 한 문장으로 설명하세요."},
        {"role": "assistant", "content": "근육통 완화에 붙이는 외용제입니다."},
    ]
    record["input"] = None  # null input is the same as no input
    assert to_messages(record, src(), cfg())[0]["content"] == "파스의 용도를 한 문장으로 설명하세요."


def test_keywords_default_and_named_instruction():
    assert to_messages(SEED1_KEYWORDS, src(), cfg()) == [
        {"role": "user", "content": DEFAULT_KEYWORD_INSTRUCTION + "\n\n진통·소염 효과가 있는 파스형 의약품은 임산부에게 사용됩니다."},
        {"role": "assistant", "content": '["진통", "소염", "파스", "임산부"]'},
    ]
    named = to_messages(SEED1_KEYWORDS, src(instruction="의약품 키워드를 JSON 배열로 추출하세요."), cfg())
    assert named[0]["content"].startswith("의약품 키워드를 JSON 배열로 추출하세요.\n\n진통")


def test_raft_layout_with_reasoning_and_passages_in_order():
    messages = to_messages(SEED3_RAFT, src(), cfg(shuffle_passages=False, include_reasoning=True))
    c = SEED3_RAFT["context"]
    assert messages == [
        {"role": "user", "content": f"{SEED3_RAFT['instruction']}\n\n[문서 1] {c[0]}\n\n[문서 2] {c[1]}\n\n[문서 3] {c[2]}"
                                    f"\n\n질문: 한국의 수도는 어디인가요?"},
        {"role": "assistant", "content": f"추론: {SEED3_RAFT['cot']}\n\n답변: {SEED3_RAFT['answer']}"},
    ]


def test_raft_answer_only_without_reasoning_or_cot():
    off = to_messages(SEED3_RAFT, src(), cfg(include_reasoning=False))
    assert off[-1]["content"] == SEED3_RAFT["answer"]
    no_cot = {k: v for k, v in SEED3_RAFT.items() if k != "cot"}
    assert to_messages(no_cot, src(), cfg(include_reasoning=True))[-1]["content"] == SEED3_RAFT["answer"]


def test_raft_context_string_is_one_passage():
    record = {"instruction": "다음 문맥을 읽고 질문에 답하세요.", "context": "서울은 약 천만 명의 인구를 가진 도시입니다.",
              "question": "서울의 인구는?", "answer": "문맥에 따르면 서울의 인구는 약 천만 명입니다."}
    user = to_messages(record, src(), cfg())[0]["content"]
    assert user == "다음 문맥을 읽고 질문에 답하세요.\n\n[문서 1] 서울은 약 천만 명의 인구를 가진 도시입니다.\n\n질문: 서울의 인구는?"


def _passage_order(messages, passages):
    user = messages[0]["content"]
    return sorted(range(len(passages)), key=lambda i: user.index(passages[i]))


def test_raft_shuffle_is_deterministic_per_record_and_varies_across_records():
    data = cfg(shuffle_passages=True)
    passages = [f"문서 내용 {i}번: 서울과 부산에 대한 설명입니다." for i in range(5)]
    orders = []
    for q in range(30):
        record = {"context": passages, "question": f"질문 {q}: 한국의 수도는?", "answer": "서울"}
        first = _passage_order(to_messages(record, src(), data, seed=7), passages)
        again = _passage_order(to_messages(dict(record), src(), data, seed=7), passages)
        assert first == again  # same record, same order, every time
        assert sorted(first) == list(range(5))  # nothing lost or repeated
        orders.append(tuple(first))
    assert len(set(orders)) > 5  # different records get different orders
    record = {"context": passages, "question": "질문 0: 한국의 수도는?", "answer": "서울"}
    by_seed = {tuple(_passage_order(to_messages(record, src(), data, seed=s), passages)) for s in range(10)}
    assert len(by_seed) > 1  # the run seed changes the order


def test_columns_seed2_dict_answer_is_json_not_python_repr():
    messages = to_messages(SEED2_COLUMNS, src(), cfg())
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == SEED2_SYSTEM
    assert messages[2]["content"] == ('{"is_stock_related": true, "positive_impact_stocks": ["삼성전자"], '
                                      '"reason_for_positive_impact": "반도체 실적 개선", "positive_keywords": ["사상 최대 실적"]}')
    assert json.loads(messages[2]["content"]) == SEED2_COLUMNS["assistant"]


def test_columns_explicit_mapping():
    record = {"지시": "뉴스 요약", "뉴스": "코스피가 상승했다.", "정답": "코스피 상승"}
    source = src(format="columns", columns={"user": "뉴스", "assistant": "정답"}, system_prompt=SEED2_SYSTEM)
    assert to_messages(record, source, cfg()) == [
        {"role": "system", "content": SEED2_SYSTEM},
        {"role": "user", "content": "코스피가 상승했다."},
        {"role": "assistant", "content": "코스피 상승"},
    ]
    err = error({"뉴스": "코스피가 상승했다."}, source)
    assert (err.reason, err.field) == ("missing_field", "정답")
    assert "columns.assistant" in err.hint


def test_qa_with_system_prompt_seed4():
    assert to_messages(SEED4_QA, src(format="qa", system_prompt=SEED4_SYSTEM), cfg()) == [
        {"role": "system", "content": SEED4_SYSTEM},
        {"role": "user", "content": SEED4_QA["question"]},
        {"role": "assistant", "content": SEED4_QA["answer"]},
    ]


def test_messages_multi_turn_kept_and_system_prompt_added_once():
    turns = [{"role": "user", "content": "안녕하세요, 오늘 날씨는 어떤가요?"},
             {"role": "assistant", "content": "안녕하세요! 오늘 날씨는 맑고 화창합니다."},
             {"role": "user", "content": "우산이 필요할까요?"},
             {"role": "assistant", "content": "아니요, 비 소식은 없습니다."}]
    assert to_messages({"messages": turns}, src(), cfg()) == turns
    with_default = to_messages({"messages": turns}, src(system_prompt="당신은 친절한 AI 어시스턴트입니다."), cfg())
    assert with_default[0] == {"role": "system", "content": "당신은 친절한 AI 어시스턴트입니다."}
    assert with_default[1:] == turns
    own = [{"role": "system", "content": "기상 캐스터입니다."}] + turns
    assert to_messages({"messages": own}, src(system_prompt="다른 프롬프트"), cfg()) == own


def test_sharegpt_conversations_use_the_builtin_table_only_for_from_value():
    record = {"conversations": [{"from": "system", "value": "친절한 비서"}, {"from": "human", "value": "안녕"},
                                {"from": "gpt", "value": "안녕하세요"}]}
    assert to_messages(record, src(), cfg()) == [{"role": "system", "content": "친절한 비서"},
                                                 {"role": "user", "content": "안녕"},
                                                 {"role": "assistant", "content": "안녕하세요"}]
    # 'gpt' written as an OpenAI role is not silently accepted
    err = error({"messages": [{"role": "user", "content": "안녕"}, {"role": "gpt", "content": "안녕하세요"}]})
    assert (err.reason, err.field) == ("unknown_role", "messages[1].role")


def test_detect_format_each_seed():
    assert detect_format(SEED1_ALPACA) == "alpaca"
    assert detect_format(SEED1_KEYWORDS) == "keywords"
    assert detect_format(SEED3_RAFT) == "raft"
    assert detect_format(SEED2_COLUMNS) == "columns"
    assert detect_format(SEED4_QA) == "qa"
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"conversations": []}) == "messages"


def test_unknown_format_names_keys_and_formats():
    err = error({"질문": "서울은?", "답": "수도"})
    assert err.reason == "unknown_format"
    assert "질문" in str(err) and "답" in str(err)
    for name in ("messages", "alpaca", "raft", "columns", "qa", "keywords"):
        assert name in str(err)


def test_required_columns_for_tables():
    assert required_columns(src(format="alpaca")) == ["instruction", "output"]
    assert required_columns(src(columns={"system": "s", "user": "u", "assistant": "a"})) == ["s", "u", "a"]
    assert required_columns(src()) == []


# ----------------------------------------------------------------------------------------------------------------------
# Mistakes users make
# ----------------------------------------------------------------------------------------------------------------------


def test_role_typo_suggests_the_closest_role():
    err = error({"messages": [{"role": "user", "content": "안녕"}, {"role": "asistant", "content": "네"}]})
    assert (err.reason, err.field) == ("unknown_role", "messages[1].role")
    assert "Did you mean 'assistant'?" in err.hint
    assert str(err).startswith("messages[1].role: role 'asistant' is not one of system, user, assistant.")


def test_model_role_needs_an_explicit_alias():
    record = {"messages": [{"role": "user", "content": "안녕"}, {"role": "model", "content": "네, 안녕하세요"}]}
    err = error(record)
    assert err.reason == "unknown_role" and "role_aliases: {model: assistant}" in err.hint
    assert to_messages(record, src(), cfg(role_aliases={"model": "assistant"}))[1] == {"role": "assistant",
                                                                                     "content": "네, 안녕하세요"}


@pytest.mark.parametrize("content,reason", [
    (None, "null_content"),
    ([{"type": "text", "text": "네"}], "non_text_content"),
    (42, "non_text_content"),
    ("   ", "empty_content"),
])
def test_bad_assistant_content(content, reason):
    err = error({"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": content}]})
    assert (err.reason, err.field) == (reason, "messages[1].content")


def test_conversation_ending_on_user():
    err = error({"messages": [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "네"},
                              {"role": "user", "content": "고마워요"}]})
    assert (err.reason, err.field) == ("ends_on_user", "messages[2]")


def test_empty_and_system_only_conversations():
    assert error({"messages": []}).reason == "empty_conversation"
    assert error({"messages": [{"role": "system", "content": "시스템"}]}).reason == "empty_conversation"
    assert error({"messages": None}).reason == "null_content"
    assert error({"messages": "안녕"}).reason == "bad_type"


def test_system_message_only_first():
    err = error({"messages": [{"role": "user", "content": "안녕"}, {"role": "system", "content": "규칙"},
                              {"role": "assistant", "content": "네"}]})
    assert (err.reason, err.field) == ("misplaced_system", "messages[1].role")


def test_turn_without_role_or_content():
    assert error({"messages": [{"content": "안녕"}]}).field == "messages[0]"
    err = error({"messages": [{"role": "user"}]})
    assert (err.reason, err.field) == ("missing_field", "messages[0]")


def test_missing_field_names_field_and_format():
    err = error({"instruction": "키워드를 추출하세요.", "input": "파스형 의약품"})
    assert (err.reason, err.field) == ("missing_field", "output")
    assert "alpaca" in err.hint
    assert str(err).startswith("output: is missing.")


def test_wrong_types_in_structured_formats():
    assert error({"text": "진통 파스", "labels": "진통, 파스"}).reason == "bad_type"
    assert error({"instruction": "답하세요", "output": 3}).reason == "non_text_content"
    bad_passage = dict(SEED3_RAFT, context=["서울은 수도", None])
    err = error(bad_passage)
    assert (err.reason, err.field) == ("null_content", "context[1]")
    assert error(dict(SEED4_QA, answer=""), src(format="qa")).reason == "empty_content"


def test_broken_unicode_escape_is_an_error():
    record = json.loads('{"question": "이모지가 잘린 질문 \\ud83d 입니다", "answer": "네"}')
    err = error(record)
    assert (err.reason, err.field) == ("invalid_text", "question")
    assert "\\ud83d" in str(err)


# ----------------------------------------------------------------------------------------------------------------------
# Issue 20: list outputs, degenerate conversations, reasoning, RAFT rendered once
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output,field,problem", [
    ([], "output", "is an empty list"),
    (["진통", None], "output[1]", "must be text, got null"),
    (["진통", 3], "output[1]", "must be text, got a number"),
    ([["진통", "소염"], "파스"], "output[0]", "must be text, got a list"),
    (["진통", "  "], "output[1]", "is an empty string"),
    ([{"k": "v"}], "output[0]", "must be text, got an object"),
])
def test_alpaca_list_output_must_be_non_empty_strings(output, field, problem):
    err = error({"instruction": "키워드를 추출하세요.", "input": "진통 파스", "output": output})
    assert (err.reason, err.field) == ("bad_list", field)
    assert str(err).startswith(f"{field}: {problem}")


def test_keyword_lists_follow_the_same_rule_and_dicts_stay_json():
    assert error({"text": "진통 파스", "labels": []}).field == "labels"
    assert error({"text": "진통 파스", "labels": ["진통", None]}).field == "labels[1]"
    assert error(dict(SEED2_COLUMNS, assistant=[1, 2]), src(format="columns")).field == "assistant[0]"
    assert to_messages(SEED2_COLUMNS, src(), cfg())[-1]["content"].startswith('{"is_stock_related": true')


def test_conversation_without_a_user_turn_is_rejected():
    for turns in ([{"role": "assistant", "content": "안녕하세요"}],
                  [{"role": "system", "content": "규칙"}, {"role": "assistant", "content": "안녕하세요"}],
                  [{"role": "assistant", "content": "안녕하세요"}, {"role": "assistant", "content": "또 안녕하세요"}]):
        err = error({"messages": turns})
        assert err.reason == "no_user_turn" and err.field == f"messages[{1 if turns[0]['role'] == 'system' else 0}]"


def test_conversation_that_opens_with_the_assistant_is_kept_with_a_warning():
    turns = [{"role": "assistant", "content": "무엇을 도와드릴까요?"}, {"role": "user", "content": "환율 알려줘"},
             {"role": "assistant", "content": "오늘 원/달러 환율은 1,350원입니다."}]
    warnings = []
    assert to_messages({"messages": turns}, src(), cfg(), warnings=warnings) == turns
    assert [(w.reason, w.field) for w in warnings] == [("opens_with_assistant", "messages[0]")]
    warnings = []
    to_messages({"messages": turns[1:]}, src(), cfg(), warnings=warnings)
    assert warnings == []


@pytest.mark.parametrize("reply", ["<think>\n생각\n</think>\n\n", "<think></think>", "<think>\n\n</think>\n\n  \n"])
def test_a_reply_that_is_only_a_think_block_is_rejected(reply):
    err = error({"messages": [{"role": "user", "content": "질문"}, {"role": "assistant", "content": reply}]})
    assert (err.reason, err.field) == ("empty_content", "messages[1].content")


REASONING_TURNS = [{"role": "user", "content": "합병 비율은?"},
                   {"role": "assistant", "content": "\n주가 기준으로 정합니다.", "reasoning_content": "\n상법을 떠올린다.\n"}]


def test_reasoning_content_becomes_the_think_block_qwen3_renders(qwen3_tokenizer):
    from train.data.templates import render

    messages = to_messages({"messages": REASONING_TURNS}, src(), cfg(enable_thinking=True), warnings=[])
    assert messages[-1] == {"role": "assistant", "content": "<think>\n상법을 떠올린다.\n</think>\n\n주가 기준으로 정합니다."}
    # Qwen3's own template renders the field and the inline block identically (the reason for inlining it)
    data = cfg(enable_thinking=True)
    assert render(qwen3_tokenizer, messages, data) == render(qwen3_tokenizer, REASONING_TURNS, data)


def test_reasoning_content_without_thinking_is_dropped_and_counted():
    warnings = []
    messages = to_messages({"messages": REASONING_TURNS}, src(), cfg(enable_thinking=False), warnings=warnings)
    assert messages[-1] == {"role": "assistant", "content": "\n주가 기준으로 정합니다."}
    assert [(w.reason, w.field) for w in warnings] == [("reasoning_dropped", "messages[1].reasoning_content")]
    assert isinstance(warnings[0], RecordWarning) and "enable_thinking" in str(warnings[0])
    both = [REASONING_TURNS[0], dict(REASONING_TURNS[1], content="<think>\n또\n</think>\n\n답")]
    assert error({"messages": both}, data=cfg(enable_thinking=True)).reason == "reasoning_twice"
    assert error({"messages": [REASONING_TURNS[0], dict(REASONING_TURNS[1], reasoning_content=3)]}).reason == \
        "non_text_content"


RAFT_PAPER = dict(SEED3_RAFT, context=["[문서1] " + SEED3_RAFT["context"][0], "[문서 2] " + SEED3_RAFT["context"][1],
                                       "[Document 3]: " + SEED3_RAFT["context"][2]],
                  cot=SEED3_RAFT["cot"] + "\n<ANSWER>: 서울", answer="답변: " + SEED3_RAFT["answer"])


@pytest.mark.parametrize("shuffle", [False, True])
def test_raft_answer_and_passage_labels_are_rendered_once(shuffle):
    warnings = []
    user, assistant = to_messages(RAFT_PAPER, src(), cfg(shuffle_passages=shuffle, include_reasoning=True),
                                  warnings=warnings)
    # one label per passage, numbered by its shown position, and the passages' own labels gone
    assert [user["content"].count(f"[문서 {n}]") for n in (1, 2, 3)] == [1, 1, 1]
    assert "[문서1]" not in user["content"] and "[Document" not in user["content"]
    assert "[문서 2] [문서" not in user["content"] and sorted(
        user["content"].index(p) for p in SEED3_RAFT["context"]) == sorted(
        user["content"].index(f"[문서 {n}] ") + len(f"[문서 {n}] ") for n in (1, 2, 3))
    # the answer once, after the one answer label
    assert assistant["content"] == f"추론: {SEED3_RAFT['cot']}\n\n답변: {SEED3_RAFT['answer']}"
    assert [w.reason for w in warnings] == ["raft_answer_in_cot"]


def test_raft_cot_with_a_korean_answer_line_and_without_reasoning():
    record = dict(SEED3_RAFT, cot="첫 번째 문맥이 답한다.\n답변: 서울", answer="서울입니다.")
    assert to_messages(record, src(), cfg(include_reasoning=True))[-1]["content"] == \
        "추론: 첫 번째 문맥이 답한다.\n\n답변: 서울입니다."
    # '답변:' inside a sentence is not a final-answer section
    inline = dict(SEED3_RAFT, cot="이전 답변: 틀렸으므로 다시 본다.", answer="서울입니다.")
    assert to_messages(inline, src(), cfg(include_reasoning=True))[-1]["content"] == \
        "추론: 이전 답변: 틀렸으므로 다시 본다.\n\n답변: 서울입니다."
    # without reasoning the answer is the target as written
    assert to_messages(RAFT_PAPER, src(), cfg(include_reasoning=False))[-1]["content"] == RAFT_PAPER["answer"]
    assert error(dict(SEED3_RAFT, context=["[문서 1] ", "본문"])).field == "context[0]"

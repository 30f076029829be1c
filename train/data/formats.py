"""Turn one raw record of any supported format into validated OpenAI-style chat messages.

Every format ends as `[{"role": "system" | "user" | "assistant", "content": str}, ...]`: an optional system message
first, then user/assistant turns, the last one an assistant turn. A record that cannot become such a list raises
`RecordError`, whose `reason` is a short stable code (counted in the data report) and whose text names the field and
says how to fix it. The caller adds the file and line (see `train.data.quality.raise_or_count`).

Formats (named in `data.sources[].format`, or detected from a record's keys with `format: auto`):

- messages  `{"messages": [{"role": "user", "content": "..."}, ...]}` (OpenAI). ShareGPT's
            `{"conversations": [{"from": "human", "value": "..."}, ...]}` is read too: its role names go through
            the built-in table `SHAREGPT_ROLES` (human -> user, gpt -> assistant). Any other role name (`model`,
            `bot`, a typo such as `asistant`) is an error unless `data.role_aliases` maps it, e.g.
            `role_aliases: {model: assistant}`. A system message may only come first; the last turn must be the
            assistant's; a conversation without any user turn is rejected (`no_user_turn`: the reply would answer
            nothing), one that opens with the assistant before a later user turn is kept with a warning
            (`opens_with_assistant`). An assistant turn's `reasoning_content` (Qwen3's field) becomes a `<think>` block
            before the reply with `data.enable_thinking=true` (exactly what Qwen3's template renders from the field);
            with thinking off it is dropped and counted (`reasoning_dropped`).
- alpaca    `{"instruction", "input" (optional), "output"}`. user = instruction + "\\n\\n" + input.
            A list or dict output (seed 001's keywords) becomes JSON text, e.g. `["진통", "소염"]`. A list must be a
            non-empty list of non-empty strings (an empty list, null, a number or a nested list is rejected, naming
            the element, e.g. `output[2]`).
- raft      `{"instruction", "context" (list of passages or one string), "question", "answer", "cot" (optional)}`.
            user = instruction, the passages as "[문서 1] ...", then "질문: ...". `data.shuffle_passages` shuffles the
            passages with a seed derived from the question (the same record always gets the same order). A passage
            that already starts with its own label ("[문서2] ...", "[Document 2]") loses it: each passage is labelled
            once, by its shown position.
            With `data.include_reasoning` and a cot: assistant = "추론: <cot>\\n\\n답변: <answer>", else the answer alone.
            The answer is written once: a final-answer section the cot ends with ("<ANSWER>: ..." as in the RAFT
            paper, or a "답변: ..." line) is removed from the reasoning (counted as `raft_answer_in_cot`), and an
            answer that starts with such a label loses it.
- columns   one column per role (seed 002):
            `data.sources[].columns: {system: system_prompt, user: user_prompt, assistant: assistant}`.
            Detected when a record has `user_prompt`/`system_prompt` keys; then that mapping is the default.
            An empty or null system cell means no system prompt.
- qa        `{"question", "answer"}`; `data.sources[].system_prompt` becomes the system message (seed 004).
- keywords  `{"text", "labels": [...]}` (seed 001 level 4). user = source.instruction (or `DEFAULT_KEYWORD_INSTRUCTION`)
            + "\\n\\n" + text, assistant = the labels as a JSON list.

In every format `data.sources[].system_prompt` is added as the first message when the record has no system message.
Assistant targets that are lists or dicts are JSON-encoded with `ensure_ascii=False`; numbers, booleans and null are
errors (write them as strings), so nothing is silently converted.

A record that is kept but changed, or worth a look, gets a `RecordWarning` in the `warnings` list the caller passes
(counted by reason in the data report, like rejections).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:  # the schema imports this module for its format names
    from train.config import DataConfig, DataSource

ROLES = ("system", "user", "assistant")
FORMATS = ("messages", "alpaca", "raft", "columns", "qa", "keywords")

# ShareGPT role names, applied only to turns written as {"from": ..., "value": ...}.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}

DEFAULT_COLUMNS = {"system": "system_prompt", "user": "user_prompt", "assistant": "assistant"}
DEFAULT_KEYWORD_INSTRUCTION = "다음 문장에서 핵심 키워드를 추출하여 JSON 배열로 답하세요."
PASSAGE_LABEL = "[문서 {n}]"
QUESTION_LABEL = "질문: "
REASONING_LABEL = "추론: "
ANSWER_LABEL = "답변: "
# A label a passage may already start with: "[문서2]", "[문서 2]", "[Document 2]:", "[doc 3]", "[Passage 1]".
OWN_PASSAGE_LABEL = re.compile(r"\A\s*\[\s*(?:문서|문맥|document|doc|passage|context)\s*\d+\s*\]\s*[:.]?\s*", re.I)
# Where a cot's own final answer starts: "<ANSWER>:" anywhere (the RAFT paper's marker), or a line starting with "답변:".
COT_ANSWER = re.compile(r"<ANSWER>\s*:|(?:^|\n)[ \t]*" + re.escape(ANSWER_LABEL.strip()))
# The same labels at the start of an answer.
ANSWER_PREFIX = re.compile(r"\A\s*(?:<ANSWER>\s*:|" + re.escape(ANSWER_LABEL.strip()) + r")[ \t]*")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# What each format needs, as shown in error messages.
FORMAT_FIELDS = {
    "messages": "messages (or ShareGPT conversations)",
    "alpaca": "instruction, output (input optional)",
    "raft": "context, question, answer (instruction, cot optional)",
    "columns": "system_prompt (optional), user_prompt, assistant, or any names mapped in data.sources[].columns",
    "qa": "question, answer",
    "keywords": "text, labels",
}

# Columns a table (CSV, Parquet) must have for a named format; checked once per file before reading rows.
REQUIRED_COLUMNS = {
    "alpaca": ["instruction", "output"],
    "raft": ["context", "question", "answer"],
    "qa": ["question", "answer"],
    "keywords": ["text", "labels"],
}


class RecordError(ValueError):
    """A user-fixable problem in one record.

    reason: short stable code counted in the report ('missing_field', 'unknown_role', ...)
    field:  where in the record, e.g. 'messages[2].role' (None when the record as a whole is wrong)
    problem: what is wrong, hint: how to fix it. str(e) is "<field>: <problem>. <hint>".
    """

    def __init__(self, reason: str, problem: str, hint: str = "", field: Optional[str] = None):
        self.reason = reason
        self.problem = problem
        self.hint = hint
        self.field = field
        super().__init__(describe(field, problem, hint))


@dataclass(frozen=True)
class RecordWarning:
    """A record kept but changed, or worth a look: reason (a short stable code), field, what happened."""

    reason: str
    field: Optional[str]
    problem: str

    def __str__(self) -> str:
        return describe(self.field, self.problem, "")


def describe(field: Optional[str], problem: str, hint: str) -> str:
    """'<field>: <problem>. <hint>' with the parts that exist."""
    text = f"{field}: {problem}" if field else problem
    text = text.rstrip(".") + "."
    return f"{text} {hint}" if hint else text


# ----------------------------------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------------------------------


def detect_format(record: dict) -> str:
    """The format a record's keys point to. Raises RecordError('unknown_format') naming the keys found.

    Detection looks at distinctive keys, not at completeness, so that a record missing one field gets a precise
    'missing_field' error from `to_messages` rather than 'unknown_format'.
    """
    if not isinstance(record, dict):
        raise RecordError("bad_type", f"a record must be a JSON object, got {type(record).__name__}",
                          "Write one object per record, e.g. {\"messages\": [...]}.")
    keys = set(record)
    if keys & {"messages", "conversations"}:
        return "messages"
    if "context" in keys or {"instruction", "question"} <= keys:
        return "raft"
    if keys & {"user_prompt", "system_prompt"}:
        return "columns"
    if keys & {"instruction", "output"}:
        return "alpaca"
    if keys & {"question", "answer"}:
        return "qa"
    if keys & {"text", "labels"}:
        return "keywords"
    found = ", ".join(sorted(map(str, keys))) or "none"
    expected = "; ".join(f"{name} ({fields})" for name, fields in FORMAT_FIELDS.items())
    raise RecordError(
        "unknown_format",
        f"cannot tell the format from the keys found ({found})",
        f"Expected one of: {expected}. Rename the keys, or name the format and columns in the recipe, "
        "e.g. data.sources: [{path: ..., format: columns, columns: {user: my_question, assistant: my_answer}}].",
    )


def resolve_format(record: dict, source: DataSource) -> str:
    """The recipe's format if named, 'columns' when a column mapping is given, else the detected one."""
    if source.format != "auto":
        return source.format
    if source.columns:
        return "columns"
    return detect_format(record)


def required_columns(source: DataSource) -> List[str]:
    """Columns a CSV or Parquet file must have for this source ([] when the format is detected per record)."""
    if source.columns:
        return [source.columns[role] for role in ROLES if role in source.columns]
    return list(REQUIRED_COLUMNS.get(source.format, []))


# ----------------------------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------------------------


def to_messages(record: dict, source: DataSource, data: DataConfig, seed: int = 0,
                warnings: Optional[List[RecordWarning]] = None) -> List[Dict[str, str]]:
    """Validated [{'role', 'content'}] messages for one record. Raises RecordError on anything a user must fix; appends
    a RecordWarning to `warnings` (when given) for what it keeps but changes."""
    warnings = [] if warnings is None else warnings
    if not isinstance(record, dict):
        raise RecordError("bad_type", f"a record must be a JSON object, got {type(record).__name__}",
                          "Write one object per record.")
    fmt = resolve_format(record, source)
    if fmt == "messages":
        messages = _from_messages(record, data, warnings)
    elif fmt == "alpaca":
        messages = _from_alpaca(record)
    elif fmt == "raft":
        messages = _from_raft(record, source, data, seed, warnings)
    elif fmt == "columns":
        messages = _from_columns(record, source.columns or DEFAULT_COLUMNS, explicit=bool(source.columns))
    elif fmt == "qa":
        messages = _from_pair(record, "qa", "question", "answer")
    elif fmt == "keywords":
        messages = _from_keywords(record, source)
    else:  # the config validator rejects unknown names; this guards direct callers
        raise RecordError("unknown_format", f"format '{fmt}' is not one of {', '.join(FORMATS)}",
                          "Fix data.sources[].format.")
    if source.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": source.system_prompt})
    return messages


def _from_messages(record: dict, data: DataConfig, warnings: List[RecordWarning]) -> List[Dict[str, str]]:
    role_aliases = data.role_aliases
    key = "messages" if "messages" in record else "conversations"
    turns = record[key]
    if turns is None:
        raise RecordError("null_content", "is null", f"Give a list of turns, e.g. {_example_turns()}.", key)
    if not isinstance(turns, list):
        raise RecordError("bad_type", f"must be a list of turns, got {type(turns).__name__}",
                          f"Give a list of turns, e.g. {_example_turns()}.", key)
    if not turns:
        raise RecordError("empty_conversation", "has no turns", "Remove the record or add user and assistant turns.",
                          key)

    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError("bad_type", f"a turn must be an object, got {type(turn).__name__}",
                              f"Write turns as {_example_turns()}.", where)
        sharegpt = "from" in turn and "role" not in turn
        role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
        if role_key not in turn:
            raise RecordError("missing_field", f"the turn has no '{role_key}'",
                              f"Add '{role_key}' (one of {', '.join(ROLES)}) to every turn.", where)
        role = _role(turn[role_key], role_aliases, sharegpt, f"{where}.{role_key}")
        if content_key not in turn:
            raise RecordError("missing_field", f"the turn has no '{content_key}'",
                              f"Add '{content_key}' with the turn's text.", where)
        content = _content(turn[content_key], f"{where}.{content_key}")
        if role == "system" and i > 0:
            raise RecordError("misplaced_system", "a system message may only be the first turn",
                              "Move it to the start of the conversation or merge it into the first system message.",
                              f"{where}.{role_key}")
        if role != "system" and not content.strip():
            raise RecordError("empty_content", f"the {role} turn is empty",
                              "Write the turn's text or remove the record.", f"{where}.{content_key}")
        if role == "assistant":
            content = _with_reasoning(turn, content, data.enable_thinking, where, content_key, warnings)
        messages.append({"role": role, "content": content})

    if all(m["role"] == "system" for m in messages):
        raise RecordError("empty_conversation", "has only a system message",
                          "Add user and assistant turns or remove the record.", key)
    if messages[-1]["role"] == "user":
        raise RecordError("ends_on_user", "the conversation ends on a user turn, so there is no reply to learn",
                          "Add the assistant's reply as the last turn, or drop the trailing user turn.",
                          f"{key}[{len(messages) - 1}]")
    first = next(i for i, m in enumerate(messages) if m["role"] != "system")
    if not any(m["role"] == "user" for m in messages):
        raise RecordError("no_user_turn", "the conversation has no user turn, so the reply answers nothing",
                          "Add the user's message before the reply, or remove the record.", f"{key}[{first}]")
    if messages[first]["role"] == "assistant":
        warnings.append(RecordWarning("opens_with_assistant", f"{key}[{first}]",
                                      "the conversation opens with the assistant: that turn is trained as a reply to "
                                      "the system prompt alone (Gemma's template refuses such a conversation)"))
    return messages


def _with_reasoning(turn: dict, content: str, thinking: bool, where: str, content_key: str,
                    warnings: List[RecordWarning]) -> str:
    """An assistant turn's text with its `reasoning_content` as a <think> block before it (thinking mode), or without
    it (no-think mode: dropped and counted). A reply that is only a think block has no answer and is refused."""
    answer = content.split(THINK_CLOSE)[-1] if THINK_CLOSE in content else content
    if not answer.strip():
        raise RecordError("empty_content", "the reply is only a think block, with no answer after it",
                          "Write the answer after </think>, or remove the record.", f"{where}.{content_key}")
    reasoning = turn.get("reasoning_content")
    if reasoning is None:
        return content
    reasoning = _content(reasoning, f"{where}.reasoning_content")
    if not reasoning.strip():
        return content
    if not thinking:
        warnings.append(RecordWarning("reasoning_dropped", f"{where}.reasoning_content",
                                      "dropped: data.enable_thinking=false trains the answer alone (set it to true to "
                                      "train the reasoning)"))
        return content
    if THINK_CLOSE in content:
        raise RecordError("reasoning_twice", "the turn has both reasoning_content and a <think> block in its text",
                          "Keep the reasoning in one place.", f"{where}.reasoning_content")
    # Qwen3's template renders reasoning_content as exactly this block (reasoning stripped of newlines, answer lstripped
    # of them)
    return f"{THINK_OPEN}\n{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{content.lstrip(chr(10))}"


def _role(value: Any, role_aliases: Dict[str, str], sharegpt: bool, where: str) -> str:
    if not isinstance(value, str):
        raise RecordError("bad_type", f"a role must be text, got {_type_name(value)}",
                          f"Use one of {', '.join(ROLES)}.", where)
    if value in role_aliases:
        return role_aliases[value]
    if sharegpt and value in SHAREGPT_ROLES:
        return SHAREGPT_ROLES[value]
    if value in ROLES:
        return value
    known = list(ROLES) + (list(SHAREGPT_ROLES) if sharegpt else [])
    close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
    target = SHAREGPT_ROLES.get(close[0], close[0]) if close else "assistant"
    guess = f"Did you mean '{close[0]}'? " if close else ""
    raise RecordError(
        "unknown_role", f"role '{value}' is not one of {', '.join(ROLES)}",
        f"{guess}Fix the role, or map the name explicitly in the recipe: data.role_aliases: {{{value}: {target}}}.",
        where,
    )


def _content(value: Any, where: str) -> str:
    if value is None:
        raise RecordError("null_content", "is null", "Write the text, or remove the turn or the record.", where)
    if not isinstance(value, str):
        hint = ("Join the text parts into one string; lists of content parts (images, tool calls) are not supported."
                if isinstance(value, list) else "Write it as a string (in quotes).")
        raise RecordError("non_text_content", f"must be text, got {_type_name(value)}", hint, where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # JSON escapes such as "\ud83d" without their pair: no tokenizer accepts them
        raise RecordError("invalid_text", f"holds an unpaired surrogate {value[e.start]!a} at character {e.start}",
                          "Fix the broken \\u escape (often a cut-off emoji) or remove the character.", where) from None
    return value


def _from_alpaca(record: dict) -> List[Dict[str, str]]:
    instruction = _required_text(record, "instruction", "alpaca")
    extra = _optional_text(record, "input")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _target(record, "output", "alpaca")}]


def _from_raft(record: dict, source: DataSource, data: DataConfig, seed: int,
               warnings: List[RecordWarning]) -> List[Dict[str, str]]:
    instruction = _optional_text(record, "instruction")
    if instruction is None:
        instruction = source.instruction
    question = _required_text(record, "question", "raft")
    passages = [OWN_PASSAGE_LABEL.sub("", p, count=1) for p in _passages(record)]  # labelled once, below
    if data.shuffle_passages and len(passages) > 1:
        passages = shuffled_passages(passages, question, seed)
    numbered = "\n\n".join(f"{PASSAGE_LABEL.format(n=n)} {p}" for n, p in enumerate(passages, 1))
    parts = [instruction] if instruction and instruction.strip() else []
    user = "\n\n".join(parts + [numbered, QUESTION_LABEL + question])

    answer = _required_text(record, "answer", "raft")
    cot = _optional_text(record, "cot")
    if data.include_reasoning and cot and cot.strip():
        marker = COT_ANSWER.search(cot)
        if marker:  # the cot ends with its own final answer: the answer is written once, from `answer`
            cot = cot[:marker.start()].rstrip()
            warnings.append(RecordWarning("raft_answer_in_cot", "cot",
                                          f"its final-answer section ({marker.group().strip()!r} ...) was removed; the "
                                          f"answer is written once, after {ANSWER_LABEL.strip()!r}, from 'answer'"))
        answer = ANSWER_PREFIX.sub("", answer, count=1) or answer
    if data.include_reasoning and cot and cot.strip():
        assistant = f"{REASONING_LABEL}{cot}\n\n{ANSWER_LABEL}{answer}"
    else:
        assistant = answer
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _passages(record: dict) -> List[str]:
    if "context" not in record:
        raise _missing("context", "raft")
    context = record["context"]
    if context is None:
        raise RecordError("null_content", "is null", "Give the passages as a list of strings.", "context")
    if isinstance(context, str):
        context = [context]
    if not isinstance(context, list):
        raise RecordError("non_text_content", f"must be a list of passages or one string, got {_type_name(context)}",
                          "Give the passages as a list of strings.", "context")
    if not context:
        raise RecordError("empty_content", "has no passages", "Give at least one passage.", "context")
    for i, passage in enumerate(context):
        if passage is None:
            raise RecordError("null_content", "is null", "Remove the passage or write its text.", f"context[{i}]")
        if not isinstance(passage, str):
            raise RecordError("non_text_content", f"must be text, got {_type_name(passage)}",
                              "Write every passage as a string.", f"context[{i}]")
        if not OWN_PASSAGE_LABEL.sub("", passage, count=1).strip():
            raise RecordError("empty_content", "is empty", "Remove the empty passage.", f"context[{i}]")
    return list(context)


def shuffled_passages(passages: List[str], question: str, seed: int) -> List[str]:
    """The passages in an order fixed by seed and question (same record, same order; different records differ)."""
    digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
    rng = random.Random(seed + int.from_bytes(digest, "big"))
    order = list(passages)
    rng.shuffle(order)
    return order


def _from_columns(record: dict, columns: Dict[str, str], explicit: bool) -> List[Dict[str, str]]:
    messages = []
    system_column = columns.get("system")
    if system_column is not None:
        if system_column not in record and explicit:
            raise _missing(system_column, "columns", mapped="system")
        system = _optional_text(record, system_column)
        if system and system.strip():  # an empty or null system cell means "no system prompt"
            messages.append({"role": "system", "content": system})
    user_column, assistant_column = columns["user"], columns["assistant"]
    if user_column not in record:
        raise _missing(user_column, "columns", mapped="user")
    messages.append({"role": "user", "content": _required_text(record, user_column, "columns")})
    if assistant_column not in record:
        raise _missing(assistant_column, "columns", mapped="assistant")
    messages.append({"role": "assistant", "content": _target(record, assistant_column, "columns")})
    return messages


def _from_pair(record: dict, fmt: str, user_key: str, assistant_key: str) -> List[Dict[str, str]]:
    user = _required_text(record, user_key, fmt)
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _target(record, assistant_key, fmt)}]


def _from_keywords(record: dict, source: DataSource) -> List[Dict[str, str]]:
    text = _required_text(record, "text", "keywords")
    if "labels" not in record:
        raise _missing("labels", "keywords")
    labels = record["labels"]
    if labels is None:
        raise RecordError("null_content", "is null", "Give the keywords as a list of strings, e.g. [\"진통\", \"파스\"].",
                          "labels")
    if not isinstance(labels, list):
        raise RecordError("bad_type", f"must be a list of strings, got {_type_name(labels)}",
                          "Give the keywords as a list of strings, e.g. [\"진통\", \"파스\"].", "labels")
    _check_list(labels, "labels")
    instruction = source.instruction or DEFAULT_KEYWORD_INSTRUCTION
    return [{"role": "user", "content": f"{instruction}\n\n{text}"},
            {"role": "assistant", "content": json.dumps(labels, ensure_ascii=False)}]


# ----------------------------------------------------------------------------------------------------------------------
# Field helpers
# ----------------------------------------------------------------------------------------------------------------------


def _required_text(record: dict, key: str, fmt: str) -> str:
    if key not in record:
        raise _missing(key, fmt)
    value = _content(record[key], key)
    if not value.strip():
        raise RecordError("empty_content", "is empty", "Write the text or remove the record.", key)
    return value


def _optional_text(record: dict, key: str) -> Optional[str]:
    """An optional text field: None when absent or null, else validated text."""
    value = record.get(key)
    return None if value is None else _content(value, key)


def _target(record: dict, key: str, fmt: str) -> str:
    """An assistant target: text as is, a list or dict as JSON (ensure_ascii=False); anything else is an error."""
    if key not in record:
        raise _missing(key, fmt)
    value = record[key]
    if isinstance(value, list):
        _check_list(value, key)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    value = _content(value, key)
    if not value.strip():
        raise RecordError("empty_content", "is empty", "Write the expected answer or remove the record.", key)
    return value


def _check_list(value: list, key: str) -> None:
    """A list target (keywords) must be a non-empty list of non-empty strings; the first offending element is named."""
    hint = "A list answer must be keywords: a non-empty list of non-empty strings, e.g. [\"진통\", \"파스\"]."
    if not value:
        raise RecordError("bad_list", "is an empty list, so there is nothing to learn", hint, key)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordError("bad_list", f"must be text, got {_type_name(item)}", hint, f"{key}[{i}]")
        if not item.strip():
            raise RecordError("bad_list", "is an empty string", hint, f"{key}[{i}]")


def _missing(key: str, fmt: str, mapped: Optional[str] = None) -> RecordError:
    if mapped:
        hint = (f"Add the column '{key}' or fix data.sources[].columns.{mapped} to name the column that holds the "
                f"{mapped} text.")
    else:
        hint = (f"Format '{fmt}' needs {FORMAT_FIELDS[fmt]}. Add '{key}' to the record, or set "
                "data.sources[].format if the format was detected wrongly.")
    return RecordError("missing_field", "is missing", hint, key)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__)


def _example_turns() -> str:
    return '[{"role": "user", "content": "안녕하세요"}, {"role": "assistant", "content": "네, 무엇을 도와드릴까요?"}]'

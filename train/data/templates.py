"""Chat templates: which one a run uses, tokenizer setup (pad, added tokens), rendering, and the template's layout.

`data.template` picks the template:
  auto       the tokenizer's own chat_template if it has one, else chatml
  tokenizer  the tokenizer's own (an error if it has none)
  llama3 | qwen3 | gemma | exaone | chatml   a built-in copy of that model family's official template

Training and inference render through the same function (`render` / `generation_prompt`), with the same
`enable_thinking`, so the prompt the model sees at evaluation is exactly the prefix it was trained on.

`template_layout` learns, by rendering a few probe conversations and diffing them, where a template puts the assistant
header, the generation prompt and the end-of-turn token. `labels.py` uses it to find assistant turns in any template
without `{% generation %}` tags; nothing here is hard-coded per model except the built-in template texts.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from tokenizers import AddedToken

from train.errors import UserError

if TYPE_CHECKING:  # the schema imports this module for its template names
    from train.config import DataConfig

# ----------------------------------------------------------------------------------------------------------------------
# Built-in templates, copied from the official tokenizer_config.json files (outputs are byte-identical; the tests render
# them against the real Qwen3, Llama-3 and Gemma-3 tokenizers' own templates).
# ----------------------------------------------------------------------------------------------------------------------

# Meta-Llama-3-8B-Instruct. (Llama-3.1's template additionally writes "Cutting Knowledge Date" lines and tool
# blocks into the system turn; with template=auto a 3.1 tokenizer keeps its own template.)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Qwen3 (Qwen/Qwen3-8B): <think> reasoning, enable_thinking=false writes an empty think block into the generation
# prompt, and reasoning of assistant turns before the last user query is dropped.
QWEN3 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# Gemma-3 instruct: no system turn (the system prompt is prefixed to the first user turn), assistant role is "model".
GEMMA = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
"""

# LG EXAONE-3.0/3.5 instruct: user turns end with a newline, system and assistant turns with [|endofturn|].
EXAONE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '[|system|][|endofturn|]\n' }}{% endif %}{{ '[|' + message['role'] + '|]' + message['content'] }}"
    "{% if message['role'] == 'user' %}{{ '\n' }}{% else %}{{ '[|endofturn|]\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
)

# ChatML, for tokenizers that ship no template.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

NAMED_TEMPLATES: Dict[str, str] = {"llama3": LLAMA3, "qwen3": QWEN3, "gemma": GEMMA, "exaone": EXAONE, "chatml": CHATML}

# The control tokens each built-in template writes. A tokenizer that lacks one gets it added as a special token, so it
# is one token (the model can learn to emit and stop on it) and a user can't produce it by typing its pieces.
TEMPLATE_MARKERS: Dict[str, Tuple[str, ...]] = {
    "llama3": ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    "qwen3": ("<|im_start|>", "<|im_end|>"),
    "gemma": ("<start_of_turn>", "<end_of_turn>"),
    "exaone": ("[|system|]", "[|user|]", "[|assistant|]", "[|endofturn|]"),
    "chatml": ("<|im_start|>", "<|im_end|>"),
}

# Existing tokens that serve as a padding token distinct from eos, in order of preference.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "[PAD]", "<|pad|>",
                  "<|reserved_special_token_0|>")
NEW_PAD_TOKEN = "<|pad|>"


class TemplateError(UserError, RuntimeError):
    """The chosen chat template cannot be used (a setting to fix, not a bad record). The message says how to fix it."""


# ----------------------------------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------------------------------


def _own_template(tokenizer) -> Optional[str]:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is the chat template
        template = template.get("default")
    return template or None


def choose_template(tokenizer, name: str) -> Tuple[str, str]:
    """Return (name, template text) for data.template = auto | tokenizer | a built-in name."""
    own = _own_template(tokenizer)
    if name == "auto":
        return ("tokenizer", own) if own else ("chatml", CHATML)
    if name == "tokenizer":
        if not own:
            where = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise TemplateError(f"data.template: tokenizer '{where}' has no chat_template. Set data.template to one "
                                f"of {', '.join(NAMED_TEMPLATES)} (chatml suits a base model), or to auto")
        return "tokenizer", own
    if name not in NAMED_TEMPLATES:
        raise TemplateError(f"data.template: unknown template '{name}'. Use auto, tokenizer or one of "
                            f"{', '.join(NAMED_TEMPLATES)}")
    return name, NAMED_TEMPLATES[name]


def _is_single_token(tokenizer, text: str) -> bool:
    return len(tokenizer.encode(text, add_special_tokens=False)) == 1


def setup_tokenizer(tokenizer, data: DataConfig) -> dict:
    """Set the chat template, a pad token distinct from eos, and the domain tokens; return what changed.

    Mutates `tokenizer` in place. Added tokens grow `len(tokenizer)`: the model's embeddings must be resized to it.
    Returns {'template', 'pad_token', 'pad_token_id', 'pad_changed', 'added_tokens', 'added_special_tokens',
    'added_domain_tokens', 'end_of_turn', 'end_of_turn_id', 'vocab_size'}.
    """
    name, template = choose_template(tokenizer, data.template)
    tokenizer.chat_template = template

    # 1. Control tokens of a built-in template become single special tokens.
    missing = [m for m in TEMPLATE_MARKERS.get(name, ()) if not _is_single_token(tokenizer, m)]
    added_special = tokenizer.add_tokens([AddedToken(m, special=True, normalized=False) for m in missing],
                                         special_tokens=True) if missing else 0

    # 2. Pad: distinct from eos and from the end-of-turn token, so that neither is ever mistaken for padding.
    layout = template_layout(tokenizer, data)
    taken = {tokenizer.eos_token, tokenizer.bos_token, layout.end_of_turn}
    pad_changed, added_pad = False, 0
    if tokenizer.pad_token is None or tokenizer.pad_token in taken:
        vocab = tokenizer.get_vocab()
        pad = next((c for c in PAD_CANDIDATES if c in vocab and c not in taken and c not in template), None)
        if pad is None:
            pad = NEW_PAD_TOKEN
            added_pad = tokenizer.add_tokens([AddedToken(pad, special=True, normalized=False)], special_tokens=True)
        tokenizer.pad_token = pad
        pad_changed = True

    # 3. Domain tokens (seed 001, level 5): ordinary tokens, so they decode as plain text, each one id.
    domain = [t for t in data.add_tokens if t]
    added_domain = (tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in domain])
                    if domain else 0)

    return {
        "template": name,
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "pad_changed": pad_changed,
        "added_tokens": added_special + added_pad + added_domain,
        "added_special_tokens": missing + ([NEW_PAD_TOKEN] if added_pad else []),
        "added_domain_tokens": added_domain,
        "end_of_turn": layout.end_of_turn,
        "end_of_turn_id": layout.end_of_turn_id,
        "vocab_size": len(tokenizer),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------


def render(tokenizer, messages: List[dict], data: DataConfig, add_generation_prompt: bool = False) -> str:
    """The conversation as text, through the tokenizer's chat template (enable_thinking passed; others ignore it)."""
    # A template that writes bos_token (llama3, gemma) on a tokenizer without one writes nothing there.
    missing = {k: "" for k in ("bos_token", "eos_token") if getattr(tokenizer, k, None) is None}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         enable_thinking=data.enable_thinking, **missing)


def generation_prompt(tokenizer, messages: List[dict], data: DataConfig) -> str:
    """The text to feed at inference: the conversation up to (not including) its final assistant reply, followed by
    the template's generation prompt in the thinking mode the model was trained with. A conversation that ends with an
    assistant message (a training sample) has that message removed first."""
    if messages and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    return render(tokenizer, messages, data, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------------------------------------
# Layout: what the template writes around each turn, learnt from probe conversations.
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateLayout:
    generation_prompt: str  # appended by add_generation_prompt, e.g. '<|im_start|>assistant\n' (+ empty think block)
    assistant_header: str  # the part of it every assistant turn starts with, e.g. '<|im_start|>assistant\n'
    assistant_ends: Tuple[str, ...]  # what follows assistant content and is trained, e.g. ('<|im_end|>',)
    user_end: str  # what follows user content, e.g. '<|im_end|>\n' (EXAONE: '\n')
    system_end: Optional[str]  # what follows system content; None if the template can't render a system message
    end_of_turn: str  # the end-of-turn token, e.g. '<|eot_id|>'
    end_of_turn_id: int
    bos_id: Optional[int]  # the BOS the tokenizer normally prepends (None if it prepends none)


_PROBE = {"system": "PROBESYSTEMTEXT", "u1": "PROBEUSERONE", "a1": "PROBEASSISTANTONE", "u2": "PROBEUSERTWO",
          "a2": "PROBEASSISTANTTWO"}
_layout_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def special_strings(tokenizer) -> List[str]:
    """The tokenizer's special-token strings (special added tokens and the named special tokens), longest first."""
    specials = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    specials.update(t for t in tokenizer.all_special_tokens if t)
    return sorted(specials, key=len, reverse=True)  # longest first: a token wins over tokens it contains


def _through_first_special(text: str, specials: List[str]) -> Optional[str]:
    """`text` up to and including its first special token, if only whitespace comes before that token."""
    stripped = text.lstrip()
    lead = len(text) - len(stripped)
    for token in specials:
        if stripped.startswith(token):
            return text[: lead + len(token)]
    return None


def _longest_shared_prefix(prompt: str, *segments: str) -> str:
    """The longest prefix of `prompt` that occurs in every segment (the assistant header inside a generation prompt)."""
    for k in range(len(prompt), 0, -1):
        if all(prompt[:k] in s for s in segments):
            return prompt[:k]
    return ""


def template_layout(tokenizer, data: DataConfig) -> TemplateLayout:
    """Probe the tokenizer's current chat template (cached per tokenizer, template, thinking mode and vocabulary)."""
    own = _own_template(tokenizer)
    key = (own, data.template, data.enable_thinking, len(tokenizer))
    per_tokenizer = _layout_cache.setdefault(tokenizer, {})
    if key not in per_tokenizer:
        expected = NAMED_TEMPLATES.get(data.template, own) if data.template != "auto" else (own or CHATML)
        if own is None or own != expected:
            raise TemplateError(f"the tokenizer's chat template is not the one data.template={data.template} "
                                f"selects: call train.data.templates.setup_tokenizer(tokenizer, data) first")
        per_tokenizer[key] = _probe_layout(tokenizer, data)
    return per_tokenizer[key]


def _probe_layout(tokenizer, data: DataConfig) -> TemplateLayout:
    p = _PROBE
    u1, a1 = {"role": "user", "content": p["u1"]}, {"role": "assistant", "content": p["a1"]}
    u2, a2 = {"role": "user", "content": p["u2"]}, {"role": "assistant", "content": p["a2"]}
    fix = "Choose a built-in template with data.template (llama3, qwen3, gemma, exaone or chatml)"
    try:
        prompt_only = render(tokenizer, [u1], data)
        with_prompt = render(tokenizer, [u1], data, add_generation_prompt=True)
        two_turns = render(tokenizer, [u1, a1, u2, a2], data)
    except Exception as e:  # noqa: BLE001 - any template failure is reported with the fix
        raise TemplateError(f"the chat template cannot render a plain user/assistant conversation ({e}). "
                            f"{fix}") from None
    if not with_prompt.startswith(prompt_only) or len(with_prompt) == len(prompt_only):
        raise TemplateError(f"the chat template writes no generation prompt for add_generation_prompt=True, so "
                            f"inference could not match training. {fix}")
    gen = with_prompt[len(prompt_only):]

    def between(text: str, left: str, right: str) -> str:
        start = text.index(left) + len(left)
        return text[start: text.index(right, start)]

    try:
        before_a1 = between(two_turns, p["u1"], p["a1"])  # user end + header of a historical assistant turn
        before_a2 = between(two_turns, p["u2"], p["a2"])  # user end + header (+ think block) of the last turn
        after_a1 = between(two_turns, p["a1"], p["u2"])  # end of a historical assistant turn + user header
    except ValueError:
        raise TemplateError(f"the chat template drops or rewrites message text, so assistant turns cannot be "
                            f"located. {fix}") from None
    after_a2 = two_turns[two_turns.index(p["a2"]) + len(p["a2"]):]
    header = _longest_shared_prefix(gen, before_a1, before_a2)
    if not header:
        raise TemplateError(f"the generation prompt {gen!r} does not open the assistant turns of this chat "
                            f"template. {fix}")
    user_end = before_a1[: before_a1.rindex(header)]

    specials = special_strings(tokenizer)
    ends = []
    for after in (after_a2, after_a1):
        end = _through_first_special(after, specials)
        if end is None:
            raise TemplateError(f"the chat template ends assistant turns with {after[:40]!r}, which is not a "
                                f"special token, so the model could not learn to stop. {fix}")
        if end not in ends:
            ends.append(end)
    end_of_turn = ends[0].strip()
    user_header = after_a1[len(_through_first_special(after_a1, specials)):].lstrip()

    system_end = None
    try:
        with_system = render(tokenizer, [{"role": "system", "content": p["system"]}, u1], data)
        system_end = between(with_system, p["system"], p["u1"])
        if user_header and system_end.endswith(user_header):
            system_end = system_end[: -len(user_header)]
    except Exception:  # noqa: BLE001 - a template without system support raises; system messages then fail to render
        system_end = None

    with_special = tokenizer.encode("a", add_special_tokens=True)
    without = tokenizer.encode("a", add_special_tokens=False)
    bos_id = tokenizer.bos_token_id
    adds_bos = bos_id is not None and len(with_special) > len(without) and with_special[0] == bos_id
    return TemplateLayout(generation_prompt=gen, assistant_header=header, assistant_ends=tuple(ends),
                          user_end=user_end, system_end=system_end or None, end_of_turn=end_of_turn,
                          end_of_turn_id=tokenizer.convert_tokens_to_ids(end_of_turn),
                          bos_id=bos_id if adds_bos else None)

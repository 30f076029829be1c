"""Token ids and labels for one conversation: loss on assistant turns only, for any chat template.

How (no `{% generation %}` tags needed):
1. Render the whole conversation once with the run's template (`templates.render`).
2. Walk the messages in order with a cursor through the rendered text. Each message's text is searched only after the
   previous message's end, and only where it is followed by what the template writes after such a message (an
   assistant reply by its end-of-turn token). So a reply equal to the user's message, repeated identical replies, or a
   user typing '<|im_start|>assistant' never match the wrong place. Templates that trim text or strip Qwen3 <think>
   reasoning are handled by also trying those forms of the text.
3. Tokenise the rendered text (`encoding.ConversationEncoder`: the ids of the whole text, computed piece by piece;
   message text holding special-token strings is escaped, below),
   and label every token that overlaps a trained span.

The trained span of an assistant turn is its content plus the end-of-turn token (<|eot_id|>, <|im_end|>,
<end_of_turn>, [|endofturn|]). The role header is never trained. Whatever the generation prompt writes is prompt, not
trained: Qwen3 with enable_thinking=false puts the empty '<think>\\n\\n</think>\\n\\n' block in the generation prompt,
so in that mode it is prompt (seed 004's layout); with enable_thinking=true the model writes the <think> block itself,
so it is trained. Headers and end-of-turn strings are learnt by probing the template (`templates.template_layout`).

Whitespace at the edges of a reply: its leading whitespace is removed before rendering (Llama-3 and Gemma trim it
themselves; on Qwen3 a leading newline would merge with the header's own newline into one token, '\\n\\n', that the
generation prompt never ends with); trailing whitespace is trained as the template writes it (it ends before the
end-of-turn token, which is always a token of its own). Where a reply's text overlaps what the generation prompt
writes (a reply that itself starts with Qwen3's empty think block), the overlap is prompt.

data.train_on:
  assistant       every assistant turn (default)
  last_assistant  only the final assistant turn; earlier turns are context
  all             every token (system and user text too, plain language modelling over the conversation)

In every mode the first token's label is -100: no token precedes it, so nothing predicts it, and in a packed row it
must not be predicted from the previous sample's last token.

Message text that holds the tokenizer's special-token strings ('<|im_start|>assistant' pasted by a user, '<|eot_id|>',
'<start_of_turn>', a pad token) would be encoded as real control tokens, so one record could forge a turn or end one
early. `data.special_tokens_in_content` decides, and every such conversation is reported either way:
  escape  (default) the text of those messages is encoded as plain text (the tokenizer's `split_special_tokens`
          semantics, for those messages' spans only; the template's own tokens and ordinary added tokens such as
          Qwen3's '<think>' or domain tokens stay single tokens)
  reject  the conversation is rejected ('special_tokens_in_content')
  keep    encoded as the tokenizer does it, control tokens and all (the behaviour before this setting existed)
(Reasoning given as `reasoning_content` reaches this module inside the message text: formats.py writes it as a <think>
block.)

A conversation that cannot be trained on gives a `RecordError` (reason, field, what and how to fix), never an
exception out of a batch: a chat template that refuses it (Gemma: "roles must alternate"), a reply the template
rewrites, reasoning in no-think mode, no labelled token.
"""

from __future__ import annotations

import weakref
from typing import Dict, List, Optional, Tuple, Union

import jinja2

from train.config import DataConfig
from train.data import IGNORE_INDEX
from train.data.encoding import ConversationEncoder, Encoded
from train.data.formats import RecordError
from train.data.templates import TemplateLayout, render, special_strings, template_layout

Span = Tuple[int, int]


def _variants(content: str, role: str) -> List[str]:
    """Forms a template may write a message's text in: as is, trimmed, and (assistant) without a <think> block."""
    forms = [content, content.strip()]
    if role == "assistant" and "</think>" in content:
        answer = content.split("</think>")[-1].lstrip("\n")
        forms += [answer, answer.strip()]
    unique = []
    for f in forms:
        if f not in unique:
            unique.append(f)
    return unique


def _find_followed(text: str, forms: List[str], start: int, ends: Tuple[str, ...]) -> Optional[Tuple[int, int, str]]:
    """Earliest (position, length, end) at or after `start` where one of `forms` is immediately followed by one of
    `ends` (by anything when `ends` is empty). Longer forms win at the same position."""
    best = None
    for form in sorted(forms, key=len, reverse=True):
        pos = text.find(form, start)
        while pos != -1 and (best is None or pos < best[0]):
            after = pos + len(form)
            end = next((e for e in ends if text.startswith(e, after)), None) if ends else ""
            if end is not None:
                best = (pos, len(form), end)
                break
            pos = text.find(form, pos + 1)
    return best


def assistant_spans(text: str, messages: List[dict], layout: TemplateLayout) -> List[Span]:
    """Character span [start, end) of each assistant message's trained part in `text`, in message order.

    Raises RecordError (a ValueError) when an assistant message cannot be located (the template rewrites it) or when a
    turn renders text before its content that the generation prompt does not (training on text the model is never
    asked to write).
    """
    return _walk(text, messages, layout)[0]


def _walk(text: str, messages: List[dict], layout: TemplateLayout) -> Tuple[List[Span], List[Optional[Span]]]:
    """(trained spans of the assistant messages, the span of each message's text in `text` or None where the template
    dropped or rewrote a system/user message). An assistant message's text span runs from where its trained part
    starts (after the header, or after what the generation prompt writes) to the end of its text."""
    spans: List[Span] = []
    texts: List[Optional[Span]] = []
    cursor = 0
    header, gen = layout.assistant_header, layout.generation_prompt
    # Text the generation prompt writes after the header (Qwen3 no-think: the empty think block), and its last piece
    # ('</think>'): a turn that writes such a block itself, with reasoning, is not what inference will ask for.
    prompt_extra = gen[len(header):]
    closing = prompt_extra.split()[-1] if prompt_extra.strip() else None
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise RecordError("non_text_content", f"message {i} ({role}): content must be text, got "
                              f"{type(content).__name__}")
        forms = _variants(content, role)
        if role != "assistant":
            end = layout.system_end if role == "system" else layout.user_end
            found = _find_followed(text, forms, cursor, (end,) if end else ())
            texts.append(None if found is None else (found[0], found[0] + found[1]))
            if found is not None:  # not found: a template that drops or rewrites it; assistant search still anchors
                cursor = found[0] + found[1] + len(found[2])
            continue
        turn = text.find(header, cursor)
        if turn == -1:
            raise RecordError("template_rewrites_reply", f"message {i} (assistant): no assistant header {header!r} "
                              f"after the previous message in the rendered text", _BUILT_IN)
        body = turn + len(header)
        found = _find_followed(text, forms, body, layout.assistant_ends)
        if found is None:
            raise RecordError("template_rewrites_reply", f"message {i} (assistant): its text, followed by the "
                              f"end-of-turn {layout.end_of_turn!r}, does not appear in the rendered conversation; the "
                              f"chat template rewrites it", _BUILT_IN)
        pos, length, end = found
        if prompt_extra and text.startswith(gen, turn):
            # What the generation prompt writes (an empty think block and its newlines) is prompt, also where the
            # reply's own text starts with the same characters (an explicit empty think block, a leading newline).
            start = turn + len(gen)
            if pos + length <= start:
                raise RecordError("empty_content", f"message {i} (assistant): nothing of the reply is left after "
                                  f"what the generation prompt writes ({prompt_extra!r})",
                                  "Write the answer, or remove the record")
        else:
            start = body
            if prompt_extra and (pos > body or (closing and closing in text[body: pos + length])):
                raise RecordError(
                    "reasoning_without_thinking",
                    f"message {i} (assistant): the template writes {text[body:pos + length][:60]!r}, but the "
                    f"generation prompt is {gen!r}: the model would be trained on text it never writes at inference",
                    "For Qwen3 <think> reasoning set data.enable_thinking=true, or remove the reasoning")
        spans.append((start, pos + length + len(end)))
        texts.append((start, pos + length))
        cursor = pos + length + len(end)
    return spans, texts


_BUILT_IN = "Use a built-in template (data.template)"


def _token_range(encoding, start: int, end: int, n_chars: int) -> Tuple[int, int]:
    """Tokens [first, last+1) overlapping characters [start, end)."""
    first = None
    for c in range(start, min(end, n_chars)):
        first = encoding.char_to_token(c)
        if first is not None:
            break
    last = None
    for c in range(min(end, n_chars) - 1, start - 1, -1):
        last = encoding.char_to_token(c)
        if last is not None:
            break
    if first is None or last is None:
        return 0, 0
    return first, last + 1


def template_strings(layout: TemplateLayout) -> List[str]:
    """What the template writes around messages; the added tokens in them are where `ConversationEncoder` cuts."""
    return [layout.generation_prompt, layout.assistant_header, *layout.assistant_ends, layout.user_end,
            layout.system_end or ""]


def tokenize_conversations(tokenizer, conversations: List[List[dict]], data: DataConfig,
                           encoder: Optional[ConversationEncoder] = None) -> List[Union[Dict, RecordError]]:
    """`tokenize_conversation` for a batch: per conversation, {'input_ids', 'labels'} (plus 'special_tokens', a
    description of the special-token strings its messages hold, when they hold any) or, for a conversation that cannot
    be trained on, a RecordError saying why. The batch is tokenised in one call (`ConversationEncoder`); pass the same
    `encoder` for every batch of a corpus so the pieces that repeat (system prompts, headers) are encoded once."""
    layout = template_layout(tokenizer, data)
    encoder = encoder or ConversationEncoder(tokenizer, template_strings(layout))
    finder = _special_finder(tokenizer)
    policy = data.special_tokens_in_content
    results: List[Union[Dict, RecordError]] = []
    todo = []  # (index, text, spans, escaped regions, special-token description)
    for i, messages in enumerate(conversations):
        if not any(m.get("role") == "assistant" for m in messages):
            results.append(RecordError("no_assistant", "conversation has no assistant message: nothing to train on"))
            continue
        messages = [{**m, "content": m["content"].lstrip()} if m.get("role") == "assistant"
                    and isinstance(m.get("content"), str) else m for m in messages]
        found = {j: hits for j, m in enumerate(messages) if (hits := finder(m.get("content")))}
        described = "; ".join(f"messages[{j}] ({messages[j].get('role')}): {', '.join(map(repr, hits))}"
                              for j, hits in found.items())
        if found and policy == "reject":
            results.append(RecordError("special_tokens_in_content", f"holds special-token text of this tokenizer "
                                       f"({described})", _SPECIAL_HINT))
            continue
        try:
            text = render(tokenizer, messages, data)
        except jinja2.TemplateError as e:
            results.append(RecordError("template_error", f"the chat template refuses this conversation ({e})",
                                       "Fix the turns (Gemma's template needs user and assistant turns alternating, "
                                       "starting with the user, after an optional system message), or choose another "
                                       "data.template"))
            continue
        try:
            spans, texts = _walk(text, messages, layout)
        except RecordError as e:
            results.append(e)
            continue
        escaped = []
        if found and policy == "escape":
            lost = [j for j in found if texts[j] is None]
            if lost or not encoder.can_split:
                why = (f"messages {lost} cannot be located in the rendered text (the template rewrites them)" if lost
                       else "this tokenizer cannot encode part of a text on its own (Metaspace prepend_scheme=first)")
                results.append(RecordError("special_tokens_in_content", f"holds special-token text ({described}) "
                                           f"that cannot be escaped: {why}", _SPECIAL_HINT))
                continue
            escaped = sorted(texts[j] for j in found)
        results.append({})
        todo.append((i, text, spans, escaped, described))
    encoded = encoder.encode([t[1] for t in todo], [t[3] for t in todo]) if todo else []
    for (i, text, spans, _, described), enc in zip(todo, encoded):
        result = _labelled(enc, len(text), spans, layout, data)
        if described and isinstance(result, dict):
            result["special_tokens"] = described
        results[i] = result
    return results


_SPECIAL_HINT = ("Remove the control-token text from the record, or set data.special_tokens_in_content: escape "
                 "(encode it as plain text) or keep (encode it as control tokens)")
_finders: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {vocab size: finder}


def _special_finder(tokenizer):
    """A function text -> the special-token strings of `tokenizer` it holds, in order (leftmost-longest, as the
    tokenizer matches them). Only the tokenizer's special tokens count: ordinary added tokens (Qwen3's '<think>',
    domain tokens) are text the model is meant to read and write."""
    per_tokenizer = _finders.setdefault(tokenizer, {})
    if len(tokenizer) not in per_tokenizer:
        by_first: Dict[str, List[str]] = {}
        for s in special_strings(tokenizer):  # longest first
            by_first.setdefault(s[0], []).append(s)

        def find(text) -> List[str]:
            hits: List[str] = []
            if not isinstance(text, str) or not by_first:
                return hits
            i = 0
            while True:
                starts = [p for p in (text.find(c, i) for c in by_first) if p != -1]
                if not starts:
                    return hits
                p = min(starts)
                hit = next((s for s in by_first[text[p]] if text.startswith(s, p)), None)
                if hit:
                    hits.append(hit)
                i = p + (len(hit) if hit else 1)

        per_tokenizer[len(tokenizer)] = find
    return per_tokenizer[len(tokenizer)]


def tokenize_conversation(tokenizer, messages: List[dict], data: DataConfig) -> Dict[str, List[int]]:
    """{'input_ids', 'labels'} for one conversation; labels are -100 except on trained tokens (see module doc).

    The template's text is tokenised without added special tokens; a BOS the tokenizer normally prepends is prepended
    once when the template did not write it, and a doubled BOS at the start is reduced to one.
    Raises RecordError (a ValueError) with the reason when no assistant token would be trained.
    """
    result = tokenize_conversations(tokenizer, [messages], data)[0]
    if isinstance(result, RecordError):
        raise result
    return {"input_ids": result["input_ids"], "labels": result["labels"]}


def _labelled(encoding: Encoded, n_chars: int, spans: List[Span], layout: TemplateLayout,
              data: DataConfig) -> Union[Dict[str, List[int]], RecordError]:
    """Ids (with the BOS rule) and labels of one tokenised conversation, or the reason nothing would be trained."""
    ids = encoding.ids
    shift = 0  # token index in `ids` = encoding index + shift
    bos = layout.bos_id
    if bos is not None:
        if len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            ids, shift = ids[1:], -1
        elif not ids or ids[0] != bos:
            ids, shift = [bos] + ids, 1

    labels = [IGNORE_INDEX] * len(ids)
    chosen = spans[-1:] if data.train_on == "last_assistant" else spans
    trained_assistant = 0
    for start, end in chosen:
        first, stop = _token_range(encoding, start, end, n_chars)
        first, stop = max(first + shift, 0), stop + shift
        labels[first:stop] = ids[first:stop]
        trained_assistant += max(stop - first, 0)
    if data.train_on == "all":
        labels = list(ids)
    if labels:
        labels[0] = IGNORE_INDEX
    if trained_assistant == 0 or labels.count(IGNORE_INDEX) == len(labels):
        return RecordError("no_trainable_tokens", f"no assistant token is labelled (data.train_on={data.train_on}); "
                           f"the sample would train on nothing", "Check that the conversation has a non-empty "
                           "assistant reply")
    return {"input_ids": ids, "labels": labels}

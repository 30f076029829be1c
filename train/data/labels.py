"""Token ids and labels for one conversation: loss on assistant turns only, for any chat template.

How (no `{% generation %}` tags needed):
1. Render the whole conversation once with the run's template (`templates.render`).
2. Walk the messages in order with a cursor through the rendered text. Each message's text is searched only after the
   previous message's end, and only where it is followed by what the template writes after such a message (an
   assistant reply by its end-of-turn token). So a reply equal to the user's message, repeated identical replies, or a
   user typing '<|im_start|>assistant' never match the wrong place. Templates that trim text or strip Qwen3 <think>
   reasoning are handled by also trying those forms of the text.
3. Tokenise the rendered text (`encoding.ConversationEncoder`: the ids of the whole text, computed piece by piece),
   and label every token that overlaps a trained span.

The trained span of an assistant turn is its content plus the end-of-turn token (<|eot_id|>, <|im_end|>,
<end_of_turn>, [|endofturn|]). The role header is never trained. Whatever the generation prompt writes is prompt, not
trained: Qwen3 with enable_thinking=false puts the empty '<think>\\n\\n</think>\\n\\n' block in the generation prompt,
so in that mode it is prompt (seed 004's layout); with enable_thinking=true the model writes the <think> block itself,
so it is trained. Headers and end-of-turn strings are learnt by probing the template (`templates.template_layout`).

data.train_on:
  assistant       every assistant turn (default)
  last_assistant  only the final assistant turn; earlier turns are context
  all             every token (system and user text too, plain language modelling over the conversation)

In every mode the first token's label is -100: no token precedes it, so nothing predicts it, and in a packed row it
must not be predicted from the previous sample's last token.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

from train.config import DataConfig
from train.data import IGNORE_INDEX
from train.data.encoding import ConversationEncoder, Encoded
from train.data.templates import TemplateLayout, render, template_layout



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


def assistant_spans(text: str, messages: List[dict], layout: TemplateLayout) -> List[Tuple[int, int]]:
    """Character span [start, end) of each assistant message's trained part in `text`, in message order.

    Raises ValueError when an assistant message cannot be located (the template rewrites it) or when a turn renders
    text before its content that the generation prompt does not (training on text the model is never asked to write).
    """
    spans = []
    cursor = 0
    header, gen = layout.assistant_header, layout.generation_prompt
    # Text the generation prompt writes after the header (Qwen3 no-think: the empty think block), and its last piece
    # ('</think>'): a turn that writes such a block itself, with reasoning, is not what inference will ask for.
    prompt_extra = gen[len(header):]
    closing = prompt_extra.split()[-1] if prompt_extra.strip() else None
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"message {i} ({role}): content must be text, got {type(content).__name__}")
        forms = _variants(content, role)
        if role != "assistant":
            end = layout.system_end if role == "system" else layout.user_end
            found = _find_followed(text, forms, cursor, (end,) if end else ())
            if found is not None:  # not found: a template that drops or rewrites it; assistant search still anchors
                cursor = found[0] + found[1] + len(found[2])
            continue
        turn = text.find(header, cursor)
        if turn == -1:
            raise ValueError(f"message {i} (assistant): no assistant header {header!r} after the previous message in "
                             f"the rendered text")
        body = turn + len(header)
        found = _find_followed(text, forms, body, layout.assistant_ends)
        if found is None:
            raise ValueError(f"message {i} (assistant): its text, followed by the end-of-turn "
                             f"{layout.end_of_turn!r}, does not appear in the rendered conversation; the chat template "
                             f"rewrites it. Use a built-in template (data.template)")
        pos, length, end = found
        if prompt_extra and text.startswith(gen, turn) and turn + len(gen) <= pos:
            start = turn + len(gen)  # what the generation prompt writes (e.g. an empty think block) is prompt
        else:
            start = body
            if prompt_extra and (pos > body or (closing and closing in text[body: pos + length])):
                raise ValueError(
                    f"message {i} (assistant): the template writes {text[body:pos + length][:60]!r}, but the "
                    f"generation prompt is {gen!r}: the model would be trained on text it never writes at inference. "
                    f"For Qwen3 <think> reasoning set data.enable_thinking=true, or remove the reasoning")
        spans.append((start, pos + length + len(end)))
        cursor = pos + length + len(end)
    return spans


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
                           encoder: Optional[ConversationEncoder] = None) -> List[Union[Dict[str, List[int]], str]]:
    """`tokenize_conversation` for a batch: one dict or, for a conversation that cannot be trained on, the reason (a
    string), per conversation. The batch is tokenised in one call (`ConversationEncoder`); pass the same `encoder` for
    every batch of a corpus so the pieces that repeat (system prompts, headers) are encoded once."""
    layout = template_layout(tokenizer, data)
    encoder = encoder or ConversationEncoder(tokenizer, template_strings(layout))
    results: List[Union[Dict[str, List[int]], str]] = []
    todo = []  # (index, text, spans)
    for i, messages in enumerate(conversations):
        if not any(m.get("role") == "assistant" for m in messages):
            results.append("conversation has no assistant message: nothing to train on")
            continue
        try:
            text = render(tokenizer, messages, data)
            spans = assistant_spans(text, messages, layout)
        except ValueError as e:
            results.append(str(e))
            continue
        results.append("")
        todo.append((i, text, spans))
    encoded = encoder.encode([text for _, text, _ in todo]) if todo else []
    for (i, text, spans), enc in zip(todo, encoded):
        results[i] = _labelled(enc, len(text), spans, layout, data)
    return results


def tokenize_conversation(tokenizer, messages: List[dict], data: DataConfig) -> Dict[str, List[int]]:
    """{'input_ids', 'labels'} for one conversation; labels are -100 except on trained tokens (see module doc).

    The template's text is tokenised without added special tokens; a BOS the tokenizer normally prepends is prepended
    once when the template did not write it, and a doubled BOS at the start is reduced to one.
    Raises ValueError with the reason when no assistant token would be trained.
    """
    result = tokenize_conversations(tokenizer, [messages], data)[0]
    if isinstance(result, str):
        raise ValueError(result)
    return result


def _labelled(encoding: Encoded, n_chars: int, spans: List[Tuple[int, int]], layout: TemplateLayout,
              data: DataConfig) -> Union[Dict[str, List[int]], str]:
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
        return (f"no assistant token is labelled (data.train_on={data.train_on}); the sample would train on nothing. "
                f"Check that the conversation has a non-empty assistant reply")
    return {"input_ids": ids, "labels": labels}

"""Tokenising rendered conversations fast, with exactly the ids the tokenizer gives for the whole text.

A fast (Rust) tokenizer cuts its input at added tokens such as '<|im_start|>' before it normalises or pre-tokenises
anything, and encodes the pieces between them independently. A rendered conversation is mostly such pieces, and many
of them repeat across a corpus: role headers, and whole system prompts (seed 002's long instruction opens every
finance sample). `ConversationEncoder` therefore
1. cuts each text at the markers the chat template writes ('<|im_start|>', '<|im_end|>', '<|eot_id|>', ...),
2. encodes each distinct piece of a batch once, all of them in one `encode_batch` call (which uses every core unless
   TOKENIZERS_PARALLELISM=false), and keeps the pieces that repeat for the next batch,
3. joins the pieces' ids; a character of the text maps to its token through its piece (`Encoded.char_to_token`).

The ids equal `encode(text)` of the whole text. That holds when the markers are added tokens that are matched on the
raw text, strip no whitespace and cannot be part of a longer added-token match, and the pre-tokenizer treats every
piece alike (not Metaspace with prepend_scheme='first', which marks only the text's first piece). Where that is not so, or for a slow tokenizer,
texts are encoded whole. The encoder also compares both ways on the first texts it sees and encodes whole from then on
if they ever differ; `tests/test_encoding.py` checks the identity on the real Qwen3, Llama-3 and Gemma-3 tokenizers.

A text may come with escaped regions (`encode(texts, escapes)`): character ranges to encode as plain text, where the
tokenizer's special-token strings are not matched (the Rust tokenizer's `encode_special_tokens`, what transformers
calls `split_special_tokens`). Such a text is encoded in segments: the regions with a copy of the tokenizer that
escapes special tokens, the text between them as usual. Its ids are then, by design, not those of the whole text.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import weakref
from bisect import bisect_right
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

log = logging.getLogger(__name__)

VERIFY_TEXTS = 8  # texts checked against the whole-text encoding before piecewise encoding is trusted
_patterns: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {(strings, vocab size): pattern}


class Encoded:
    """The ids of one text and, through the Rust encodings of its pieces, the token of each character."""

    __slots__ = ("ids", "_char_starts", "_token_starts", "_encodings")

    def __init__(self, ids: List[int], char_starts: List[int], token_starts: List[int], encodings: list):
        self.ids = ids
        self._char_starts, self._token_starts, self._encodings = char_starts, token_starts, encodings

    def char_to_token(self, c: int) -> Optional[int]:
        k = bisect_right(self._char_starts, c) - 1
        token = self._encodings[k].char_to_token(c - self._char_starts[k])
        return None if token is None else token + self._token_starts[k]


def _cuts_like_the_tokenizer(marker: str, added: Sequence[str]) -> bool:
    """True when the tokenizer always matches `marker` where it occurs. It matches added tokens leftmost-longest, so a
    longer added token that contains the marker, or one that ends with the marker's beginning, could take its place
    (Gemma has '\\n', '\\n\\n', '\\n\\n\\n' ... as added tokens)."""
    for other in added:
        if other == marker or marker[0] not in other:
            continue
        if marker in other or any(other.endswith(marker[:k]) for k in range(1, len(marker))):
            return False
    return True


def _marks_first_piece(tokenizer) -> bool:
    """True for a pre-tokenizer that treats a text's first piece differently (Metaspace with prepend_scheme='first'):
    a part of a text encoded on its own would then get a different first token."""
    pre = tokenizer._tokenizer.pre_tokenizer
    if pre is None:
        return False
    state = json.dumps(json.loads(pre.__getstate__()))
    return '"Metaspace"' in state and '"first"' in state


def _marker_pattern(tokenizer, texts: Sequence[str]) -> Optional["re.Pattern"]:
    """A regex that cuts text at the added tokens occurring in `texts` (the template's fixed strings) that the tokenizer
    itself always cuts at, or None when piecewise encoding would not be exact for this tokenizer."""
    if _marks_first_piece(tokenizer):
        return None
    added = list(tokenizer.added_tokens_decoder.values())
    contents = [t.content for t in added]
    markers = [t for t in added if t.content and any(t.content in s for s in texts if s)
               and _cuts_like_the_tokenizer(t.content, contents)]
    if not markers or any(t.normalized or t.lstrip or t.rstrip or t.single_word for t in markers):
        return None
    return re.compile("(" + "|".join(re.escape(t.content) for t in markers) + ")")


class ConversationEncoder:
    """Encodes batches of rendered conversations; see the module doc. `template_strings` are the strings the chat
    template writes around messages (`TemplateLayout` fields): the added tokens in them become the cut points."""

    def __init__(self, tokenizer, template_strings: Sequence[str]):
        backend = getattr(tokenizer, "_tokenizer", None)
        if backend is None or not hasattr(backend, "encode_batch"):
            raise ValueError("assistant-only labels need a fast tokenizer (character offsets); load it with "
                             "use_fast=True")
        if getattr(tokenizer, "split_special_tokens", False):
            raise ValueError("the tokenizer has split_special_tokens=True, so the chat template's markers would be "
                             "tokenised as plain text; load it with split_special_tokens=False")
        self.backend = backend
        key = (tuple(template_strings), len(tokenizer))
        per_tokenizer = _patterns.setdefault(tokenizer, {})
        if key not in per_tokenizer:
            per_tokenizer[key] = _marker_pattern(tokenizer, template_strings)
        self.pattern = per_tokenizer[key]
        self.can_split = not _marks_first_piece(tokenizer)  # escaped regions need a text encoded in parts
        self.escaping = None  # a copy of the backend that encodes special-token strings as text, made when needed
        self.cache: Dict[str, Tuple[List[int], object]] = {}
        self.verified = 0

    def _whole(self, texts: List[str]) -> List[Encoded]:
        return [Encoded(e.ids, [0], [0], [e]) for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def encode(self, texts: List[str], escapes: Optional[Sequence[Sequence[Tuple[int, int]]]] = None) -> List[Encoded]:
        """The encodings of `texts`; `escapes[i]`: sorted, disjoint character ranges of text i to encode as plain
        text (see the module doc)."""
        if not escapes or not any(escapes):
            return self._encode(texts)
        out: List[Optional[Encoded]] = [None] * len(texts)
        plain = [i for i, e in enumerate(escapes) if not e]
        for i, enc in zip(plain, self._encode([texts[i] for i in plain])):
            out[i] = enc
        for i, regions in enumerate(escapes):
            if regions:
                out[i] = self._encode_escaped(texts[i], regions)
        return out

    def _encode_escaped(self, text: str, regions: Sequence[Tuple[int, int]]) -> Encoded:
        if not self.can_split:
            raise ValueError("this tokenizer cannot encode part of a text on its own (Metaspace prepend_scheme=first)")
        if self.escaping is None:
            self.escaping = copy.deepcopy(self.backend)
            self.escaping.encode_special_tokens = True
        segments, cursor = [], 0  # (start, end, escaped)
        for start, end in regions:
            segments += [(cursor, start, False), (start, end, True)]
            cursor = end
        segments.append((cursor, len(text), False))
        segments = [seg for seg in segments if seg[1] > seg[0]]
        ids: List[int] = []
        char_starts, token_starts, encodings = [], [], []
        for start, end, escaped in segments:
            e = (self.escaping if escaped else self.backend).encode(text[start:end], add_special_tokens=False)
            char_starts.append(start)
            token_starts.append(len(ids))
            encodings.append(e)
            ids.extend(e.ids)
        return Encoded(ids, char_starts or [0], token_starts or [0], encodings or [None])

    def _encode(self, texts: List[str]) -> List[Encoded]:
        if not texts:
            return []
        if self.pattern is None:
            return self._whole(texts)
        pieces = [[p for p in self.pattern.split(text) if p] for text in texts]
        counts = Counter(p for ps in pieces for p in ps)
        new = [p for p in counts if p not in self.cache]
        for piece, e in zip(new, self.backend.encode_batch(new, add_special_tokens=False)):
            self.cache[piece] = (e.ids, e)
        out = []
        for ps in pieces:
            ids: List[int] = []
            char_starts, token_starts, encodings = [], [], []
            chars = 0
            for p in ps:
                piece_ids, e = self.cache[p]
                char_starts.append(chars)
                token_starts.append(len(ids))
                encodings.append(e)
                ids.extend(piece_ids)
                chars += len(p)
            out.append(Encoded(ids, char_starts or [0], token_starts or [0], encodings or [None]))
        # keep what repeats: pieces seen twice in this batch, or seen again after an earlier batch
        kept = set(new)
        self.cache = {p: v for p, v in self.cache.items() if counts.get(p, 0) > 1 or (p in counts and p not in kept)}
        if self.verified < VERIFY_TEXTS and not self._same_as_whole(texts, out):
            log.warning("piecewise tokenisation differs from whole-text tokenisation for this tokenizer; encoding "
                        "whole texts from now on")
            self.pattern, self.cache = None, {}
            return self._whole(texts)
        return out

    def _same_as_whole(self, texts: List[str], encoded: List[Encoded]) -> bool:
        for text, enc in zip(texts[: VERIFY_TEXTS - self.verified], encoded):
            if self.backend.encode(text, add_special_tokens=False).ids != enc.ids:
                return False
            self.verified += 1
        return True

"""Text-similarity metrics as pure functions: Korean-aware tokens, ROUGE-1/2/L, BLEU, embedding cosine similarity.

Tokens. Korean glues particles and endings to words: "삼성전자가" and "삼성전자는" are the same noun with two different
particles, and a whitespace split would count them as two unrelated words (a Chinese word segmenter, as a peer uses,
does not know Korean morphology at all). `tokenize` splits text into morphemes with Kiwi (kiwipiepy, whose model
installs from PyPI and runs offline) and keeps:
- the surface form of each morpheme, without its tag: 삼성전자가 → 삼성전자, 가; 짓는다 → 짓, 는다;
- Latin words (one token per word, lowercased), numbers and Hanja as they are: "The cat sat" → the, cat, sat;
- no punctuation or symbols (Kiwi's S* tags except SL/SH/SN: . , ! ? quotes brackets - ~ % etc.), so "서울입니다."
  and "서울입니다" score the same, and JSON answers are compared on their words, not their braces and quotes.
Text is NFC-normalised first. The same tokens feed ROUGE, BLEU and the RAFT answer match.

ROUGE (Lin 2004) on those tokens, with clipped counts (an n-gram matches at most as often as it occurs on each side):
  ROUGE-N  recall = matches / reference n-grams, precision = matches / candidate n-grams, F1 = 2PR / (P + R).
  ROUGE-L  from the longest common subsequence: recall = LCS / |reference|, precision = LCS / |candidate|, F1 (beta 1,
           as Google's rouge-score reports it).
BLEU (Papineni et al. 2002): clipped n-gram precisions p1..p4, uniform weights, geometric mean, brevity penalty
  BP = exp(1 - r / c) when the candidate length c is below the reference length r (else 1).
  `corpus_bleu` sums matches, n-gram totals and lengths over all samples before taking precisions and BP: the
  standard corpus BLEU, which the evaluation report shows. `sentence_bleu` scores one sample, for the per-sample file.
  Smoothing: a precision with zero matches becomes 1 / (2^k * total) for the k-th such order ("exp", Chen & Cherry
  2014 method 3, sacrebleu's default), so one missing 4-gram does not zero a sentence; but a candidate without a
  single matching token scores 0. A candidate shorter than 4 tokens is scored on the orders it has (sentence BLEU
  only). Scores are in [0, 1]; x100 gives the 0-100 scale of sacrebleu and seed 003.
Cosine similarity: mean-pooled token embeddings of a sentence encoder (sentence-transformers layout), cosine of the
  two vectors. `hangul_coverage` measures how much Korean the encoder's tokenizer keeps intact: English-only encoders
  such as all-MiniLM-L6-v2 break Hangul into jamo or [UNK], and their Korean similarities mean little.
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# Kiwi tags that are kept although they start with S: foreign (Latin) words, Hanja, numbers.
KEPT_SYMBOL_TAGS = ("SL", "SH", "SN")
HANGUL_SYLLABLE = re.compile(r"[\uac00-\ud7a3]")


# ----------------------------------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _kiwi():
    """Kiwi, or None where kiwipiepy is not installed (a dependency of the project, left out only by minimal installs
    such as the GPU check's wheels: `morphemes_warning` then says the scores are on words)."""
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        return None
    return Kiwi()


def morphemes_warning() -> Optional[str]:
    """A warning for the report when text is split on words instead of Korean morphemes, else None."""
    if _kiwi() is not None:
        return None
    return ("kiwipiepy is not installed: ROUGE, BLEU and the RAFT answer match are computed on words (letters and "
            "digits), not Korean morphemes, so particles stay attached (삼성전자가 != 삼성전자는). pip install kiwipiepy")


def keep_morpheme(tag: str) -> bool:
    """False for punctuation and symbols (Kiwi tags S*), except Latin words, Hanja and numbers."""
    return not tag.startswith("S") or tag in KEPT_SYMBOL_TAGS


def tokenize(text: str) -> List[str]:
    """Morpheme forms of `text` (Korean-aware; Latin lowercased; punctuation and symbols dropped)."""
    text = unicodedata.normalize("NFC", text or "").strip()
    if not text:
        return []
    kiwi = _kiwi()
    if kiwi is None:  # words, without punctuation: what the scores fall back to (see morphemes_warning)
        return [w.lower() for w in re.findall(r"\w+", text)]
    return [t.form.lower() for t in kiwi.tokenize(text) if keep_morpheme(t.tag)]


def ngrams(tokens: Sequence[str], n: int) -> Counter:
    """Multiset of the n-grams of a token sequence."""
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def precision_recall_f1(matches: int, candidate_total: int, reference_total: int) -> Dict[str, float]:
    """P = matches / candidate total, R = matches / reference total, F1 = 2PR / (P + R); two empty texts score 1."""
    if candidate_total == 0 and reference_total == 0:
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    precision = matches / candidate_total if candidate_total else 0.0
    recall = matches / reference_total if reference_total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ----------------------------------------------------------------------------------------------------------------------
# ROUGE
# ----------------------------------------------------------------------------------------------------------------------


def rouge_n(candidate: Sequence[str], reference: Sequence[str], n: int) -> Dict[str, float]:
    """ROUGE-N precision, recall and F1 of two token sequences (clipped n-gram matches)."""
    cand, ref = ngrams(candidate, n), ngrams(reference, n)
    matches = sum((cand & ref).values())
    return precision_recall_f1(matches, sum(cand.values()), sum(ref.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> Dict[str, float]:
    """ROUGE-L precision, recall and F1 (beta = 1) from the longest common subsequence."""
    return precision_recall_f1(lcs_length(candidate, reference), len(candidate), len(reference))


# ----------------------------------------------------------------------------------------------------------------------
# BLEU
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class BleuStats:
    """What BLEU needs from one or more samples: clipped matches and candidate n-gram totals per order, and lengths."""

    matches: List[int] = field(default_factory=lambda: [0, 0, 0, 0])
    totals: List[int] = field(default_factory=lambda: [0, 0, 0, 0])
    candidate_length: int = 0
    reference_length: int = 0

    def __add__(self, other: "BleuStats") -> "BleuStats":
        return BleuStats([a + b for a, b in zip(self.matches, other.matches)],
                         [a + b for a, b in zip(self.totals, other.totals)],
                         self.candidate_length + other.candidate_length,
                         self.reference_length + other.reference_length)


def bleu_stats(candidate: Sequence[str], reference: Sequence[str], max_n: int = 4) -> BleuStats:
    matches, totals = [], []
    for n in range(1, max_n + 1):
        cand, ref = ngrams(candidate, n), ngrams(reference, n)
        matches.append(sum((cand & ref).values()))
        totals.append(sum(cand.values()))
    return BleuStats(matches, totals, len(candidate), len(reference))


def ngram_precision(candidate: Sequence[str], reference: Sequence[str], n: int) -> float:
    """BLEU's modified (clipped) n-gram precision of one candidate, unsmoothed: the seeds' "BLEU-1 precision"."""
    stats = bleu_stats(candidate, reference, max_n=n)
    return stats.matches[n - 1] / stats.totals[n - 1] if stats.totals[n - 1] else 0.0


def brevity_penalty(candidate_length: int, reference_length: int) -> float:
    if candidate_length == 0:
        return 0.0
    return 1.0 if candidate_length >= reference_length else math.exp(1 - reference_length / candidate_length)


def bleu_from_stats(stats: BleuStats, effective_order: bool = False) -> float:
    """BLEU in [0, 1] from (summed) statistics, with "exp" smoothing of zero-match orders.

    effective_order: score a candidate shorter than max_n tokens on the orders it has (sentence BLEU); otherwise such a
    candidate scores 0, as in standard corpus BLEU."""
    if stats.candidate_length == 0:
        return 1.0 if stats.reference_length == 0 else 0.0
    if stats.matches[0] == 0:  # not one token in common: 0, whatever the smoothing would make of the higher orders
        return 0.0
    log_sum, order, zero_orders = 0.0, 0, 0
    for matches, total in zip(stats.matches, stats.totals):
        if total == 0:  # no n-grams of this order in the candidate (it is shorter than n)
            break
        order += 1
        if matches == 0:
            zero_orders += 1
            log_sum += math.log(1.0 / (2 ** zero_orders * total))
        else:
            log_sum += math.log(matches / total)
    if order < len(stats.totals) and not effective_order:
        return 0.0
    return brevity_penalty(stats.candidate_length, stats.reference_length) * math.exp(log_sum / order)


def sentence_bleu(candidate: Sequence[str], reference: Sequence[str], max_n: int = 4) -> float:
    """Smoothed BLEU of one candidate against one reference (for per-sample inspection)."""
    return bleu_from_stats(bleu_stats(candidate, reference, max_n), effective_order=True)


def corpus_bleu(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Corpus BLEU: n-gram matches, totals and lengths summed over all samples, then one BP and one geometric mean."""
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
    total = BleuStats([0] * max_n, [0] * max_n)
    for cand, ref in zip(candidates, references):
        total = total + bleu_stats(cand, ref, max_n)
    return bleu_from_stats(total)


def text_scores(candidate: Sequence[str], reference: Sequence[str]) -> Dict[str, float]:
    """Per-sample ROUGE-1/2/L F1 (and ROUGE-1 recall/precision) and smoothed sentence BLEU of two token sequences."""
    r1 = rouge_n(candidate, reference, 1)
    return {"rouge1_f1": r1["f1"], "rouge1_recall": r1["recall"], "rouge1_precision": r1["precision"],
            "rouge2_f1": rouge_n(candidate, reference, 2)["f1"], "rougeL_f1": rouge_l(candidate, reference)["f1"],
            "sentence_bleu": sentence_bleu(candidate, reference)}


# ----------------------------------------------------------------------------------------------------------------------
# Embedding cosine similarity
# ----------------------------------------------------------------------------------------------------------------------


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (sequences or 1-d tensors); 0 when either is all zeros."""
    import torch

    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    norm = a.norm() * b.norm()
    return float(a @ b / norm) if norm > 0 else 0.0


def hangul_coverage(tokenizer, texts: Sequence[str]) -> Optional[float]:
    """Share of the Hangul syllables in `texts` that the tokenizer keeps whole (not split into jamo, not [UNK]);
    None when the texts have no Hangul. Near 1 for Korean-capable vocabularies, 0 for all-MiniLM-L6-v2."""
    in_text = kept = 0
    for text in texts:
        text = unicodedata.normalize("NFC", text)
        n = len(HANGUL_SYLLABLE.findall(text))
        if not n:
            continue
        in_text += n
        # token by token: joined and normalised again, jamo pieces would recompose into syllables
        whole = sum(len(HANGUL_SYLLABLE.findall(unicodedata.normalize("NFC", tokenizer.convert_tokens_to_string([t]))))
                    for t in tokenizer.tokenize(text))
        kept += min(n, whole)
    return kept / in_text if in_text else None


class SentenceEncoder:
    """A sentence-transformers style encoder folder (or hub id) loaded with plain transformers: token embeddings,
    pooled as its 1_Pooling/config.json says (mean by default, or CLS), compared by cosine. A folder whose
    config_sentence_transformers.json names a default prompt (E5 models: "query: ") has it put before every text."""

    def __init__(self, name_or_path: str, max_length: int = 256, device: str = "cpu", name: Optional[str] = None):
        from transformers import AutoModel, AutoTokenizer

        self.name = name or str(name_or_path)  # for messages, e.g. the asset name instead of its folder
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path).to(device).eval()
        self.max_length = max_length
        self.device = device
        pooling = Path(name_or_path) / "1_Pooling" / "config.json"
        self.pooling = "mean"
        if pooling.is_file() and json.loads(pooling.read_text()).get("pooling_mode_cls_token"):
            self.pooling = "cls"
        settings = Path(name_or_path) / "config_sentence_transformers.json"
        self.prompt = ""
        if settings.is_file():
            st = json.loads(settings.read_text())
            self.prompt = (st.get("prompts") or {}).get(st.get("default_prompt_name") or "", "")

    def encode(self, texts: Sequence[str], batch_size: int = 32):
        """(len(texts), dim) float32 tensor of unit-length sentence embeddings."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer([self.prompt + t for t in texts[start:start + batch_size]], padding=True,
                                       truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def similarities(self, candidates: Sequence[str], references: Sequence[str]) -> List[float]:
        """Cosine of each candidate with its reference. An empty text is similar only to another empty text."""
        vectors = self.encode([*candidates, *references])
        n = len(candidates)
        scores = []
        for i, (cand, ref) in enumerate(zip(candidates, references)):
            if not cand.strip() or not ref.strip():
                scores.append(float(not cand.strip() and not ref.strip()))
            else:
                scores.append(float(vectors[i] @ vectors[n + i]))
        return scores

    def language_warning(self, texts: Sequence[str], threshold: float = 0.5) -> Optional[str]:
        """A warning when the texts are Korean and the encoder's vocabulary does not keep Hangul syllables whole."""
        coverage = hangul_coverage(self.tokenizer, texts)
        if coverage is None or coverage >= threshold:
            return None
        return (f"the cosine encoder {self.name} keeps only {100 * coverage:.0f}% of the Korean syllables in these "
                f"texts whole (the rest become jamo or [UNK]): its cosine similarity is unreliable for Korean "
                f"(all-MiniLM-L6-v2 rates an unrelated Korean sentence pair above a paraphrase). Set "
                f"eval.embedding_model=multilingual-e5-small (fetched offline) or another multilingual sentence "
                f"encoder (a local folder or hub id) for a meaningful score")


"""Data quality: rejected-record bookkeeping, exact and near-duplicate detection, the train/eval split, length stats.

- `DataError` is the error a user sees for bad data: "<file>:<line>: <field>: <what is wrong>. <how to fix>".
- `Rejects` counts records skipped under `data.on_error: skip`, by reason, with a few examples each and the first
  place each reason occurred; the same tally counts the warnings (records kept but changed, or worth a look).
- `raise_or_count` applies `data.on_error` to one problem: raise a DataError, or count it.
- `exact_duplicates` / `near_duplicates` flag records that repeat an earlier one (MinHash + LSH, verified exactly).
- `split_train_eval` decides each record's side by a hash of seed + text, so the split is stable as data grows.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from train.data.formats import RecordError, describe
from train.errors import UserError

EXAMPLES_PER_REASON = 5


def where(file: str, line: Optional[int], unit: Optional[str] = None) -> str:
    """'data.jsonl:12' for a line; 'data.parquet:row 12' or 'data.json:record 12' when unit is 'row' or 'record'."""
    if line is None:
        return str(file)
    return f"{file}:{line}" if unit in (None, "line") else f"{file}:{unit} {line}"


class DataError(UserError, ValueError):
    """Bad data a user can fix. str(e) = '<file>:<line>: <field>: <what is wrong>. <how to fix>'."""

    def __init__(self, reason: str, problem: str, hint: str = "", file: Optional[str] = None,
                 line: Optional[int] = None, field: Optional[str] = None, unit: Optional[str] = None):
        self.reason, self.problem, self.hint = reason, problem, hint
        self.file, self.line, self.field, self.unit = file, line, field, unit
        self.detail = describe(field, problem, hint)  # the message without the location
        super().__init__(f"{where(file, line, unit)}: {self.detail}" if file else self.detail)

    @classmethod
    def from_record_error(cls, err: RecordError, file: str, line: Optional[int],
                          unit: Optional[str] = None) -> "DataError":
        return cls(err.reason, err.problem, err.hint, file=file, line=line, field=err.field, unit=unit)


class Rejects:
    """Records left out under on_error=skip (or, for warnings, kept): a count per reason, up to 5 examples
    'file:line: message' each, and the first 'file:line' of each reason."""

    def __init__(self):
        self.counts: Dict[str, int] = {}
        self.examples: Dict[str, List[str]] = {}
        self.first: Dict[str, str] = {}

    def add(self, reason: str, file: str, line: Optional[int], message: str, count: int = 1,
            unit: Optional[str] = None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        self.first.setdefault(reason, where(file, line, unit))
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(f"{where(file, line, unit)}: {message}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_reason(self) -> Dict[str, int]:
        """Counts per reason, most frequent first."""
        return dict(sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def merge(self, other: "Rejects") -> None:
        for reason, count in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + count
            if reason in other.first:
                self.first.setdefault(reason, other.first[reason])
            room = EXAMPLES_PER_REASON - len(self.examples.setdefault(reason, []))
            self.examples[reason].extend(other.examples.get(reason, [])[:max(room, 0)])

    def to_dict(self) -> dict:
        return {"total": self.total, "by_reason": self.by_reason(),
                "first": {reason: self.first[reason] for reason in self.by_reason() if reason in self.first},
                "examples": {reason: list(self.examples.get(reason, [])) for reason in self.by_reason()}}


def raise_or_count(err: Union[RecordError, DataError], file: str, line: Optional[int], on_error: str,
                   rejects: Rejects, count: int = 1, unit: Optional[str] = None) -> None:
    """Apply data.on_error to one problem: 'raise' raises a DataError naming file and line; 'skip' counts it."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got '{on_error}'")
    if isinstance(err, RecordError):
        err = DataError.from_record_error(err, file, line, unit)
    if on_error == "raise":
        raise err
    rejects.add(err.reason, file if err.file is None else err.file, line if err.line is None else err.line,
                err.detail, count=count, unit=err.unit if err.unit else unit)


# ----------------------------------------------------------------------------------------------------------------------
# Duplicates
# ----------------------------------------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """The form compared for duplicates and hashed for the split: Unicode NFC, whitespace runs collapsed to one space.

    NFC matters for Korean: text saved on macOS may hold decomposed jamo that look identical but differ in bytes.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def _digest(text: str, salt: str = "") -> bytes:
    return hashlib.blake2b((salt + text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def exact_duplicates(keys: Sequence[str]) -> List[bool]:
    """True for each key equal (after `normalize`) to an earlier one. Memory: 16 bytes per distinct key."""
    seen = set()
    flags = []
    for key in keys:
        digest = _digest(normalize(key))
        flags.append(digest in seen)
        seen.add(digest)
    return flags


SHINGLE = 5


def shingles(text: str, size: int = SHINGLE) -> set:
    """Character n-grams of the normalised text; a text shorter than n is its own single shingle."""
    text = normalize(text)
    if len(text) < size:
        return {text}
    return {text[i:i + size] for i in range(len(text) - size + 1)}


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(keys: Sequence[str], threshold: float, seed: int = 0, num_perm: int = 128) -> List[bool]:
    """True for each key whose character 5-gram Jaccard similarity with an earlier kept key is >= threshold.

    Candidates come from MinHash signatures (num_perm hashes) with LSH banding; every candidate pair is verified with
    the exact Jaccard similarity, so there are no false positives. A record is compared only with earlier records
    that were kept, so a chain A~B~C where C is not similar to A keeps C.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    texts = [normalize(k) for k in keys]
    n = len(texts)
    flags = [False] * n
    if n < 2:
        return flags
    signatures = minhash_signatures(texts, num_perm=num_perm, seed=seed)
    bands, rows = lsh_bands(threshold, num_perm)
    rng = np.random.default_rng(seed + 1)
    mixers = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)

    band_keys, colliding = [], []
    for b in range(bands):
        block = signatures[:, b * rows:(b + 1) * rows]
        keys_b = (block * mixers[None, :]).sum(axis=1, dtype=np.uint64)  # wraps mod 2^64: a hash of the band
        _, inverse, counts = np.unique(keys_b, return_inverse=True, return_counts=True)
        band_keys.append(keys_b)
        colliding.append(counts[inverse.reshape(-1)] > 1)
    involved = np.flatnonzero(np.any(np.stack(colliding), axis=0))

    buckets: List[Dict[int, List[int]]] = [dict() for _ in range(bands)]
    cache: Dict[int, set] = {}

    def grams(i: int) -> set:
        if i not in cache:
            cache[i] = shingles(texts[i])
        return cache[i]

    for i in involved.tolist():
        candidates = set()
        for b in range(bands):
            if colliding[b][i]:
                candidates.update(buckets[b].get(int(band_keys[b][i]), ()))
        if any(jaccard(grams(i), grams(j)) >= threshold for j in sorted(candidates)):
            flags[i] = True
            continue
        for b in range(bands):
            if colliding[b][i]:
                buckets[b].setdefault(int(band_keys[b][i]), []).append(i)
    return flags


_MAX_GRAMS_PER_CHUNK = 1_000_000


def minhash_signatures(texts: Sequence[str], num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """(len(texts), num_perm) uint64 MinHash signatures over character 5-grams, computed chunk by chunk with numpy.

    Each 5-gram is hashed from its code points; permutation k is the multiply-add hash a_k * x + b_k (mod 2^64).
    A text shorter than 5 characters is padded with NUL so that it forms exactly one gram (like `shingles`).
    """
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    gram_mix = rng.integers(1, 2**63, size=SHINGLE, dtype=np.uint64) | np.uint64(1)
    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    start = 0
    while start < len(texts):
        end, grams = start, 0
        while end < len(texts) and (end == start or grams + len(texts[end]) <= _MAX_GRAMS_PER_CHUNK):
            grams += max(len(texts[end]), SHINGLE)
            end += 1
        out[start:end] = _chunk_signatures(texts[start:end], a, b, gram_mix)
        start = end
    return out


def _chunk_signatures(texts: Sequence[str], a: np.ndarray, b: np.ndarray, gram_mix: np.ndarray) -> np.ndarray:
    padded = [t + "\0" * (SHINGLE - len(t)) if len(t) < SHINGLE else t for t in texts]
    lengths = np.fromiter((len(t) for t in padded), dtype=np.int64, count=len(padded))
    codes = np.frombuffer("".join(padded).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    text_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gram_counts = lengths - SHINGLE + 1
    # gram g of text t starts at text_starts[t] + g; list all valid gram starts
    gram_starts = np.repeat(text_starts, gram_counts) + _ranges(gram_counts)
    h = np.zeros(len(gram_starts), dtype=np.uint64)
    for j in range(SHINGLE):
        h += codes[gram_starts + j] * gram_mix[j]
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    segment_starts = np.concatenate([[0], np.cumsum(gram_counts)[:-1]])
    sig = np.empty((len(texts), len(a)), dtype=np.uint64)
    for k in range(len(a)):
        sig[:, k] = np.minimum.reduceat(h * a[k] + b[k], segment_starts)
    return sig


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for counts [c0, c1, ...]."""
    total = int(counts.sum())
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - offsets


def lsh_bands(threshold: float, num_perm: int, recall: float = 0.99) -> Tuple[int, int]:
    """(bands, rows) for LSH: the most rows per band (fewest false candidates) such that a pair whose similarity is
    exactly `threshold` still shares a bucket in at least one band with probability >= recall.

    P(candidate | similarity s) = 1 - (1 - s**rows) ** bands; pairs above the threshold are found even more often.
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= recall:
            best = (bands, rows)
    return best


# ----------------------------------------------------------------------------------------------------------------------
# Split and lengths
# ----------------------------------------------------------------------------------------------------------------------


def split_train_eval(keys: Sequence[str], fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """(train indices, eval indices). A record goes to eval when hash(seed, normalised key) falls below `fraction`.

    The decision depends only on the record's own text, so appending data never moves an existing record, and
    identical texts always land on the same side. If that leaves eval empty while fraction > 0 and there are at least
    two distinct texts, the text with the smallest hash goes to eval, so a small dataset still gets a validation set.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    salt = f"split:{seed}:"
    scores = [int.from_bytes(_digest(normalize(k), salt)[:8], "big") / 2**64 for k in keys]
    eval_idx = [i for i, u in enumerate(scores) if u < fraction]
    if fraction > 0 and not eval_idx and len(set(scores)) >= 2:
        lowest = min(scores)
        eval_idx = [i for i, u in enumerate(scores) if u == lowest]
    in_eval = set(eval_idx)
    return [i for i in range(len(scores)) if i not in in_eval], eval_idx


def length_percentiles(lengths: Iterable[int]) -> Dict[str, float]:
    """p50, p90, p95, p99 (linear interpolation), max, mean and count of token lengths."""
    values = np.asarray(list(lengths), dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0, "max": 0}
    p50, p90, p95, p99 = np.percentile(values, [50, 90, 95, 99])
    return {"count": int(values.size), "mean": round(float(values.mean()), 2), "p50": float(p50), "p90": float(p90),
            "p95": float(p95), "p99": float(p99), "max": int(values.max())}

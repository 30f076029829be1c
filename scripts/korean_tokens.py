"""Korean tokens per syllable of the byte-level tokenizers this project uses, measured on real Korean text: the seed
documents (lines that are mostly Hangul: the users' own prose) and the shipped sample data (data/*/*.jsonl).

    python scripts/korean_tokens.py [--seeds ../shared/seeds] [--json]

tokens per syllable = the tokenizer's tokens for the text (no special tokens) / the Hangul syllables in it, spaces and
punctuation included in the tokens, as in a training sample. `data.max_length` counts tokens, so a row of L tokens
holds about L / (tokens per syllable) syllables of Korean prose. The tokenizers come from launch.assets (offline).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Dict, Iterable, List

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HANGUL = re.compile(r"[\uac00-\ud7a3]")
TOKENIZERS = ("qwen3", "llama3", "gemma", "smollm2")


def syllables(text: str) -> int:
    return len(HANGUL.findall(unicodedata.normalize("NFC", text)))


def korean_lines(text: str, share: float = 0.5) -> List[str]:
    """Lines whose non-space characters are at least `share` Hangul syllables (prose, not code or tables)."""
    out = []
    for line in text.splitlines():
        letters = [c for c in line if not c.isspace()]
        if letters and syllables(line) / len(letters) >= share:
            out.append(line.strip())
    return out


def sample_texts(data_dir: Path) -> List[str]:
    """Every distinct string value in the sample files (prompts, passages, answers) that has Hangul."""
    texts: List[str] = []

    def walk(value):
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)

    for path in sorted(data_dir.glob("*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            walk(json.loads(line))
    return list(dict.fromkeys(t for t in texts if syllables(t)))  # each distinct text once (a shared system prompt)


def tokens_per_syllable(tokenizer, texts: Iterable[str]) -> Dict[str, float]:
    texts = list(texts)
    tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    n = sum(syllables(t) for t in texts)
    return {"texts": len(texts), "syllables": n, "tokens": tokens, "tokens_per_syllable": round(tokens / n, 3)}


def load(name: str):
    from transformers import AutoTokenizer

    from launch import assets

    folder = {"qwen3": assets.qwen3_tokenizer, "llama3": assets.llama3_tokenizer, "gemma": assets.gemma_tokenizer,
              "smollm2": assets.smollm2_135m_instruct}[name]()
    return AutoTokenizer.from_pretrained(folder)


def measure(corpora: Dict[str, List[str]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    return {name: {corpus: tokens_per_syllable(tok, texts) for corpus, texts in corpora.items()}
            for name, tok in ((n, load(n)) for n in TOKENIZERS)}


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=Path, default=REPO.parent / "shared" / "seeds",
                        help="folder of the seed documents (skipped when absent)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    corpora = {"samples": sample_texts(REPO / "data")}
    if args.seeds.is_dir():
        corpora["seeds"] = [line for f in sorted(args.seeds.glob("*.txt"))
                            for line in korean_lines(f.read_text(encoding="utf-8"))]
    results = measure(corpora)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
        return 0
    for corpus in corpora:
        first = next(iter(results.values()))[corpus]
        print(f"{corpus}: {first['texts']} texts, {first['syllables']} Hangul syllables")
        for name, by_corpus in results.items():
            r = by_corpus[corpus]
            print(f"  {name:8s} {r['tokens']:7d} tokens  {r['tokens_per_syllable']:.2f} tokens per syllable")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Rejects bookkeeping, exact and near-duplicate detection (against brute force), the train/eval split, length
percentiles and the written report."""

import json
import random
import statistics
import time
import unicodedata

import pytest

from train.data.formats import RecordError
from train.data.quality import (DataError, Rejects, exact_duplicates, length_percentiles, near_duplicates,
                                raise_or_count, split_train_eval)
from train.data.report import DataReport, console_summary, write_report

SYLLABLES = [chr(c) for c in range(0xAC00, 0xAC00 + 600)]


def korean_text(rng: random.Random, words: int) -> str:
    return " ".join("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(words))


# ----------------------------------------------------------------------------------------------------------------------
# Rejects
# ----------------------------------------------------------------------------------------------------------------------


def test_rejects_count_by_reason_and_keep_five_examples():
    rejects = Rejects()
    for line in range(1, 8):
        rejects.add("not_json", "a.jsonl", line, "not valid JSON")
    rejects.add("unknown_role", "b.json", 3, "messages[1].role: role 'model' ...", unit="record")
    assert rejects.total == 8
    assert rejects.by_reason() == {"not_json": 7, "unknown_role": 1}
    assert list(rejects.by_reason()) == ["not_json", "unknown_role"]  # most frequent first
    d = rejects.to_dict()
    assert d["examples"]["not_json"] == [f"a.jsonl:{i}: not valid JSON" for i in range(1, 6)]
    assert d["examples"]["unknown_role"] == ["b.json:record 3: messages[1].role: role 'model' ..."]

    other = Rejects()
    other.add("unknown_role", "c.jsonl", 9, "role 'bot'")
    other.add("empty_file", "d.jsonl", None, "the file is empty")
    rejects.merge(other)
    assert rejects.by_reason() == {"not_json": 7, "unknown_role": 2, "empty_file": 1}
    assert rejects.to_dict()["first"] == {"not_json": "a.jsonl:1", "unknown_role": "b.json:record 3",
                                          "empty_file": "d.jsonl"}
    assert rejects.to_dict()["examples"]["empty_file"] == ["d.jsonl: the file is empty"]
    assert json.loads(json.dumps(rejects.to_dict())) == rejects.to_dict()


def test_raise_or_count():
    err = RecordError("unknown_role", "role 'model' is not one of system, user, assistant",
                      "Map it: data.role_aliases: {model: assistant}.", "messages[1].role")
    with pytest.raises(DataError) as info:
        raise_or_count(err, "train.jsonl", 12, "raise", Rejects())
    assert str(info.value) == ("train.jsonl:12: messages[1].role: role 'model' is not one of system, user, assistant. "
                               "Map it: data.role_aliases: {model: assistant}.")
    assert (info.value.file, info.value.line, info.value.field) == ("train.jsonl", 12, "messages[1].role")
    rejects = Rejects()
    raise_or_count(err, "train.jsonl", 12, "skip", rejects)
    raise_or_count(err, "data.parquet", 4, "skip", rejects, unit="row")
    assert rejects.by_reason() == {"unknown_role": 2}
    assert rejects.to_dict()["examples"]["unknown_role"][1].startswith("data.parquet:row 4: messages[1].role: ")


# ----------------------------------------------------------------------------------------------------------------------
# Duplicates
# ----------------------------------------------------------------------------------------------------------------------


def test_exact_duplicates_normalise_whitespace_and_unicode():
    composed = "한국의 수도는 서울입니다."
    decomposed = unicodedata.normalize("NFD", composed)  # same text as saved by some macOS tools
    assert decomposed != composed
    keys = [composed, "부산은 항구 도시입니다.", "  한국의   수도는\n서울입니다. ", decomposed, "부산은 항구도시입니다."]
    assert exact_duplicates(keys) == [False, False, True, True, False]
    assert exact_duplicates(["깨진 \ud83d", "깨진 \ud83d"]) == [False, True]  # unpaired surrogates do not crash
    assert near_duplicates(["깨진 문자 \ud83d 포함", "깨진 문자 \ud83d 포함"], 0.9) == [False, True]


def brute_force_near_duplicates(keys, threshold):
    """Independent reference: every pair's exact Jaccard over character 5-grams, greedy keep-first."""
    def grams(text):
        text = " ".join(unicodedata.normalize("NFC", text).split())
        return {text[i:i + 5] for i in range(len(text) - 4)} if len(text) >= 5 else {text}

    sets = [grams(k) for k in keys]
    kept, flags = [], []
    for i, s in enumerate(sets):
        dup = any(len(s & sets[j]) / len(s | sets[j]) >= threshold for j in kept)
        flags.append(dup)
        if not dup:
            kept.append(i)
    return flags


def _edit(rng, text, changes):
    chars = list(text)
    for _ in range(changes):
        chars[rng.randrange(len(chars))] = rng.choice(SYLLABLES)
    return "".join(chars)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_near_duplicates_match_brute_force(threshold):
    rng = random.Random(threshold)
    originals = [korean_text(rng, rng.randint(8, 60)) for _ in range(80)]
    keys = list(originals)
    for _ in range(120):  # variants at many similarities, some on either side of the threshold
        base = rng.choice(originals)
        keys.append(_edit(rng, base, rng.choice([0, 1, 1, 2, 3, 5, 8])))
    keys += ["짧다", "짧다", "", ""]  # texts shorter than one 5-gram
    rng.shuffle(keys)
    expected = brute_force_near_duplicates(keys, threshold)
    assert 20 < sum(expected) < len(keys) - 60  # the set really has duplicates and non-duplicates
    assert near_duplicates(keys, threshold, seed=0) == expected


def test_near_duplicates_keeps_the_end_of_a_chain():
    a = "가나다라마바사아자차카타파하" * 2
    b = a[:-2] + "기니"  # close to a
    c = b[:-4] + "디리미비"  # close to b, less close to a
    assert brute_force_near_duplicates([a, b, c], 0.8) == near_duplicates([a, b, c], 0.8)


def test_near_duplicates_20000_korean_texts_in_seconds():
    rng = random.Random(5)
    base = [korean_text(rng, rng.randint(20, 100)) for _ in range(18_000)]
    picked = rng.sample(range(18_000), 2_000)
    keys = base + [base[i][:-2] + "다." for i in picked]  # one word changed at the end: Jaccard well above 0.9
    start = time.perf_counter()
    flags = near_duplicates(keys, 0.9)
    elapsed = time.perf_counter() - start
    assert flags[18_000:] == [True] * 2_000
    assert not any(flags[:18_000])
    assert elapsed < 20, f"{elapsed:.1f}s"  # ~3 s on 2 shared cores; the bound allows for a busy machine


# ----------------------------------------------------------------------------------------------------------------------
# Split
# ----------------------------------------------------------------------------------------------------------------------


def test_split_is_deterministic_and_close_to_the_fraction():
    rng = random.Random(0)
    keys = [korean_text(rng, 6) for _ in range(4000)]
    train, evaluation = split_train_eval(keys, 0.1, seed=42)
    assert (train, evaluation) == split_train_eval(list(keys), 0.1, seed=42)
    assert sorted(train + evaluation) == list(range(4000))
    assert 300 < len(evaluation) < 500
    assert split_train_eval(keys, 0.1, seed=43)[1] != evaluation


def test_split_is_stable_when_records_are_appended():
    rng = random.Random(1)
    keys = [korean_text(rng, 6) for _ in range(1000)]
    more = keys + [korean_text(rng, 6) for _ in range(1000)]
    _, eval_small = split_train_eval(keys, 0.2, seed=7)
    _, eval_big = split_train_eval(more, 0.2, seed=7)
    assert [i for i in eval_big if i < 1000] == eval_small
    shuffled = list(reversed(more))  # order does not matter either
    _, eval_rev = split_train_eval(shuffled, 0.2, seed=7)
    assert sorted(shuffled[i] for i in eval_rev) == sorted(more[i] for i in eval_big)


def test_split_puts_duplicates_on_the_same_side():
    rng = random.Random(2)
    unique = [korean_text(rng, 5) for _ in range(300)]
    keys = unique + [u + "  " for u in unique] + unique  # copies, one with extra whitespace
    _, evaluation = split_train_eval(keys, 0.3, seed=0)
    in_eval = set(evaluation)
    for i in range(300):
        assert (i in in_eval) == (i + 300 in in_eval) == (i + 600 in in_eval)


def test_split_edge_cases():
    assert split_train_eval(["가", "나", "다"], 0.0, seed=0) == ([0, 1, 2], [])
    train, evaluation = split_train_eval(["한국의 수도", "부산의 명소"], 0.01, seed=0)
    assert len(evaluation) == 1 and len(train) == 1  # a tiny set still gets one validation record
    assert split_train_eval(["같은 문장", "같은 문장"], 0.01, seed=0) == ([0, 1], [])  # cannot split one text
    with pytest.raises(ValueError):
        split_train_eval(["가"], 1.0, seed=0)


# ----------------------------------------------------------------------------------------------------------------------
# Lengths and report
# ----------------------------------------------------------------------------------------------------------------------


def test_length_percentiles_match_statistics_module():
    rng = random.Random(3)
    lengths = [int(rng.lognormvariate(5, 1)) + 1 for _ in range(999)]
    stats = length_percentiles(lengths)
    q = statistics.quantiles(lengths, n=100, method="inclusive")
    assert stats["count"] == 999 and stats["max"] == max(lengths)
    assert stats["mean"] == pytest.approx(statistics.fmean(lengths), abs=0.01)
    for p in (50, 90, 95, 99):
        assert stats[f"p{p}"] == pytest.approx(q[p - 1])
    assert length_percentiles([])["count"] == 0


def test_write_report_files(tmp_path):
    rejects = Rejects()
    rejects.add("unknown_role", "train.jsonl", 7, "messages[1].role: role 'model' is not one of system, user, "
                "assistant. Map it: data.role_aliases: {model: assistant}.")
    report = {
        "sources": [{"path": "train.jsonl", "format": "messages", "weight": 1.0, "records": 120, "accepted": 119,
                     "rejected": 1}],
        "rejects": rejects.to_dict(),
        "duplicates": {"mode": "near", "threshold": 0.9, "exact_removed": 3, "near_removed": 2},
        "overlong": {"mode": "drop", "samples": 4, "dropped": 4, "tokens_dropped": 9120},
        "split": {"train": 104, "eval": 6},
        "packing": {"efficiency": 0.9931, "rows": 21},
        "template": "qwen3",
    }
    rng = random.Random(4)
    lengths = [int(rng.lognormvariate(6, 0.6)) for _ in range(110)]
    paths = write_report(report, tmp_path / "out", lengths, max_length=1024)

    saved = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert {k: v for k, v in saved.items() if k != "token_lengths"} == report
    assert saved["token_lengths"]["count"] == 110
    assert saved["token_lengths"]["over_max_length"] == sum(n > 1024 for n in lengths)

    md = paths["markdown"].read_text(encoding="utf-8")
    for needle in ("## Sources", "| train.jsonl | messages |", "## Rejected records: 1", "| unknown_role | 1 |",
                   "train.jsonl:7: messages[1].role", "exact_removed | 3", "tokens_dropped | 9120", "| train | 104 |",
                   "## Token lengths per sample", "| p95 |", "| efficiency | 0.9931 |", "| template | qwen3 |",
                   "data_length_histogram.png"):
        assert needle in md, needle

    png = paths["histogram"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["data_length_histogram.png", "data_report.json",
                                                                      "data_report.md"]


def test_console_summary_names_every_stage_and_each_reasons_first_place():
    rejects, warnings = Rejects(), Rejects()
    for line in (3, 9, 12):
        rejects.add("template_error", "data/chat.jsonl", line, "the chat template refuses this conversation")
    rejects.add("not_json", "data/b.jsonl", 2, "not valid JSON")
    warnings.add("special_tokens_escaped", "data/chat.jsonl", 40, "special-token text encoded as plain text")
    report = DataReport(
        sources=[{"path": "data/chat.jsonl", "format": "auto", "weight": 1.0, "records": 97},
                 {"path": "data/b.jsonl", "format": "qa", "weight": 1.0, "records": 9}],
        records_read=107, rejects=rejects.to_dict(), warnings=warnings.to_dict(),
        duplicates={"mode": "exact", "exact_removed": 4, "near_removed": 0},
        overlong={"mode": "split", "overlong": 2, "dropped": 1, "split_into": 5, "tokens_lost": 30,
                  "label_tokens_lost": 0, "chunks_without_labels": 1},
        split={"train": 96, "eval": 6, "eval_from": "validation_split 0.05"},
        packing={"enabled": True, "rows": 11, "tokens": 20000, "label_tokens": 7000, "max_length": 2048,
                 "packing_efficiency": 0.8878}, eval_packing={"rows": 1}, max_length=2048)
    assert console_summary(report).splitlines() == [
        "data: read 107 records, 106 usable (chat.jsonl 97, b.jsonl 9)",
        "  rejected: 4",
        "    template_error: 3 (first at data/chat.jsonl:3)",
        "    not_json: 1 (first at data/b.jsonl:2)",
        "  warnings (kept): 1",
        "    special_tokens_escaped: 1 (first at data/chat.jsonl:40)",
        "  duplicates removed (exact): 4 exact",
        "  conversations: 96 train, 6 eval (validation_split 0.05)",
        "  longer than max_length 2048: 2 samples, split into 5 chunks (1 without labels, dropped)",
        "  rows: 11 train (packed, 20000 tokens, 7000 labelled, packing efficiency 0.8878), 1 eval",
    ]
    quiet = DataReport(sources=report.sources, rejects=Rejects().to_dict(), duplicates=report.duplicates,
                       overlong={"mode": "drop", "overlong": 0}, split={"train": 1, "eval": 0},
                       packing={"enabled": False, "rows": 1}, max_length=512)
    lines = console_summary(quiet).splitlines()
    assert lines[1:3] == ["  rejected: none", "  warnings (kept): none"]
    assert "  longer than max_length 512: none" in lines and lines[-1].startswith("  rows: 1 train (one sample per row")

"""The data-pipeline benchmark harness (bench/data_pipeline.py) runs in `make test`: `--quick` (500 samples) on our side
only (TRL is not installed in CI), real Qwen3 tokenizer, max_length 2048 and 4096."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_data_pipeline", REPO / "bench" / "data_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_packs_densely_and_loses_no_label(tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, "bench/data_pipeline.py", "--quick", "--no-trl", "--out", str(out),
                          "--scratch", str(tmp_path / "scratch")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["samples"] == 500 and result["inputs"]["ours"]["samples"] == 500
    rows = {(r["max_length"], r["pipeline"]): r for r in result["rows"]}
    assert set(rows) == {(m, p) for m in (2048, 4096) for p in ("ours", "ours-split_all")}
    for (max_length, pipeline), r in rows.items():
        assert r["samples"] == 500
        assert r["packing_efficiency"] >= 0.99, r  # real tokens / (rows * max_length), counted from the saved rows
        assert r["label_tokens_lost"] == 0, r  # labels counted before packing (untimed pass) vs in the saved rows
        # split: the only tokens not in a row are prompt tokens of split windows that carry no label, as derived
        # independently by label_less_windows; rows = input - those + the one-token overlaps of kept windows.
        # split_all: no token lost; rows = input + the overlaps of every window
        assert r["tokens_lost"] == r["tokens_lost_expected"] and r["tokens_accounted"], r
    assert rows[(2048, "ours")]["tokens_lost"] > 0 and rows[(2048, "ours-split_all")]["tokens_lost"] == 0
    over = {m: rows[(m, "ours")]["samples_over_max_length"] for m in (2048, 4096)}
    assert over[2048] > over[4096] >= 1  # long tail present
    assert "| 4096 | ours |" in res.stdout  # the markdown table


def test_label_less_windows_follow_the_documented_split_rule():
    bench = _bench_module()
    labels = [-100] * 10 + [7, 8, 9]  # 13 tokens, only the last three trained
    # windows of 5 sharing one token: [0,5) [4,9) [8,13); the first two carry no label (their first label is masked)
    assert bench.label_less_windows(labels, 5) == {"lost": 5 + 4, "overlap": 1, "overlap_all": 2}
    assert bench.label_less_windows(labels, 13) == {"lost": 0, "overlap": 0, "overlap_all": 0}  # fits: not split
    # [0,3) [2,5) [4,6)
    assert bench.label_less_windows([-100, 1, 2, 3, 4, 5], 3) == {"lost": 0, "overlap": 2, "overlap_all": 2}


def test_corpus_is_deterministic_long_tailed_and_free_of_duplicates():
    from bench import corpus

    first, again = corpus.make_corpus(400), corpus.make_corpus(400)
    assert first == again
    assert {r["kind"] for r in first} == {k for k, _ in corpus.MIX}
    keys = [json.dumps(r["messages"], ensure_ascii=False) for r in first]
    assert len(set(keys)) == len(keys)
    chars = sorted(sum(len(m["content"]) for m in r["messages"]) for r in first)
    assert chars[0] < 100 and chars[-1] > 20 * chars[len(chars) // 2]  # a few words up to thousands of tokens
    assert all(r["messages"][-1]["role"] == "assistant" for r in first)

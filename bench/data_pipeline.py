"""Data-preparation benchmark: this project's `prepare` stage against TRL's SFTTrainer dataset preparation.

    python bench/data_pipeline.py                 # 20,000 samples, max_length 2048 and 4096, both sides
    python bench/data_pipeline.py --quick         # 500 samples (the test in tests/test_bench_data.py runs this)
    python bench/data_pipeline.py --no-trl        # our side only (also what happens when trl is not installed)
    python bench/data_pipeline.py --repeat 3      # the BENCHMARKS.md run: medians of 3 runs per measurement

What it does, in one run, with one tokenizer (the real Qwen3 tokenizer from `launch.assets.qwen3_tokenizer()`, its
chat template set to the official Qwen3 template on both sides):
1. Writes a deterministic Korean chat corpus (OpenAI `messages` JSONL) shaped like the users' seeds: short keyword
   extraction samples (seed 001), long system prompts with finance news (seed 002), RAFT samples with several passages
   and distractors (seed 003), multi-turn M&A QA with a system prompt (seed 004), and short chit-chat from the
   `chatterbot_corpus` Korean data. Lengths run from a few tokens to several thousand (long-tailed).
2. For each max_length, each measurement in a fresh subprocess (so its peak memory is its own), `--repeat` times with
   the sides interleaved; the table gives the median wall and CPU seconds (CPU time is less disturbed by other
   processes on a shared machine):
   - ours: `train.data.prepare.load_or_build` on the JSONL file, i.e. everything `python -m launch prepare` does
     between loading the tokenizer and writing the reports: read + validate the JSONL, dedup, template, assistant-only
     labels, overlong split, BFD packing, and writing the Arrow dataset to its cache folder. (Reports/PNG: not timed.)
   - TRL: `SFTTrainer._prepare_dataset` (what `SFTTrainer(...)` runs on the train set) with `assistant_only_loss=True`,
     `packing=True`, its default `packing_strategy="bfd"` (and `bfd_split` as a second row) on the same records,
     already loaded as a `datasets.Dataset` (loading the JSONL and building the trainer around a tiny model are not
     timed; that favours TRL).
3. Counts, outside the timed part: input tokens and label tokens of every sample before packing (one untimed
   tokenisation per side), tokens and label tokens in the packed rows, so "lost" = input that reaches no row.

Results: a markdown table on stdout and a JSON file (default bench/results/data_pipeline.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_seconds, machine, median, memory_kb, trl_available  # noqa: E402
from bench.corpus import SEED, write_corpus  # noqa: E402
from train.data import IGNORE_INDEX  # noqa: E402
from train.paths import REPO  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------------
# Measurements. Each runs in its own subprocess (`--child`), so peak memory (VmHWM) belongs to that measurement alone.
# ----------------------------------------------------------------------------------------------------------------------


def _qwen3_tokenizer():
    """The real Qwen3 tokenizer with the official Qwen3 chat template (the one TRL recognises and patches)."""
    from transformers import AutoTokenizer

    from launch.assets import qwen3_tokenizer
    from train.data.templates import QWEN3

    tok = AutoTokenizer.from_pretrained(str(qwen3_tokenizer()))
    own_template = tok.chat_template
    tok.chat_template = QWEN3
    return tok, own_template


def _row_counts(dataset) -> Dict[str, int]:
    """rows, tokens and label tokens (labels != -100) of a prepared dataset, counted with pyarrow."""
    import pyarrow.compute as pc

    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    ids, labels = table.column("input_ids"), table.column("labels")
    tokens = int(pc.sum(pc.list_value_length(ids)).as_py() or 0)
    flat = pc.list_flatten(labels)
    label_tokens = int(pc.sum(pc.not_equal(flat, IGNORE_INDEX).cast("int64")).as_py() or 0)
    return {"rows": len(dataset), "tokens": tokens, "label_tokens": label_tokens}


def _our_config(corpus: Path, max_length: int, work: Path, num_proc: int, overlong: str = "split"):
    import yaml

    from launch.assets import qwen3_tokenizer
    from train.config import load_config

    recipe = {"model": {"name_or_path": str(qwen3_tokenizer())},
              "data": {"sources": [{"path": str(corpus), "format": "messages"}], "max_length": max_length,
                       "packing": True, "overlong": overlong, "template": "qwen3", "enable_thinking": False,
                       "validation_split": 0.0, "dedup": "exact", "cache_dir": str(work / "cache"),
                       "num_proc": num_proc},
              "output_dir": str(work / "out")}
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return load_config(path)


def measure_ours(corpus: Path, max_length: int, work: Path, num_proc: int = 1, profile: str = "",
                 overlong: str = "split") -> Dict[str, Any]:
    """Time `load_or_build` (the whole prepare stage; the cache folder is fresh) and count what reached the rows."""
    from train.data.prepare import load_or_build
    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    cfg = _our_config(corpus, max_length, work, num_proc, overlong)
    tokenizer = load_tokenizer(cfg)
    setup_tokenizer(tokenizer, cfg.data)
    rss_before = memory_kb("VmRSS")
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu, start = cpu_seconds(), time.perf_counter()
    prepared = load_or_build(cfg, tokenizer)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    peak = memory_kb("VmHWM")
    report = prepared.report
    return {"side": "ours" if overlong == "split" else f"ours-{overlong}", "overlong": overlong, "seconds": seconds, "cpu_seconds": cpu, "rss_before_kb": rss_before, "peak_rss_kb": peak,
            "samples": report.token_lengths["count"], **_row_counts(prepared.train),
            "reported": {"overlong": report.overlong, "packing": report.packing,
                         "duplicates": report.duplicates, "rejects": report.rejected}}


def label_less_windows(labels: List[int], max_length: int) -> Dict[str, int]:
    """What splitting one sample into max_length windows must lose, derived here from the rule as documented (not from
    the project's code): windows [start, stop) of at most max_length tokens, each after the first starting on the
    previous window's last token (whose label it masks). A window with no label left trains nothing and is dropped:
    its new tokens are lost. Returns {'lost': tokens in such windows, 'overlap': repeated tokens in kept windows,
    'overlap_all': repeated tokens when every window is kept (data.overlong=split_all)}."""
    n, lost, overlap, overlap_all, start = len(labels), 0, 0, 0, 0
    if n <= max_length:
        return {"lost": 0, "overlap": 0, "overlap_all": 0}
    while True:
        stop = min(start + max_length, n)
        new = stop - start - (1 if start else 0)
        overlap_all += 1 if start else 0
        if any(x != IGNORE_INDEX for x in labels[start + 1:stop]):
            overlap += 1 if start else 0
        else:
            lost += new
        if stop == n:
            return {"lost": lost, "overlap": overlap, "overlap_all": overlap_all}
        start = stop - 1


def count_ours_inputs(corpus: Path, work: Path, max_lengths: List[int]) -> Dict[str, Any]:
    """Tokens and label tokens of every sample before packing, by our template + labels (untimed), and, per
    max_length, what data.overlong=split must lose by `label_less_windows`."""
    from train.data.labels import tokenize_conversation
    from train.data.templates import setup_tokenizer
    from train.model import load_tokenizer

    cfg = _our_config(corpus, max(max_lengths), work, 1)
    tokenizer = load_tokenizer(cfg)
    setup_tokenizer(tokenizer, cfg.data)
    lengths, label_tokens = [], 0
    split = {str(m): {"lost": 0, "overlap": 0, "overlap_all": 0} for m in max_lengths}
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            out = tokenize_conversation(tokenizer, json.loads(line)["messages"], cfg.data)
            lengths.append(len(out["input_ids"]))
            label_tokens += sum(1 for x in out["labels"] if x != IGNORE_INDEX)
            for m in max_lengths:
                if len(out["labels"]) > m:
                    for key, value in label_less_windows(out["labels"], m).items():
                        split[str(m)][key] += value
    return {"side": "ours", "samples": len(lengths), "tokens": sum(lengths), "label_tokens": label_tokens,
            "over": {str(m): sum(1 for n in lengths if n > m) for m in max_lengths}, "split": split}


def _trl_trainer(tokenizer, work: Path, max_length, packing: bool, strategy: str, train_dataset):
    """An SFTTrainer around a tiny random Qwen3 (the model is irrelevant to data preparation; built untimed)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                         num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1,
                                         head_dim=8, max_position_embeddings=8192))
    args = SFTConfig(output_dir=str(work / "trl_out"), max_length=max_length, packing=packing,
                     packing_strategy=strategy, assistant_only_loss=True, report_to=[], use_cpu=True,
                     dataset_num_proc=None, logging_strategy="no", save_strategy="no")
    return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer), args


def _load_json_dataset(corpus: Path, work: Path):
    import datasets

    return datasets.load_dataset("json", data_files=str(corpus), split="train", cache_dir=str(work / "hf"))


def measure_trl(corpus: Path, max_length: int, work: Path, strategy: str = "bfd") -> Dict[str, Any]:
    """Time TRL's `SFTTrainer._prepare_dataset` (assistant_only_loss, packing with `strategy`) on the corpus."""
    tokenizer, _ = _qwen3_tokenizer()
    load_start = time.perf_counter()
    dataset = _load_json_dataset(corpus, work)
    load_seconds = time.perf_counter() - load_start
    trainer, args = _trl_trainer(tokenizer, work, max_length, True, strategy, dataset.select(range(4)))
    rss_before = memory_kb("VmRSS")
    cpu, start = cpu_seconds(), time.perf_counter()
    packed = trainer._prepare_dataset(dataset, tokenizer, args, True, None, "train")
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    peak = memory_kb("VmHWM")
    return {"side": f"trl-{strategy}", "seconds": seconds, "cpu_seconds": cpu, "load_json_seconds": load_seconds,
            "rss_before_kb": rss_before, "peak_rss_kb": peak, "samples": len(dataset), **_row_counts(packed)}


def count_trl_inputs(corpus: Path, work: Path, max_lengths: List[int]) -> Dict[str, Any]:
    """Tokens and label tokens of every sample as TRL tokenises it, without packing or truncation (untimed); and
    what assistant_only_loss does with the Qwen3 tokenizer's own (asset) chat template."""
    import pyarrow.compute as pc

    tokenizer, own_template = _qwen3_tokenizer()
    dataset = _load_json_dataset(corpus, work)
    trainer, args = _trl_trainer(tokenizer, work, None, False, "bfd", dataset.select(range(4)))
    prepared = trainer._prepare_dataset(dataset, tokenizer, args, False, None, "train")
    counts = _row_counts(prepared)
    table = prepared.with_format("arrow")[:]
    lengths = pc.list_value_length(table.column("input_ids")).to_numpy()

    own_template_error = None
    tokenizer.chat_template = own_template
    try:
        _trl_trainer(tokenizer, work, 2048, True, "bfd", dataset.select(range(4)))
    except Exception as e:  # noqa: BLE001 - recorded verbatim for the report
        own_template_error = f"{type(e).__name__}: {e}"
    return {"side": "trl", "samples": counts["rows"], "tokens": counts["tokens"],
            "label_tokens": counts["label_tokens"], "over": {str(m): int((lengths > m).sum()) for m in max_lengths},
            "own_template_assistant_only_loss": own_template_error or "works"}


CHILDREN = {"ours": measure_ours, "ours-inputs": count_ours_inputs, "trl": measure_trl, "trl-inputs": count_trl_inputs}


def _child_main(spec: Dict[str, Any]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(spec.pop("work"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HF_DATASETS_CACHE"] = str(work / "hf")
    fn = CHILDREN[spec.pop("kind")]
    result_path = Path(spec.pop("result"))
    result = fn(Path(spec.pop("corpus")), work=work, **spec)
    result_path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")


def run_child(kind: str, corpus: Path, scratch: Path, timeout: int = 3600, **kwargs) -> Dict[str, Any]:
    """Run one measurement in a fresh Python process; return its result dict (and its wall time)."""
    name = "-".join([kind] + [str(v) for v in kwargs.values() if v != "" and not isinstance(v, list)])
    work = scratch / name
    shutil.rmtree(work, ignore_errors=True)
    result = scratch / f"{name}.json"
    spec = {"kind": kind, "corpus": str(corpus), "work": str(work), "result": str(result), **kwargs}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    shutil.rmtree(work, ignore_errors=True)
    out = json.loads(result.read_text(encoding="utf-8"))
    out["process_seconds"] = round(time.perf_counter() - start, 2)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------------


def summarise(runs: List[Dict[str, Any]], inputs: Dict[str, Any], max_length: int) -> Dict[str, Any]:
    """One table row from the repeated runs of one pipeline at one max_length: median wall and CPU seconds,
    throughput, packing efficiency, tokens and label tokens that reached no row, peak memory (highest run)."""
    run = runs[0]  # the data results are identical in every repeat (deterministic); the times differ
    ours = run["side"].startswith("ours")
    seconds = median([r["seconds"] for r in runs])
    cpu = median([r["cpu_seconds"] for r in runs])
    row = {"max_length": max_length, "pipeline": run["side"], "repeats": len(runs), "samples": run["samples"],
           "seconds": round(seconds, 2), "seconds_all": [round(r["seconds"], 2) for r in runs],
           "cpu_seconds": round(cpu, 2), "cpu_seconds_all": [round(r["cpu_seconds"], 2) for r in runs],
           "samples_per_s": round(run["samples"] / seconds, 1), "tokens_per_s": round(inputs["tokens"] / seconds),
           "input_tokens": inputs["tokens"], "rows": run["rows"], "row_tokens": run["tokens"],
           "packing_efficiency": round(run["tokens"] / (run["rows"] * max_length), 5) if run["rows"] else 0.0,
           "input_label_tokens": inputs["label_tokens"],
           "label_tokens_lost": inputs["label_tokens"] - run["label_tokens"],
           "samples_over_max_length": inputs["over"][str(max_length)],
           "peak_rss_mib": round(max(r["peak_rss_kb"] for r in runs) / 1024),
           "rss_before_mib": round(run["rss_before_kb"] / 1024)}
    if ours:
        expected = inputs["split"][str(max_length)]
        keep_all = run.get("overlong") == "split_all"
        row["tokens_lost"] = run["reported"]["overlong"]["tokens_lost"]
        # split: prompt tokens in windows without labels (label_less_windows); split_all keeps every window
        row["tokens_lost_expected"] = 0 if keep_all else expected["lost"]
        # every input token is accounted for: rows = input - lost + the one-token overlaps of kept windows
        overlap = expected["overlap_all"] if keep_all else expected["overlap"]
        row["tokens_accounted"] = run["tokens"] == inputs["tokens"] - row["tokens_lost_expected"] + overlap
    else:
        row["tokens_lost"] = inputs["tokens"] - run["tokens"]  # TRL packs without repeating tokens
    return row


def markdown(rows: List[Dict[str, Any]]) -> str:
    head = ("| max_length | pipeline | wall s (median) | CPU s (median) | samples/s | tokens/s "
            "| ours ÷ TRL bfd (wall / CPU) | rows | packing efficiency | tokens lost | label tokens lost "
            "| peak RSS MiB (before) |")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    for r in rows:
        ratio = (f"{r['ratio_vs_trl_bfd']:.2f}× / {r['cpu_ratio_vs_trl_bfd']:.2f}×" if "ratio_vs_trl_bfd" in r else "—")
        lines.append(
            f"| {r['max_length']} | {r['pipeline']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
            f"{r['samples_per_s']:,.0f} | {r['tokens_per_s']:,} | {ratio} | {r['rows']:,} | "
            f"{100 * r['packing_efficiency']:.2f}% | {r['tokens_lost']:,} of {r['input_tokens']:,} | "
            f"{r['label_tokens_lost']:,} of {r['input_label_tokens']:,} | "
            f"{r['peak_rss_mib']:,} ({r['rss_before_mib']:,}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="500 samples")
    parser.add_argument("--max-lengths", default="2048,4096")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (medians are reported)")
    parser.add_argument("--no-trl", action="store_true", help="measure our side only")
    parser.add_argument("--trl-strategies", default="bfd,bfd_split")
    parser.add_argument("--num-proc", type=int, default=1, help="data.num_proc for our side")
    parser.add_argument("--overlong", default="split,split_all", help="data.overlong modes for our side")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", default=None,
                        help="JSON result file (default bench/results/data_pipeline[_quick].json)")
    parser.add_argument("--scratch", default=None, help="folder for the corpus and work files (default: a temp folder)")
    parser.add_argument("--profile", default="", help="write a cProfile of our side (first run) to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child_main(json.loads(args.child))
        return 0

    n = 500 if args.quick else args.samples
    max_lengths = [int(x) for x in args.max_lengths.split(",")]
    use_trl = not args.no_trl and trl_available()
    if not args.no_trl and not use_trl:
        print("trl is not installed: measuring our side only. For the comparison: "
              ".venv/bin/pip install -c <(echo torch==2.13.0) trl==1.16.0", flush=True)
    strategies = args.trl_strategies.split(",") if use_trl else []
    out_path = Path(args.out) if args.out else REPO / "bench" / "results" / (
        "data_pipeline_quick.json" if args.quick else "data_pipeline.json")
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bench-data-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        corpus = scratch / "corpus.jsonl"
        started = time.perf_counter()
        kinds = write_corpus(corpus, n, args.seed)
        print(f"corpus: {n} samples {kinds} → {corpus} ({time.perf_counter() - started:.1f}s)", flush=True)

        inputs = {"ours": run_child("ours-inputs", corpus, scratch, max_lengths=max_lengths)}
        if use_trl:
            inputs["trl"] = run_child("trl-inputs", corpus, scratch, max_lengths=max_lengths)
        print(f"inputs: {json.dumps(inputs, ensure_ascii=False)}", flush=True)

        # repeats outermost, sides interleaved: a change in the machine's load hits both sides alike
        runs: Dict[tuple, List[Dict[str, Any]]] = {}
        for repeat in range(args.repeat):
            for max_length in max_lengths:
                for overlong in args.overlong.split(","):
                    ours = run_child("ours", corpus, scratch, max_length=max_length, num_proc=args.num_proc,
                                     profile=args.profile if not runs else "", overlong=overlong)
                    runs.setdefault((max_length, ours["side"]), []).append(ours)
                for strategy in strategies:
                    trl = run_child("trl", corpus, scratch, max_length=max_length, strategy=strategy)
                    runs.setdefault((max_length, f"trl-{strategy}"), []).append(trl)
                print(f"repeat {repeat + 1}, max_length {max_length}: " + ", ".join(
                    f"{side} {r[-1]['seconds']:.1f}s" for (m, side), r in runs.items() if m == max_length), flush=True)

        rows = []
        for max_length in max_lengths:
            group = [summarise(r, inputs["ours"], max_length) for (m, side), r in runs.items()
                     if m == max_length and side.startswith("ours")]
            group += [summarise(runs[(max_length, f"trl-{s}")], inputs["trl"], max_length) for s in strategies]
            base = next((r for r in group if r["pipeline"] == "trl-bfd"), None)
            for r in group:
                if base is not None and r is not base:
                    r["ratio_vs_trl_bfd"] = round(base["seconds"] / r["seconds"], 2)
                    r["cpu_ratio_vs_trl_bfd"] = round(base["cpu_seconds"] / r["cpu_seconds"], 2)
            rows.extend(group)

        table = markdown(rows)
        print("\n" + table)
        command = " ".join(["python", "bench/data_pipeline.py"] + list(argv if argv is not None else sys.argv[1:]))
        result = {"date": time.strftime("%Y-%m-%d"), "samples": n, "seed": args.seed, "kinds": kinds,
                  "machine": machine(), "command": command, "inputs": inputs, "rows": rows,
                  "runs": {f"{m}/{side}": r for (m, side), r in runs.items()}, "table": table}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"\nwritten: {out_path}")
    finally:
        if not args.scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

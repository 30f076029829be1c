"""Data preparation, run once per (data, tokenizer, template, settings): sources → formats → dedup → split → template
+ labels → overlong handling → mixture → packing → an Arrow dataset on disk, plus a report.

The result is cached under `data.cache_dir/<fingerprint>/` and written atomically (build in a temporary folder, then
rename), so a training process either finds a complete cache or none. `python -m launch prepare --config R` builds it
before training; `train/sft.py` builds it itself when run as one process and, under several processes, lets rank 0
build it while the others poll the file system — no collective is involved, so no rank hits a NCCL timeout waiting
for another's tokenisation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import datasets

from train.config import Config, DataConfig, DataSource, to_dict
from train.data.formats import RecordError, to_messages
from train.data.labels import tokenize_conversation
from train.data.packing import handle_overlong, pack_bfd, packed_rows, packing_stats
from train.data.quality import (DataError, Rejects, exact_duplicates, length_percentiles, near_duplicates,
                                 raise_or_count, split_train_eval)
from train.data.report import write_report
from train.data.sources import iter_raw_records, mix_indices, resolve_files

COMPLETE = "COMPLETE"
FINGERPRINT_VERSION = "1"


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: Optional[datasets.Dataset]
    report: Dict[str, Any]
    path: Path


# ----------------------------------------------------------------------------------------------------------------------
# Fingerprint: data files, tokenizer, template, settings, and the code that transforms them.
# ----------------------------------------------------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tokenizer_digest(tokenizer) -> str:
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update((backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))).encode())
    h.update(str(tokenizer.chat_template).encode())
    h.update(json.dumps([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token], default=str).encode())
    return h.hexdigest()


def fingerprint(cfg: Config, tokenizer) -> str:
    data = to_dict(cfg)["data"]
    for key in ("cache_dir", "num_proc"):
        data.pop(key)
    files = []
    for src in list(cfg.data.sources) + list(cfg.data.eval_sources):
        for f in resolve_files(src.path):
            files.append((str(f), _file_digest(f)))
        if not resolve_files(src.path):
            files.append((src.path, src.split))  # hub dataset id: named, not hashed
    code = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        code.update(f.read_bytes())
    payload = json.dumps({"v": FINGERPRINT_VERSION, "data": data, "files": files, "tokenizer": _tokenizer_digest(tokenizer),
                          "code": code.hexdigest(), "seed": cfg.train.seed}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_path(cfg: Config, tokenizer) -> Path:
    return Path(cfg.data.cache_dir) / fingerprint(cfg, tokenizer)


# ----------------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------------


def _conversations(sources: List[DataSource], data: DataConfig, seed: int, rejects: Rejects) -> Iterator[Dict[str, Any]]:
    """Every valid record of every source as {'messages', 'source', 'file', 'line'}; bad records raise or are counted."""
    for index, source in enumerate(sources):
        for raw in iter_raw_records(source, data.on_error, rejects):
            try:
                messages = to_messages(raw.data, source, data, seed=seed)
            except RecordError as e:
                raise_or_count(e, raw.file, raw.line, data.on_error, rejects, unit=raw.unit)
                continue
            yield {"messages": messages, "source": index, "file": raw.file, "line": raw.line, "unit": raw.unit}


def _key(messages: List[Dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _read_all(sources: List[DataSource], data: DataConfig, seed: int, rejects: Rejects, workdir: Path,
              name: str) -> datasets.Dataset:
    """Stream the conversations into an on-disk Arrow table (memory stays bounded as the corpus grows)."""
    def gen(_name):
        yield from _conversations(sources, data, seed, rejects)

    features = datasets.Features({
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "source": datasets.Value("int32"), "file": datasets.Value("string"), "line": datasets.Value("int64"),
        "unit": datasets.Value("string"),
    })
    try:
        return datasets.Dataset.from_generator(gen, features=features, cache_dir=str(workdir / "hf"),
                                               gen_kwargs={"_name": f"{name}-{time.time_ns()}"})
    except datasets.exceptions.DatasetGenerationError as e:  # unwrap our own errors raised inside the generator
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, (DataError, RecordError)):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def _tokenize(dataset: datasets.Dataset, tokenizer, data: DataConfig, rejects: Rejects) -> datasets.Dataset:
    def fn(example):
        try:
            out = tokenize_conversation(tokenizer, example["messages"], data)
            return {"input_ids": out["input_ids"], "labels": out["labels"], "error": ""}
        except ValueError as e:
            return {"input_ids": [], "labels": [], "error": str(e)}

    tokenized = dataset.map(fn, num_proc=data.num_proc if data.num_proc > 1 else None, desc="template + labels")
    errors = [i for i, e in enumerate(tokenized["error"]) if e]
    for i in errors:
        row = tokenized[i]
        err = RecordError("no_trainable_tokens", row["error"], field="messages",
                          hint="Check the conversation has a non-empty assistant turn, or set data.on_error=skip")
        raise_or_count(err, row["file"], row["line"], data.on_error, rejects, unit=row["unit"])
    if errors:
        keep = sorted(set(range(len(tokenized))) - set(errors))
        tokenized = tokenized.select(keep)
    return tokenized.remove_columns(["error", "messages"])


def _rows(samples: datasets.Dataset, data: DataConfig, seed: int, workdir: Path, name: str):
    """Overlong handling, then packing (or one sample per row). Returns (rows dataset, counts)."""
    lengths = [len(x) for x in samples["input_ids"]]
    counts: Dict[str, Any] = {"samples": len(lengths)}
    overlong_idx = [i for i, n in enumerate(lengths) if n > data.max_length]
    fitting = samples.select([i for i, n in enumerate(lengths) if n <= data.max_length])
    overlong = samples.select(overlong_idx)
    extra, overlong_counts = handle_overlong([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in overlong],
                                             data.max_length, data.overlong)
    counts["overlong"] = overlong_counts
    items = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in fitting.select_columns(["input_ids", "labels"])]
    items.extend(extra)
    if data.packing:
        bins = pack_bfd([len(x["input_ids"]) for x in items], data.max_length)
        rows = packed_rows(items, bins)
    else:
        rows = [{"input_ids": x["input_ids"], "labels": x["labels"]} for x in items]
    counts["packing"] = packing_stats(rows, data.max_length)
    return datasets.Dataset.from_list(rows), counts


def build(cfg: Config, tokenizer, out: Path) -> Dict[str, Any]:
    """Run every stage and write the dataset and report into `out` (a fresh folder)."""
    data, seed = cfg.data, cfg.train.seed
    workdir = out / "_work"
    rejects = Rejects()
    t0 = time.time()

    conversations = _read_all(cfg.data.sources, data, seed, rejects, workdir, "train")
    per_source = {i: 0 for i in range(len(cfg.data.sources))}
    for s in conversations["source"]:
        per_source[s] += 1
    if len(conversations) == 0:
        raise DataError("no_records", f"no usable records in data.sources ({', '.join(s.path for s in cfg.data.sources)}); "
                        f"rejected by reason: {rejects.by_reason() or 'none'}",
                        "Check the paths and formats, or run `python -m launch prepare` and read data_report.md")

    keys = [_key(m) for m in conversations["messages"]]
    dups = exact_duplicates(keys)
    n_exact = sum(dups)
    n_near = 0
    if data.dedup == "near":
        near = near_duplicates(keys, data.near_dup_threshold, seed=seed)
        n_near = sum(1 for d, n in zip(dups, near) if n and not d)
        dups = [d or n for d, n in zip(dups, near)]
    if data.dedup != "none":
        keep = [i for i, d in enumerate(dups) if not d]
        conversations = conversations.select(keep)
        keys = [keys[i] for i in keep]
    else:
        n_exact = 0

    if data.eval_sources:
        train_conv = conversations
        eval_conv = _read_all(cfg.data.eval_sources, data, seed, rejects, workdir, "eval")
    elif data.validation_split > 0:
        train_idx, eval_idx = split_train_eval(keys, data.validation_split, seed)
        eval_idx = eval_idx[: data.max_eval_samples]
        train_conv, eval_conv = conversations.select(train_idx), conversations.select(eval_idx)
    else:
        train_conv, eval_conv = conversations, None

    # weighted mixture of sources (training split only)
    weights = [s.weight for s in cfg.data.sources]
    if any(w != 1.0 for w in weights):
        by_source: Dict[int, List[int]] = {i: [] for i in range(len(weights))}
        for row, s in enumerate(train_conv["source"]):
            by_source[s].append(row)
        pairs = mix_indices([len(by_source[i]) for i in range(len(weights))], weights, seed)
        train_conv = train_conv.select([by_source[s][r] for s, r in pairs])

    train_tok = _tokenize(train_conv, tokenizer, data, rejects)
    if len(train_tok) == 0:
        raise DataError("no_records", f"every training record was rejected: {rejects.by_reason()}",
                        "Read data_report.md for examples of each reason")
    lengths = [len(x) for x in train_tok["input_ids"]]
    train_rows, train_counts = _rows(train_tok, data, seed, workdir, "train")
    eval_rows, eval_counts = None, None
    if eval_conv is not None and len(eval_conv):
        eval_tok = _tokenize(eval_conv, tokenizer, data, rejects)
        eval_rows, eval_counts = _rows(eval_tok, data, seed, workdir, "eval")
        eval_conv.select_columns(["messages", "source", "file", "line"]).to_json(
            str(out / "eval_conversations.jsonl"), force_ascii=False)

    train_rows.save_to_disk(str(out / "train"))
    if eval_rows is not None:
        eval_rows.save_to_disk(str(out / "eval"))

    token_lengths = length_percentiles(lengths)
    token_lengths.update(max_length=data.max_length, over_max_length=sum(1 for n in lengths if n > data.max_length))
    report = {
        "sources": [{"path": s.path, "format": s.format, "weight": s.weight, "records": per_source[i]}
                    for i, s in enumerate(cfg.data.sources)],
        "rejects": rejects.to_dict(),
        "duplicates": {"mode": data.dedup, "exact_removed": n_exact, "near_removed": n_near,
                       **({"threshold": data.near_dup_threshold} if data.dedup == "near" else {})},
        "overlong": {"mode": data.overlong, **train_counts["overlong"]},
        "split": {"train": len(train_conv), "eval": len(eval_conv) if eval_conv is not None else 0,
                  "eval_from": "data.eval_sources" if data.eval_sources else f"validation_split {data.validation_split}"},
        "token_lengths": token_lengths,
        "packing": {"enabled": data.packing, **train_counts["packing"]},
        "eval_packing": eval_counts["packing"] if eval_counts else None,
        "max_length": data.max_length,
        "seconds": round(time.time() - t0, 2),
    }
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
    (out / "lengths.json").write_text(json.dumps(lengths))
    shutil.rmtree(workdir, ignore_errors=True)
    return report


def load_or_build(cfg: Config, tokenizer, is_main: bool = True, wait_timeout_s: float = 24 * 3600) -> PreparedData:
    """Return the prepared data for this config, building it if needed (main process only; others wait on the marker)."""
    path = cache_path(cfg, tokenizer)
    if not (path / COMPLETE).exists():
        if is_main:
            tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                build(cfg, tokenizer, tmp)
                (tmp / COMPLETE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
                if path.exists():  # a stale incomplete folder
                    shutil.rmtree(path)
                os.replace(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        else:
            start = time.time()
            while not (path / COMPLETE).exists():
                if time.time() - start > wait_timeout_s:
                    raise DataError("cache_timeout", f"waited {wait_timeout_s:.0f}s for rank 0 to prepare {path}",
                                    "Run `python -m launch prepare --config <recipe>` before launching")
                time.sleep(2)
    report = json.loads((path / "report.json").read_text(encoding="utf-8"))
    train = datasets.load_from_disk(str(path / "train"))
    eval_ds = datasets.load_from_disk(str(path / "eval")) if (path / "eval").exists() else None
    return PreparedData(train=train, eval=eval_ds, report=report, path=path)


def write_reports(prepared: PreparedData, out_dir: Path) -> Dict[str, Path]:
    lengths = json.loads((prepared.path / "lengths.json").read_text())
    return write_report(prepared.report, Path(out_dir), lengths, prepared.report["max_length"])

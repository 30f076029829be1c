"""Data preparation, run once per (data, tokenizer, template, settings): sources → formats → dedup → split → template
+ labels → overlong handling → mixture → packing → an Arrow dataset on disk, plus a report.

The result is cached under `data.cache_dir/<fingerprint>/` and written atomically (build in a temporary folder, then
rename), so a training process either finds a complete cache or none. `python -m launch prepare --config R` builds it
before training; `train/sft.py` builds it itself when run as one process and, under several processes, lets rank 0
build it while the others poll the file system — no collective is involved, so no rank hits a NCCL timeout waiting
for another's tokenisation.

Memory stays bounded as the corpus grows: records stream from the files into Arrow tables on disk, tokenisation is a
batched map from one Arrow file to another, and packing works on the samples' lengths, then builds and writes the rows
bin by bin. What stays in Python is O(number of samples) small values (see "Stages" below).
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
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.arrow_writer import ArrowWriter

from train.config import Config, DataConfig, DataSource, to_dict
from train.data.encoding import ConversationEncoder
from train.data.formats import RecordError, RecordWarning, to_messages
from train.data.labels import template_strings, tokenize_conversations
from train.data import IGNORE_INDEX
from train.data.packing import handle_overlong, pack_bfd
from train.data.quality import (DataError, Rejects, exact_duplicates, length_percentiles, near_duplicates, normalize,
                                 raise_or_count, split_train_eval)
from train.data.report import DataReport, write_report
from train.data.sources import iter_raw_records, mix_indices, resolve_files
from train.data.templates import template_layout

COMPLETE = "COMPLETE"
FINGERPRINT_VERSION = "4"  # 4: special-token text escaped, reply whitespace, reasoning_content, RAFT labels
TRAIN_FILE, EVAL_FILE = "train.arrow", "eval.arrow"  # the rows, written once by _write_rows and memory-mapped


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: Optional[datasets.Dataset]
    report: DataReport
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
        resolved = resolve_files(src.path)
        files.extend((str(f), _file_digest(f)) for f in resolved)
        if not resolved:
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
# Stages. Memory: every stage streams through Arrow files in the build's work folder (`<out>/_work`); what is held in
# Python is O(number of samples) small values (lengths, digests, indices, bins), never the texts or token lists of the
# whole corpus. The exception is data.dedup=near, which compares every text with every other and loads them all.
# ----------------------------------------------------------------------------------------------------------------------

TOKENIZE_BATCH = 64  # conversations per batch of the tokenising map (and per Arrow write)
ROW_WRITE_TOKENS = 1 << 18  # token slots per Arrow write of rows and of overlong chunks (bounds one write's memory)


def _key(messages: List[Dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _digest(messages: List[Dict[str, str]]) -> str:
    """A conversation's identity for exact dedup and the train/eval split: a hash of its normalised text."""
    return hashlib.blake2b(normalize(_key(messages)).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _conversations(sources: List[DataSource], data: DataConfig, seed: int, rejects: Rejects,
                   warnings: Rejects) -> Iterator[Dict[str, Any]]:
    """Every valid record of every source as {'messages', 'digest', 'source', 'file', 'line', 'unit'}; bad records
    raise or are counted in `rejects`, records kept but changed are counted in `warnings`."""
    for index, source in enumerate(sources):
        for raw in iter_raw_records(source, data.on_error, rejects, warnings):
            notes: List[RecordWarning] = []
            try:
                messages = to_messages(raw.data, source, data, seed=seed, warnings=notes)
            except RecordError as e:
                raise_or_count(e, raw.file, raw.line, data.on_error, rejects, unit=raw.unit)
                continue
            for note in notes:
                warnings.add(note.reason, raw.file, raw.line, str(note), unit=raw.unit)
            yield {"messages": messages, "digest": _digest(messages), "source": index, "file": raw.file,
                   "line": raw.line, "unit": raw.unit}


def _to_arrow(records: Iterator[Dict[str, Any]], features: datasets.Features, path: Path,
              batch_size: int = 1000) -> datasets.Dataset:
    """Write `records` to the Arrow file `path`, `batch_size` at a time (pyarrow converts each batch in one call), and
    open it memory-mapped. Errors raised while iterating `records` (our DataError / RecordError) propagate as they
    are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = features.arrow_schema
    writer = ArrowWriter(features=features, path=str(path))
    batch: List[Dict[str, Any]] = []
    for record in records:
        batch.append(record)
        if len(batch) == batch_size:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            batch = []
    if batch:
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    writer.finalize()
    return datasets.Dataset.from_file(str(path))


CONVERSATION_FEATURES = datasets.Features({
    "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    "digest": datasets.Value("string"), "source": datasets.Value("int32"), "file": datasets.Value("string"),
    "line": datasets.Value("int64"), "unit": datasets.Value("string"),
})
TOKEN_LISTS = {"input_ids": datasets.Sequence(datasets.Value("int32")),
               "labels": datasets.Sequence(datasets.Value("int32"))}


def _read_all(sources: List[DataSource], data: DataConfig, seed: int, rejects: Rejects, warnings: Rejects,
              workdir: Path, name: str) -> datasets.Dataset:
    """Stream the conversations into an on-disk Arrow table (memory stays bounded as the corpus grows)."""
    return _to_arrow(_conversations(sources, data, seed, rejects, warnings), CONVERSATION_FEATURES,
                     workdir / f"conversations-{name}.arrow")


def _column(dataset: datasets.Dataset, name: str) -> np.ndarray:
    """One scalar column as a numpy array, in the dataset's row order (reads only that column)."""
    return dataset.select_columns([name]).with_format("arrow")[:].column(name).to_numpy(zero_copy_only=False)


SPECIAL_TOKENS_WARNING = {"escape": "special_tokens_escaped", "keep": "special_tokens_kept"}


def _tokenize(dataset: datasets.Dataset, tokenizer, data: DataConfig, rejects: Rejects, warnings: Rejects,
              name: str):
    """Template + assistant-only labels for every conversation, in batches written to Arrow; adds `length` (tokens).
    Returns (tokenized samples, the indices in `dataset` of the conversations they come from).
    A conversation that cannot be trained on (labels.py's RecordError: a template that refuses it, no trainable token,
    special-token text under data.special_tokens_in_content=reject, ...) raises or is counted (data.on_error) and is
    left out; special-token text that is escaped or kept is counted in `warnings`."""
    encoder = ConversationEncoder(tokenizer, template_strings(template_layout(tokenizer, data)))

    def fn(batch):
        out: Dict[str, list] = {"input_ids": [], "labels": [], "length": [], "error": [], "special_tokens": []}
        for sample in tokenize_conversations(tokenizer, batch["messages"], data, encoder):
            failed = isinstance(sample, RecordError)
            ids, labels = ([], []) if failed else (sample["input_ids"], sample["labels"])
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["length"].append(len(ids))
            out["error"].append(json.dumps({"reason": sample.reason, "problem": sample.problem, "hint": sample.hint,
                                            "field": sample.field}, ensure_ascii=False) if failed else "")
            out["special_tokens"].append("" if failed else sample.get("special_tokens", ""))
        return out

    features = datasets.Features({**TOKEN_LISTS, "length": datasets.Value("int32"), "error": datasets.Value("string"),
                                  "special_tokens": datasets.Value("string"),
                                  **{k: v for k, v in CONVERSATION_FEATURES.items() if k != "messages"}})
    # new_fingerprint: our cache already has a fingerprint; without it datasets hashes the tokenizer (seconds).
    tokenized = dataset.map(fn, batched=True, batch_size=TOKENIZE_BATCH, writer_batch_size=TOKENIZE_BATCH,
                            remove_columns=["messages"], features=features,
                            num_proc=data.num_proc if data.num_proc > 1 else None,
                            new_fingerprint=f"tokenized-{name}-{time.time_ns()}", desc="template + labels")
    errors = np.flatnonzero(_column(tokenized, "error") != "")
    for i in errors.tolist():
        row = tokenized[i]
        err = RecordError(**json.loads(row["error"]))
        raise_or_count(err, row["file"], row["line"], data.on_error, rejects, unit=row["unit"])
    for i in np.flatnonzero(_column(tokenized, "special_tokens") != "").tolist():
        row = tokenized[i]
        action = ("encoded as plain text" if data.special_tokens_in_content == "escape"
                  else "encoded as control tokens (data.special_tokens_in_content=keep)")
        warnings.add(SPECIAL_TOKENS_WARNING[data.special_tokens_in_content], row["file"], row["line"],
                     f"special-token text {action}: {row['special_tokens']}", unit=row["unit"])
    keep = np.ones(len(tokenized), dtype=bool)
    keep[errors] = False
    kept = np.flatnonzero(keep)
    if len(errors):
        tokenized = tokenized.select(kept)
    return tokenized.remove_columns(["error", "special_tokens"]), kept


def _sample(samples: datasets.Dataset, i: int) -> Dict[str, List[int]]:
    row = samples[int(i)]
    return {"input_ids": row["input_ids"], "labels": row["labels"]}


def _split_overlong(samples: datasets.Dataset, overlong: List[int], data: DataConfig, workdir: Path, name: str):
    """`handle_overlong` on the overlong samples, one at a time; the chunks they become are written to an Arrow file.
    Returns (chunks dataset, counts)."""
    _, counts = handle_overlong([], data.max_length, data.overlong)  # zero counts; checks the mode and max_length

    def gen():
        for i in overlong:
            chunks, one = handle_overlong([_sample(samples, i)], data.max_length, data.overlong)
            for key, value in one.items():
                counts[key] += value
            yield from chunks

    chunks = _to_arrow(gen(), datasets.Features(TOKEN_LISTS), workdir / f"chunks-{name}.arrow",
                       batch_size=max(1, ROW_WRITE_TOKENS // data.max_length))
    return chunks, counts


def _rows(samples: datasets.Dataset, data: DataConfig, workdir: Path, name: str, path: Optional[Path] = None):
    """Overlong handling, then packing (or one sample per row), streamed into the Arrow file `path` (default: in the
    work folder): returns (rows dataset, counts).

    Only lengths and indices are held in memory: overlong samples are split or dropped one at a time into an Arrow
    file of chunks (`_split_overlong`); best-fit-decreasing packing (`pack_bfd`) works on the lengths of the samples
    that fit and of the chunks; the rows are then assembled a group of bins at a time from the Arrow files and
    written to Arrow (`_write_rows`)."""
    samples = samples.select_columns(["input_ids", "labels"]).with_format(None)
    lengths = _lengths(samples)
    fitting = np.flatnonzero(lengths <= data.max_length)
    chunks, overlong_counts = _split_overlong(samples, np.flatnonzero(lengths > data.max_length).tolist(), data,
                                              workdir, name)
    # items: the samples that fit, then the chunks; an item is (source, row): source 0 = samples, 1 = chunks
    item_source = np.concatenate([np.zeros(len(fitting), np.int8), np.ones(len(chunks), np.int8)])
    item_row = np.concatenate([fitting, np.arange(len(chunks))]).astype(np.int64)
    item_length = lengths[fitting].tolist() + _lengths(chunks).tolist()
    del lengths, fitting
    bins = pack_bfd(item_length, data.max_length) if data.packing else [[k] for k in range(len(item_length))]
    del item_length
    path = path or workdir / f"rows-{name}.arrow"
    rows = _write_rows((samples, chunks), item_source, item_row, bins, data.packing, data.max_length, path)
    counts = {"samples": len(samples), "overlong": overlong_counts, "packing": row_stats(rows, data.max_length)}
    return rows, counts


def _write_rows(sources, item_source: np.ndarray, item_row: np.ndarray, bins: List[List[int]], packing: bool,
                max_length: int, path: Path) -> datasets.Dataset:
    """Write one row per bin to the Arrow file `path`, ROW_WRITE_TOKENS token slots at a time, and open it.

    A packed row is exactly `packing.packed_rows` of its bin (tests/test_prepare_scale.py checks it): the members'
    input_ids and labels concatenated in bin order, each member's first label set to -100, position_ids restarting at
    0 for each member. Unpacked rows are the samples as they are. The token lists are gathered and concatenated with
    pyarrow and numpy (no Python list per token), so a group of rows costs one vectorised pass."""
    columns = ["input_ids", "labels"] + (["position_ids"] if packing else [])
    features = datasets.Features({**{c: datasets.Sequence(datasets.Value("int32")) for c in columns},
                                  "length": datasets.Value("int32")})  # real tokens: the balanced sampler reads it
    tables = [source.with_format("arrow") for source in sources]
    per_write = max(1, ROW_WRITE_TOKENS // max_length)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = ArrowWriter(features=features, path=str(path))
    for first in range(0, len(bins), per_write):
        group = bins[first:first + per_write]
        members = np.fromiter((k for b in group for k in b), dtype=np.int64)
        row_sizes = np.fromiter((len(b) for b in group), dtype=np.int64, count=len(group))
        ids, labels, lengths = _gather(tables, item_source[members], item_row[members])
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)  # each member's first token
        if packing:
            labels[starts] = IGNORE_INDEX
        member_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        row_offsets = pa.array(member_offsets[np.concatenate([[0], np.cumsum(row_sizes)])], pa.int32())
        out = {"input_ids": ids, "labels": labels}
        if packing:
            out["position_ids"] = (np.arange(len(ids), dtype=np.int64) - np.repeat(starts, lengths)).astype(np.int32)
        table = {c: pa.ListArray.from_arrays(row_offsets, pa.array(out[c], pa.int32())) for c in columns}
        table["length"] = pa.array(np.diff(row_offsets.to_numpy()), pa.int32())
        writer.write_table(pa.table(table))
    writer.finalize()
    return datasets.Dataset.from_file(str(path))


def _gather(tables, source: np.ndarray, row: np.ndarray):
    """input_ids and labels of the items (source[i], row[i]), concatenated in item order, and the items' lengths."""
    n = len(row)
    item_start, item_length = np.zeros(n, np.int64), np.zeros(n, np.int64)
    flat_ids, flat_labels, base = [], [], 0
    for s, table in enumerate(tables):
        where = np.flatnonzero(source == s)
        if not len(where):
            continue
        taken = table[row[where].tolist()]  # a pyarrow Table of those rows, in that order
        ids = taken.column("input_ids").combine_chunks()
        offsets = ids.offsets.to_numpy().astype(np.int64)
        item_start[where] = base + offsets[:-1] - offsets[0]
        item_length[where] = np.diff(offsets)
        flat_ids.append(ids.flatten().to_numpy())
        flat_labels.append(taken.column("labels").combine_chunks().flatten().to_numpy())
        base += int(offsets[-1] - offsets[0])
    order = np.repeat(item_start, item_length) + _ranges(item_length)  # flat positions of the items' tokens, in order
    return (np.concatenate(flat_ids).astype(np.int32)[order], np.concatenate(flat_labels).astype(np.int32)[order],
            item_length)


def _ranges(counts: np.ndarray) -> np.ndarray:
    """[0..c0-1, 0..c1-1, ...] for counts [c0, c1, ...]."""
    total = int(counts.sum())
    return np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def _lengths(samples: datasets.Dataset) -> np.ndarray:
    """Token count of every sample, read with pyarrow (list lengths; the token lists are not converted)."""
    table = samples.select_columns(["input_ids"]).with_format("arrow")[:]
    return pc.list_value_length(table.column("input_ids")).to_numpy(zero_copy_only=False).astype(np.int64)


def row_stats(rows: datasets.Dataset, max_length: int) -> Dict[str, Any]:
    """`packing.packing_stats` of an on-disk dataset, counted with pyarrow one record batch at a time (the rows are
    never loaded as Python lists). Same keys and rounding."""
    table = rows.data.table if rows._indices is None else rows.flatten_indices().data.table  # noqa: SLF001
    tokens = label_tokens = 0
    for batch in table.to_batches():
        tokens += int(pc.sum(pc.list_value_length(batch.column("input_ids"))).as_py() or 0)
        flat = pc.list_flatten(batch.column("labels"))
        label_tokens += int(pc.sum(pc.not_equal(flat, IGNORE_INDEX).cast("int64")).as_py() or 0)
    n_rows = len(rows)
    slots = n_rows * max_length
    efficiency = tokens / slots if slots else 0.0
    return {"rows": n_rows, "tokens": tokens, "label_tokens": label_tokens, "max_length": max_length,
            "packing_efficiency": round(efficiency, 6),
            "padding_fraction": round(1.0 - efficiency, 6) if slots else 0.0}


def build(cfg: Config, tokenizer, out: Path) -> DataReport:
    """Run every stage and write the dataset and report into `out` (a fresh folder)."""
    data, seed = cfg.data, cfg.train.seed
    workdir = out / "_work"
    rejects, warnings = Rejects(), Rejects()
    t0 = time.time()

    conversations = _read_all(cfg.data.sources, data, seed, rejects, warnings, workdir, "train")
    records_read = len(conversations) + rejects.total  # every record met in the training sources, usable or not
    if len(conversations) == 0:
        raise DataError("no_records", f"no usable records in data.sources ({', '.join(s.path for s in cfg.data.sources)}); "
                        f"rejected by reason: {rejects.by_reason() or 'none'}",
                        "Check the paths and formats, or run `python -m launch prepare` and read data_report.md")
    per_source = np.bincount(_column(conversations, "source"), minlength=len(cfg.data.sources)).tolist()

    digests = _column(conversations, "digest").tolist()  # 32 characters per record, not the texts
    dups = exact_duplicates(digests)
    n_exact = sum(dups)
    n_near = 0
    if data.dedup == "near":  # compares texts: the one stage that holds every text in memory
        keys = [_key(m) for m in conversations["messages"]]
        near = near_duplicates(keys, data.near_dup_threshold, seed=seed)
        del keys
        n_near = sum(1 for d, n in zip(dups, near) if n and not d)
        dups = [d or n for d, n in zip(dups, near)]
    if data.dedup != "none":
        keep = [i for i, d in enumerate(dups) if not d]
        conversations = conversations.select(keep)
        digests = [digests[i] for i in keep]
    else:
        n_exact = 0

    if data.eval_sources:
        train_conv = conversations
        eval_conv = _read_all(cfg.data.eval_sources, data, seed, rejects, warnings, workdir, "eval")
    elif data.validation_split > 0:
        train_idx, eval_idx = split_train_eval(digests, data.validation_split, seed)
        eval_idx = eval_idx[: data.max_eval_samples]
        train_conv, eval_conv = conversations.select(train_idx), conversations.select(eval_idx)
    else:
        train_conv, eval_conv = conversations, None
    del digests

    # weighted mixture of sources (training split only)
    weights = [s.weight for s in cfg.data.sources]
    if any(w != 1.0 for w in weights):
        by_source: Dict[int, List[int]] = {i: [] for i in range(len(weights))}
        for row, s in enumerate(_column(train_conv, "source").tolist()):
            by_source[s].append(row)
        pairs = mix_indices([len(by_source[i]) for i in range(len(weights))], weights, seed)
        train_conv = train_conv.select([by_source[s][r] for s, r in pairs])

    train_tok, _ = _tokenize(train_conv, tokenizer, data, rejects, warnings, "train")
    if len(train_tok) == 0:
        raise DataError("no_records", f"every training record was rejected: {rejects.by_reason()}",
                        "Read data_report.md for examples of each reason")
    lengths = _column(train_tok, "length").astype(np.int64)
    train_rows, train_counts = _rows(train_tok, data, workdir, "train", out / TRAIN_FILE)
    if len(train_rows) == 0:
        o = train_counts["overlong"]
        raise DataError("no_rows", f"no training row is left: all {o['overlong']} samples are longer than "
                        f"data.max_length={data.max_length} and data.overlong={data.overlong} dropped them "
                        f"({o['chunks_without_labels']} chunks had no assistant token)",
                        "Raise data.max_length, or set data.overlong=split")
    eval_rows, eval_counts = None, None
    if eval_conv is not None and len(eval_conv):
        eval_tok, kept = _tokenize(eval_conv, tokenizer, data, rejects, warnings, "eval")
        if len(eval_tok):  # the held-out conversations that were not rejected, for `launch eval`
            eval_rows, eval_counts = _rows(eval_tok, data, workdir, "eval", out / EVAL_FILE)
            eval_conv.select(kept).select_columns(["messages", "source", "file", "line"]).to_json(
                str(out / "eval_conversations.jsonl"), force_ascii=False)

    token_lengths = length_percentiles(lengths)
    token_lengths.update(max_length=data.max_length, over_max_length=int((lengths > data.max_length).sum()))
    report = DataReport(
        sources=[{"path": s.path, "format": s.format, "weight": s.weight, "records": per_source[i]}
                 for i, s in enumerate(cfg.data.sources)],
        records_read=records_read,
        rejects=rejects.to_dict(),
        warnings=warnings.to_dict(),
        duplicates={"mode": data.dedup, "exact_removed": n_exact, "near_removed": n_near,
                    **({"threshold": data.near_dup_threshold} if data.dedup == "near" else {})},
        overlong={"mode": data.overlong, **train_counts["overlong"]},
        split={"train": len(train_conv), "eval": len(eval_conv) if eval_conv is not None else 0,
               "eval_from": "data.eval_sources" if data.eval_sources else f"validation_split {data.validation_split}"},
        token_lengths=token_lengths,
        packing={"enabled": data.packing, **train_counts["packing"]},
        eval_packing=eval_counts["packing"] if eval_counts else None,
        max_length=data.max_length,
        seconds=round(time.time() - t0, 2),
    )
    (out / "report.json").write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=2), encoding="utf-8")
    (out / "lengths.json").write_text(json.dumps(lengths.tolist()))
    del train_rows, eval_rows, train_tok, conversations, train_conv, eval_conv
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
    report = DataReport.from_dict(json.loads((path / "report.json").read_text(encoding="utf-8")))
    train = datasets.Dataset.from_file(str(path / TRAIN_FILE))  # memory-mapped, not loaded
    eval_ds = datasets.Dataset.from_file(str(path / EVAL_FILE)) if (path / EVAL_FILE).exists() else None
    return PreparedData(train=train, eval=eval_ds, report=report, path=path)


def write_reports(prepared: PreparedData, out_dir: Path) -> Dict[str, Path]:
    lengths = json.loads((prepared.path / "lengths.json").read_text())
    return write_report(prepared.report, Path(out_dir), lengths, prepared.report.max_length)

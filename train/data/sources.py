"""Read raw records from the files and hub datasets named in `data.sources`, one at a time.

Supported: JSON Lines (`.jsonl`, preferred: streamed line by line, so memory stays flat however large the file),
JSON arrays (`.json`, loaded whole: fine for small files, convert big ones to JSONL), Parquet (`.parquet`, streamed in
row batches with pyarrow) and CSV (`.csv`, streamed, header row required). `path` may be a file, a glob
(`data/*.jsonl`, sorted) or a folder (its .jsonl/.json/.parquet/.csv files, sorted, not recursive). A value shaped like
`org/name` that is not a local path is a Hugging Face hub dataset id, read with `datasets` in streaming mode.

Each record keeps its file and position so any later error can name them: `line` is the 1-based line for JSONL and
CSV (for CSV the header is line 1, so the first data row is line 2), the 1-based record number for JSON arrays and hub
datasets, and the 1-based row for Parquet; `unit` says which ('line', 'record' or 'row').

Problems in the files (not JSON, a cut-off last line, wrong CSV columns, an empty file, a non-UTF-8 file...) go
through `data.on_error`: 'raise' stops with a DataError naming the file, line and fix; 'skip' counts them in
`Rejects` and reads on. Blank lines are skipped without counting: they are formatting, not records.

A `.jsonl` file that holds one JSON array (a `.json` file saved under the wrong name, often pretty-printed over many
lines) is recognised once, by its first character: it is read as a JSON array, with one warning
(`json_array_in_jsonl`), or, when it is not valid JSON, gives one error for the file, not one per line.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Callable, Iterator, List, Optional

from train.config import DataSource
from train.data.formats import required_columns
from train.data.quality import DataError, Rejects, raise_or_count

__all__ = ["RawRecord", "DataError", "Rejects", "resolve_files", "iter_raw_records", "is_hub_id", "mix_indices"]

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_OTHER_FILE_SUFFIXES = (".txt", ".tsv", ".gz", ".zip", ".xlsx", ".xls", ".yaml", ".yml", ".arrow", ".md")
_BOM = b"\xef\xbb\xbf"
_CSV_FIELD_LIMIT = 2**31 - 1
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_UTF8_HINT = ("Save the file as UTF-8, e.g. `iconv -f cp949 -t utf-8 in.jsonl > out.jsonl` "
              "(Korean files from Excel or Windows are often CP949/EUC-KR).")


@dataclass
class RawRecord:
    data: dict
    file: str
    line: int
    unit: str = "line"  # what `line` counts: 'line' (JSONL, CSV), 'record' (JSON array, hub) or 'row' (Parquet)


# ----------------------------------------------------------------------------------------------------------------------
# Finding files
# ----------------------------------------------------------------------------------------------------------------------


def is_hub_id(path: str) -> bool:
    """'org/name' that is not a local path and does not end like a file: a hub dataset id."""
    if Path(path).expanduser().exists() or any(ch in path for ch in "*?["):
        return False
    if PurePath(path).suffix.lower() in SUFFIXES + _OTHER_FILE_SUFFIXES:
        return False
    return bool(_HUB_ID.fullmatch(path))


def resolve_files(path: str) -> List[Path]:
    """The data files `path` names: a file, a glob (sorted) or a folder; [] for a hub dataset id.

    Raises DataError when a local-looking path matches nothing or holds no supported file.
    """
    p = Path(path).expanduser()
    supported = ", ".join(SUFFIXES)
    if p.is_file():
        if p.suffix.lower() not in SUFFIXES:
            raise DataError("unsupported_file", f"'{p.suffix or p.name}' files are not supported",
                            f"Convert it to one of {supported} (JSONL is best for large data).", file=str(p))
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError("no_files", f"the folder holds no {supported} files",
                            "Point data.sources[].path at a data file, a glob such as data/*.jsonl, or a folder "
                            "with data files.", file=str(p))
        return files
    if any(ch in path for ch in "*?["):
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
        files = [m for m in matches if m.suffix.lower() in SUFFIXES]
        if not files:
            found = f" (it matched only: {', '.join(m.name for m in matches[:5])})" if matches else ""
            raise DataError("no_files", f"the pattern matched no {supported} files{found}",
                            "Check the pattern and the working directory; paths are relative to where you run "
                            "the command.", file=path)
        return files
    if is_hub_id(path):
        return []
    raise DataError("file_not_found", "no such file or folder",
                    "Check the path (relative paths start from the working directory). A hub dataset is written "
                    "as its full id, e.g. iamjoon/finance_news_summarizer.", file=path)


# ----------------------------------------------------------------------------------------------------------------------
# Reading records
# ----------------------------------------------------------------------------------------------------------------------

Report = Callable[..., None]  # report(DataError, count=1): raise it or count it, per data.on_error


def iter_raw_records(source: DataSource, on_error: str, rejects: Rejects,
                     warnings: Optional[Rejects] = None) -> Iterator[RawRecord]:
    """Yield every record of one source with its file and line; bad lines raise or are counted (on_error). Files read
    in another way than their name says are noted in `warnings`."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got '{on_error}'")
    warnings = Rejects() if warnings is None else warnings

    def report(err: DataError, count: int = 1) -> None:
        raise_or_count(err, err.file, err.line, on_error, rejects, count=count)

    files = resolve_files(source.path)
    if not files:
        yield from _read_hub(source)
        return
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _read_jsonl(path, source, report, warnings)
        else:
            yield from {".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}[suffix](path, source, report)


_ARRAY_PEEK = 1 << 16  # bytes read to see whether a .jsonl file starts with '['


def _read_jsonl(path: Path, source: DataSource, report: Report, warnings: Rejects) -> Iterator[RawRecord]:
    file = str(path)
    with open(path, "rb") as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            report(DataError("bad_encoding", "the file is UTF-16, not UTF-8", _UTF8_HINT, file=file))
            return
        f.seek(0)
        if f.read(_ARRAY_PEEK).lstrip(_BOM).lstrip().startswith(b"["):  # no JSONL record starts with '['
            records = _array_in_jsonl(path, report, warnings)
            if records is not None:
                yield from records
                return
        f.seek(0)
        any_content = False
        for number, raw in enumerate(f, 1):
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                any_content = True
                report(DataError("bad_encoding", f"not valid UTF-8 (byte {e.start} of the line)", _UTF8_HINT,
                                 file=file, line=number))
                continue
            if not text.strip():
                continue
            any_content = True
            record = _parse_json_line(text, ends_with_newline=raw.endswith(b"\n"), file=file, line=number,
                                      report=report)
            if record is not None:
                yield RawRecord(record, file, number)
    if not any_content:
        report(DataError("empty_file", "the file is empty",
                         "Remove it from data.sources or fill it with one JSON object per line.", file=file))


def _parse_json_line(text: str, ends_with_newline: bool, file: str, line: int, report: Report) -> Optional[dict]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if not ends_with_newline:
            report(DataError("truncated_line", "the last line is cut off: it does not end with a newline and is not "
                             f"complete JSON ({e.msg})",
                             "The file was probably not fully written or copied; re-export it, or delete the "
                             "incomplete last line.", file=file, line=line))
        else:
            hint = "Each line must hold one complete JSON object, e.g. {\"messages\": [...]}; fix or remove the line."
            if text.lstrip().startswith("["):
                hint += " If the whole file is one JSON array, name it .json instead of .jsonl."
            report(DataError("not_json", f"not valid JSON ({e.msg} at column {e.colno})", hint, file=file, line=line))
        return None
    if not isinstance(value, dict):
        report(DataError("not_object", f"a record must be a JSON object, got a JSON {_json_type(value)}",
                         "Write one object per line, e.g. {\"instruction\": \"...\", \"output\": \"...\"}.",
                         file=file, line=line))
        return None
    return value


def _array_in_jsonl(path: Path, report: Report, warnings: Rejects) -> Optional[List[RawRecord]]:
    """The records of a .jsonl file that holds one JSON array, read as a .json file (with one warning); [] after one
    error when it is not valid JSON; None when it holds several JSON values (lines that are arrays: read line by line,
    each line's error then names its line)."""
    file = str(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        report(DataError("bad_encoding", f"not valid UTF-8 (byte {e.start} of the file)", _UTF8_HINT, file=file))
        return []
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return None
        report(DataError("not_json", f"the file starts with '[' like one JSON array, but is not valid JSON ({e.msg} "
                         f"at column {e.colno})",
                         "A .jsonl file holds one JSON object per line. If the file is one JSON array, fix it at "
                         "this line and name it .json; otherwise write one object per line.", file=file, line=e.lineno))
        return []
    warnings.add("json_array_in_jsonl", file, None, "the .jsonl file holds one JSON array, not one object per line: "
                 "it was read as a .json file (records numbered in the array). Rename it .json")
    return list(_array_records(value, file, report))


def _array_records(value, file: str, report: Report) -> Iterator[RawRecord]:
    """The objects of a parsed JSON array, numbered from 1 ('record' unit); anything else is one error."""
    if not isinstance(value, list):
        report(DataError("not_array", f"a .json file must hold a JSON array of records, got a JSON {_json_type(value)}",
                         "Wrap the records in [...], or write one object per line in a .jsonl file.", file=file))
        return
    if not value:
        report(DataError("empty_file", "the JSON array is empty", "Remove the file from data.sources or add records.",
                         file=file))
        return
    for number, item in enumerate(value, 1):
        if not isinstance(item, dict):
            report(DataError("not_object", f"a record must be a JSON object, got a JSON {_json_type(item)}",
                             "Make every element of the array an object.", file=file, line=number, unit="record"))
            continue
        yield RawRecord(item, file, number, unit="record")


def _read_json(path: Path, source: DataSource, report: Report) -> Iterator[RawRecord]:
    """A JSON array of objects, loaded whole (use JSONL for data that does not fit comfortably in memory)."""
    file = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        report(DataError("bad_encoding", f"not valid UTF-8 (byte {e.start} of the file)", _UTF8_HINT, file=file))
        return
    if not text.strip():
        report(DataError("empty_file", "the file is empty",
                         "Remove it from data.sources or fill it with a JSON array of records.", file=file))
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        hint = "Fix the JSON at that position (a .json file must hold one JSON array of records)."
        if e.msg == "Extra data":
            hint = "The file holds several JSON values, one per line: that is JSON Lines, so rename it to .jsonl."
        report(DataError("not_json", f"not valid JSON ({e.msg} at column {e.colno})", hint, file=file, line=e.lineno))
        return
    yield from _array_records(value, file, report)


class _EncodingProblem(Exception):
    def __init__(self, line: int, error: UnicodeDecodeError):
        self.line, self.error = line, error


def _utf8_lines(f) -> Iterator[str]:
    """Decode a binary file line by line (BOM removed), raising _EncodingProblem with the exact line number."""
    for number, raw in enumerate(f, 1):
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _EncodingProblem(number, e) from None


def _read_csv(path: Path, source: DataSource, report: Report) -> Iterator[RawRecord]:
    """Rows as {header: cell} dicts; every cell is a string. Rows may span lines (quoted newlines)."""
    file = str(path)
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))  # long RAFT passages exceed the 128 KiB default
    with open(path, "rb") as f:
        reader = csv.reader(_utf8_lines(f))
        try:
            header = next(reader, None)
            if header is None:
                report(DataError("empty_file", "the file is empty", "Add a header row and data rows.", file=file))
                return
            header = [name.strip() for name in header]
            missing = [c for c in required_columns(source) if c not in header]
            if missing:
                rows = sum(1 for row in reader if any(cell.strip() for cell in row))
                report(_wrong_columns(missing, header, source, file), count=max(rows, 1))
                return
            previous_end, rows = reader.line_num, 0
            for row in reader:
                line, previous_end = previous_end + 1, reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                rows += 1
                if len(row) != len(header):
                    report(DataError("wrong_field_count", f"the row has {len(row)} fields but the header has "
                                     f"{len(header)} ({', '.join(header)})",
                                     "Quote cells that contain commas or line breaks (\"...\"), or fix the row.",
                                     file=file, line=line))
                    continue
                yield RawRecord(dict(zip(header, row)), file, line)
        except _EncodingProblem as e:
            report(DataError("bad_encoding", f"not valid UTF-8 (byte {e.error.start} of the line); the rest of the "
                             "file was not read", _UTF8_HINT.replace(".jsonl", ".csv"), file=file, line=e.line))
            return
        except csv.Error as e:
            report(DataError("bad_csv", f"cannot parse the CSV ({e}); the rest of the file was not read",
                             "Fix the quoting at that line, or export the data as JSONL.", file=file,
                             line=reader.line_num))
            return
    if rows == 0:
        report(DataError("empty_file", "the file has a header but no data rows",
                         "Add rows or remove the file from data.sources.", file=file, line=1))


def _read_parquet(path: Path, source: DataSource, report: Report) -> Iterator[RawRecord]:
    """Rows streamed in batches of 1024 (pyarrow), so memory holds one batch, not the file."""
    import pyarrow.parquet as pq

    file = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged or non-Parquet file
        report(DataError("bad_parquet", f"cannot read the Parquet file ({type(e).__name__}: {e})",
                         "Re-export it (e.g. pandas DataFrame.to_parquet) or convert it to JSONL.", file=file))
        return
    header = parquet.schema_arrow.names
    rows = parquet.metadata.num_rows
    missing = [c for c in required_columns(source) if c not in header]
    if missing:
        report(_wrong_columns(missing, header, source, file), count=max(rows, 1))
        return
    if rows == 0:
        report(DataError("empty_file", "the file has no rows", "Remove it from data.sources or add rows.", file=file))
        return
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield RawRecord(row, file, number, unit="row")


def _read_hub(source: DataSource) -> Iterator[RawRecord]:
    """A hub dataset, streamed (needs network access and, for private data, HF_TOKEN)."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(source.path, split=source.split, streaming=True)
    except Exception as e:  # network, auth, unknown id or split: all end here with the same advice
        raise DataError("hub_unavailable", f"cannot load hub dataset split '{source.split}' "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
                        "Check the dataset id, data.sources[].split, network access and HF_TOKEN for private data; "
                        "if you meant a local path, it does not exist.", file=source.path) from None
    for number, row in enumerate(dataset, 1):
        yield RawRecord(dict(row), source.path, number, unit="record")


def _wrong_columns(missing: List[str], header: List[str], source: DataSource, file: str) -> DataError:
    mapped = "data.sources[].columns" if source.columns else f"format '{source.format}'"
    return DataError("wrong_columns", f"missing column(s) {', '.join(missing)} needed by {mapped}; the file has: "
                     f"{', '.join(header) or 'no columns'}",
                     "Rename the columns in the file, or map them in the recipe, e.g. columns: {system: system_prompt, "
                     "user: user_prompt, assistant: assistant}. Every row of this file was skipped.",
                     file=file, line=1)


def _json_type(value) -> str:
    return {list: "array", dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Mixtures
# ----------------------------------------------------------------------------------------------------------------------


def mix_indices(counts: List[int], weights: List[float], seed: int) -> List[tuple]:
    """(source index, record index) pairs of a weighted mixture, in a deterministic shuffled order.

    A weight multiplies that source's record count: 1.0 = every record once, 2.0 = every record twice,
    0.5 = a deterministic half, 1.5 = every record once plus a deterministic half. The number taken from a source is
    round(weight * count); the partial share is a seeded sample without repeats.
    """
    if len(counts) != len(weights):
        raise ValueError(f"{len(counts)} counts but {len(weights)} weights: give one weight per source")
    pairs = []
    for s, (count, weight) in enumerate(zip(counts, weights)):
        if weight <= 0:
            raise ValueError(f"data.sources.{s}.weight must be > 0, got {weight}")
        if count == 0:
            continue
        total = int(math.floor(weight * count + 0.5))
        full, extra = divmod(total, count)
        for _ in range(full):
            pairs.extend((s, i) for i in range(count))
        if extra:
            chosen = random.Random(f"mix:{seed}:{s}").sample(range(count), extra)
            pairs.extend((s, i) for i in sorted(chosen))
    random.Random(f"mix:{seed}").shuffle(pairs)
    return pairs

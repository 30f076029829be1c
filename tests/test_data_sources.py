"""Reading sources: every file type, globs and folders, hub ids, every bad-data case in raise and skip mode,
bounded memory while streaming, and weighted mixtures."""

import csv
import json
import tracemalloc
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from train.config import DataConfig, DataSource
from train.data.formats import RecordError, to_messages
from train.data.quality import DataError, Rejects, raise_or_count
from train.data.sources import is_hub_id, iter_raw_records, mix_indices, resolve_files

GOOD = {"messages": [{"role": "user", "content": "한국의 수도는 어디인가요?"}, {"role": "assistant", "content": "서울입니다."}]}
SEED2 = {"system_prompt": "당신은 금융 뉴스 판별기입니다.", "user_prompt": "삼성전자가 사상 최대 실적을 기록했다.",
         "assistant": "{\"is_stock_related\": true}"}


def jsonl(*records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def prepare(source: DataSource, on_error: str = "raise", data: DataConfig = None):
    """What `prepare` does with these functions: read, convert, and apply on_error to both kinds of problem."""
    rejects, out = Rejects(), []
    for rec in iter_raw_records(source, on_error, rejects):
        try:
            out.append((rec, to_messages(rec.data, source, data or DataConfig())))
        except RecordError as err:
            raise_or_count(err, rec.file, rec.line, on_error, rejects, unit=rec.unit)
    return out, rejects


# ----------------------------------------------------------------------------------------------------------------------
# Every bad-data case of issue 3, item 3: (name, file name, content, source options, reason, line, field)
# ----------------------------------------------------------------------------------------------------------------------

U = {"role": "user", "content": "안녕하세요"}
A = {"role": "assistant", "content": "네, 안녕하세요."}
CASES = [
    ("truncated last line", "d.jsonl", jsonl(GOOD, GOOD) + '{"messages": [{"role": "user", "con', {},
     "truncated_line", 3, None),
    ("non-JSON line", "d.jsonl", jsonl(GOOD) + "이것은 JSON이 아닙니다\n" + jsonl(GOOD), {}, "not_json", 2, None),
    ("line that is not an object", "d.jsonl", jsonl(GOOD) + '["a", "b"]\n' + jsonl(GOOD), {}, "not_object", 2, None),
    ("missing field", "d.jsonl", jsonl(GOOD, {"instruction": "키워드를 추출하세요.", "input": "파스"}, GOOD), {},
     "missing_field", 2, "output"),
    ("role typo", "d.jsonl", jsonl(GOOD, GOOD, {"messages": [U, {"role": "asistant", "content": "네"}]}), {},
     "unknown_role", 3, "messages[1].role"),
    ("model instead of assistant", "d.jsonl", jsonl({"messages": [U, {"role": "model", "content": "네"}]}, GOOD), {},
     "unknown_role", 1, "messages[1].role"),
    ("null content", "d.jsonl", jsonl(GOOD, {"messages": [U, {"role": "assistant", "content": None}]}, GOOD), {},
     "null_content", 2, "messages[1].content"),
    ("non-text content", "d.jsonl", jsonl(GOOD, {"messages": [U, {"role": "assistant", "content": ["네"]}]}), {},
     "non_text_content", 2, "messages[1].content"),
    ("ends on a user turn", "d.jsonl", jsonl(GOOD, {"messages": [U, A, U]}, GOOD), {},
     "ends_on_user", 2, "messages[2]"),
    ("empty file", "d.jsonl", "", {}, "empty_file", None, None),
    ("file of blank lines", "d.jsonl", "\n  \n\n", {}, "empty_file", None, None),
    ("csv with wrong columns", "d.csv", "system,question,assistant\n시스템,질문,답\n",
     {"format": "columns", "columns": {"system": "system_prompt", "user": "user_prompt", "assistant": "assistant"}},
     "wrong_columns", 1, None),
    ("csv header only", "d.csv", "question,answer\n", {"format": "qa"}, "empty_file", 1, None),
]


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize("name,file,content,options,reason,line,field", CASES, ids=[c[0] for c in CASES])
def test_bad_data_raise_names_file_line_field(tmp_path, name, file, content, options, reason, line, field):
    path = _write(tmp_path, file, content)
    with pytest.raises(DataError) as info:
        prepare(DataSource(path=str(path), **options), "raise")
    err, text = info.value, str(info.value)
    assert err.reason == reason
    location = f"{path}:{line}: " if line else f"{path}: "
    assert text.startswith(location)
    if field:
        assert text.startswith(f"{location}{field}: ")
    assert len(err.hint) > 10 and err.hint in text  # says how to fix it


@pytest.mark.parametrize("name,file,content,options,reason,line,field", CASES, ids=[c[0] for c in CASES])
def test_bad_data_skip_counts_by_reason(tmp_path, name, file, content, options, reason, line, field):
    path = _write(tmp_path, file, content)
    records, rejects = prepare(DataSource(path=str(path), **options), "skip")
    good_lines = [ln for ln in content.splitlines() if ln.strip()]
    expected_good = len(good_lines) - 1 if file.endswith(".jsonl") and good_lines else 0
    assert len(records) == expected_good
    assert rejects.by_reason() == {reason: 1}
    example = rejects.to_dict()["examples"][reason][0]
    assert example.startswith(f"{path}:{line}: " if line else f"{path}: ")


def test_skip_mode_counts_several_reasons_and_keeps_line_numbers(tmp_path):
    good, ends_on_user = json.dumps(GOOD, ensure_ascii=False), json.dumps({"messages": [U, A, U]}, ensure_ascii=False)
    lines = [good, "", "not json", ends_on_user, "   ", good, "{broken"]
    path = _write(tmp_path, "mixed.jsonl", "\n".join(lines))  # no newline at the end: the last line is truncated
    records, rejects = prepare(DataSource(path=str(path)), "skip")
    assert [rec.line for rec, _ in records] == [1, 6]  # blank lines are skipped but still counted as lines
    assert rejects.by_reason() == {"ends_on_user": 1, "not_json": 1, "truncated_line": 1}
    assert rejects.total == 3


def test_last_line_without_newline_that_parses_is_fine(tmp_path):
    path = _write(tmp_path, "d.jsonl", jsonl(GOOD) + json.dumps(GOOD))
    records, rejects = prepare(DataSource(path=str(path)))
    assert len(records) == 2 and rejects.total == 0


def test_utf8_bom_is_removed(tmp_path):
    path = _write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + jsonl(SEED2, SEED2).encode("utf-8"))
    records, _ = prepare(DataSource(path=str(path)))
    assert [rec.data for rec, _ in records] == [SEED2, SEED2]
    assert records[0][1][0] == {"role": "system", "content": "당신은 금융 뉴스 판별기입니다."}
    csv_path = _write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + "question,answer\n인수합병이란?,M&A입니다.\n".encode("utf-8"))
    rows = list(iter_raw_records(DataSource(path=str(csv_path), format="qa"), "raise", Rejects()))
    assert rows[0].data == {"question": "인수합병이란?", "answer": "M&A입니다."}


def test_cp949_line_is_an_encoding_error_with_its_line(tmp_path):
    bad = json.dumps({"question": "서울의 인구는?", "answer": "약 천만 명"}, ensure_ascii=False).encode("cp949")
    path = _write(tmp_path, "d.jsonl", jsonl(SEED2).encode("utf-8") + bad + b"\n" + jsonl(SEED2).encode("utf-8"))
    with pytest.raises(DataError, match=r"d\.jsonl:2: not valid UTF-8.*iconv -f cp949"):
        prepare(DataSource(path=str(path)))
    records, rejects = prepare(DataSource(path=str(path)), "skip")
    assert len(records) == 2 and rejects.by_reason() == {"bad_encoding": 1}
    utf16 = _write(tmp_path, "u16.jsonl", jsonl(SEED2).encode("utf-16"))
    with pytest.raises(DataError, match="UTF-16"):
        prepare(DataSource(path=str(utf16)))


# ----------------------------------------------------------------------------------------------------------------------
# File types, globs, folders, hub ids
# ----------------------------------------------------------------------------------------------------------------------


def test_json_array_records_are_numbered(tmp_path):
    path = _write(tmp_path, "d.json", json.dumps([SEED2, {"question": "M&A란?", "answer": "인수합병입니다."}],
                                                 ensure_ascii=False, indent=2))
    records, _ = prepare(DataSource(path=str(path)))
    assert [(r.line, r.unit) for r, _ in records] == [(1, "record"), (2, "record")]
    assert records[1][1] == [{"role": "user", "content": "M&A란?"}, {"role": "assistant", "content": "인수합병입니다."}]
    bad = _write(tmp_path, "bad.json", json.dumps([SEED2, {"messages": [U]}], ensure_ascii=False))
    with pytest.raises(DataError, match=r"bad\.json:record 2: messages\[0\]: the conversation ends on a user turn"):
        prepare(DataSource(path=str(bad)))


def _read(source: DataSource, on_error: str):
    rejects, warnings, out = Rejects(), Rejects(), []
    for rec in iter_raw_records(source, on_error, rejects, warnings):
        try:
            out.append((rec, to_messages(rec.data, source, DataConfig())))
        except RecordError as err:
            raise_or_count(err, rec.file, rec.line, on_error, rejects, unit=rec.unit)
    return out, rejects, warnings


@pytest.mark.parametrize("indent", [2, None])
def test_a_json_array_in_a_jsonl_file_is_read_as_json_once(tmp_path, indent):
    records = [GOOD, {"question": "M&A란?", "answer": "인수합병입니다."}, {"messages": [U]}]
    path = _write(tmp_path, "d.jsonl", json.dumps(records, ensure_ascii=False, indent=indent) + "\n")
    read, rejects, warnings = _read(DataSource(path=str(path)), "skip")
    assert [(r.line, r.unit) for r, _ in read] == [(1, "record"), (2, "record")]
    assert rejects.by_reason() == {"ends_on_user": 1}  # the one bad record, not one error per line
    assert rejects.first == {"ends_on_user": f"{path}:record 3"}
    assert warnings.by_reason() == {"json_array_in_jsonl": 1} and "Rename it .json" in warnings.examples[
        "json_array_in_jsonl"][0]
    with pytest.raises(DataError, match=r"d\.jsonl:record 3: messages\[0\]: the conversation ends on a user turn"):
        _read(DataSource(path=str(path)), "raise")


def test_a_broken_json_array_in_a_jsonl_file_is_one_error(tmp_path):
    text = json.dumps([GOOD, GOOD, GOOD], ensure_ascii=False, indent=2).replace("},\n  {", "}\n  {", 1)
    path = _write(tmp_path, "d.jsonl", text)
    read, rejects, _ = _read(DataSource(path=str(path)), "skip")
    assert read == [] and rejects.by_reason() == {"not_json": 1}  # dozens of lines, one error
    line = text[: text.index("}\n  {") + 2].count("\n") + 1  # where the missing comma is noticed
    with pytest.raises(DataError, match=rf"d\.jsonl:{line}: the file starts with '\[' like one JSON array.*\.json"):
        _read(DataSource(path=str(path)), "raise")
    # lines that are each an array are JSON Lines of non-objects: one error per line, naming the line
    lines = _write(tmp_path, "arrays.jsonl", '["a"]\n["b"]\n')
    assert _read(DataSource(path=str(lines)), "skip")[1].by_reason() == {"not_object": 2}


def test_json_mistakes(tmp_path):
    lines = _write(tmp_path, "lines.json", jsonl(SEED2, SEED2))
    with pytest.raises(DataError, match=r"lines\.json:2: .*rename it to \.jsonl"):
        prepare(DataSource(path=str(lines)))
    obj = _write(tmp_path, "obj.json", json.dumps({"data": [SEED2]}))
    with pytest.raises(DataError, match="must hold a JSON array"):
        prepare(DataSource(path=str(obj)))
    _, rejects = prepare(DataSource(path=str(obj)), "skip")
    assert rejects.by_reason() == {"not_array": 1}


def test_csv_seed2_columns_and_multiline_cells(tmp_path):
    path = tmp_path / "news.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["system_prompt", "user_prompt", "assistant"])
        writer.writerow([SEED2["system_prompt"], "첫 줄\n둘째 줄", SEED2["assistant"]])  # a quoted cell spanning 2 lines
        writer.writerow([SEED2["system_prompt"], SEED2["user_prompt"], SEED2["assistant"]])
    source = DataSource(path=str(path), format="columns",
                        columns={"system": "system_prompt", "user": "user_prompt", "assistant": "assistant"})
    records, _ = prepare(source)
    assert [rec.line for rec, _ in records] == [2, 4]
    assert records[0][1][1] == {"role": "user", "content": "첫 줄\n둘째 줄"}
    assert records[1][1][2] == {"role": "assistant", "content": SEED2["assistant"]}


def test_csv_wrong_columns_message_and_skip_count(tmp_path):
    path = _write(tmp_path, "qa.csv", "질문,답변\n서울은?,수도\n부산은?,항구도시\n")
    with pytest.raises(DataError) as info:
        prepare(DataSource(path=str(path), format="qa"), "raise")
    text = str(info.value)
    assert text.startswith(f"{path}:1: missing column(s) question, answer")
    assert "the file has: 질문, 답변" in text
    _, rejects = prepare(DataSource(path=str(path), format="qa"), "skip")
    assert rejects.by_reason() == {"wrong_columns": 2}  # every row of the file is counted


def test_csv_row_with_wrong_field_count(tmp_path):
    path = _write(tmp_path, "qa.csv", "question,answer\n서울은?,수도\n부산은?,항구,도시\n")
    with pytest.raises(DataError, match=r"qa\.csv:3: the row has 3 fields but the header has 2"):
        prepare(DataSource(path=str(path), format="qa"))


def test_parquet_rows_stream_with_dict_answers(tmp_path):
    path = tmp_path / "news.parquet"
    answers = [{"is_stock_related": False, "summary": f"요약 {i}"} for i in range(2500)]
    table = pa.table({"system_prompt": [SEED2["system_prompt"]] * 2500,
                      "user_prompt": [f"뉴스 {i}" for i in range(2500)], "assistant": answers})
    pq.write_table(table, path, row_group_size=1000)
    records, _ = prepare(DataSource(path=str(path)))
    assert len(records) == 2500
    rec, messages = records[2499]
    assert (rec.line, rec.unit) == (2500, "row")
    assert messages[2]["content"] == '{"is_stock_related": false, "summary": "요약 2499"}'
    with pytest.raises(DataError, match=r"missing column\(s\) question"):
        prepare(DataSource(path=str(path), format="qa"))
    _, rejects = prepare(DataSource(path=str(path), format="qa"), "skip")
    assert rejects.by_reason() == {"wrong_columns": 2500}


def test_glob_and_folder_read_every_type_in_sorted_order(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _write(folder, "a.jsonl", jsonl({"question": "가?", "answer": "1"}))
    _write(folder, "b.json", json.dumps([{"question": "나?", "answer": "2"}], ensure_ascii=False))
    _write(folder, "c.csv", "question,answer\n다?,3\n")
    pq.write_table(pa.table({"question": ["라?"], "answer": ["4"]}), folder / "d.parquet")
    _write(folder, "README.md", "not data")
    expected = ["a.jsonl", "b.json", "c.csv", "d.parquet"]
    assert [p.name for p in resolve_files(str(folder))] == expected
    assert [p.name for p in resolve_files(str(folder / "*"))] == expected
    assert [p.name for p in resolve_files(str(folder / "*.json*"))] == ["a.jsonl", "b.json"]
    for path in (str(folder), str(folder / "*")):
        records, _ = prepare(DataSource(path=path, format="qa"))
        assert [m[1]["content"] for _, m in records] == ["1", "2", "3", "4"]


def test_paths_that_match_nothing_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        resolve_files(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="no such file"):
        resolve_files("data")  # a bare name is not a hub id
    with pytest.raises(DataError, match="matched no"):
        resolve_files(str(tmp_path / "*.jsonl"))
    _write(tmp_path, "notes.txt", "hello")
    with pytest.raises(DataError, match="not supported"):
        resolve_files(str(tmp_path / "notes.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no"):
        resolve_files(str(empty))


def test_hub_ids_are_recognised(tmp_path):
    assert resolve_files("iamjoon/finance_news_summarizer") == []
    assert is_hub_id("iamjoon/finance_news_summarizer")
    assert not is_hub_id("data/train.jsonl")
    assert not is_hub_id("./data/train")
    local = tmp_path / "org"
    local.mkdir()
    _write(local, "name.jsonl", jsonl(GOOD))
    assert not is_hub_id(str(local))


def test_on_error_must_be_known(tmp_path):
    path = _write(tmp_path, "d.jsonl", jsonl(GOOD))
    with pytest.raises(ValueError, match="raise' or 'skip"):
        list(iter_raw_records(DataSource(path=str(path)), "ignore", Rejects()))


# ----------------------------------------------------------------------------------------------------------------------
# Memory stays bounded while streaming
# ----------------------------------------------------------------------------------------------------------------------


def test_streaming_200k_lines_keeps_memory_small(tmp_path):
    path = tmp_path / "big.jsonl"
    line = json.dumps({"instruction": "다음 문장에서 의약품 키워드를 추출하세요.", "input": "진통·소염 작용이 있는 파스형 의약품 {}",
                       "output": ["진통", "소염", "파스"]}, ensure_ascii=False) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(200_000):
            f.write(line.replace("{}", str(i)))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count, last = 0, None
        for rec in iter_raw_records(DataSource(path=str(path)), "raise", Rejects()):
            count += 1
            last = rec
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000 and last.line == 200_000 and last.data["input"].endswith("199999")
    assert size > 30_000_000
    assert peak < 1_000_000, f"peak {peak} bytes while reading a {size} byte file"


# ----------------------------------------------------------------------------------------------------------------------
# Weighted mixtures
# ----------------------------------------------------------------------------------------------------------------------


def test_mixture_weights_multiply_record_counts():
    pairs = mix_indices([4, 6, 3, 5], [2.0, 0.5, 1.5, 1.0], seed=3)
    per_source = Counter(s for s, _ in pairs)
    assert per_source == {0: 8, 1: 3, 2: 5, 3: 5}  # 2.0*4, 0.5*6, round(1.5*3)=5, 1.0*5
    uses = Counter(pairs)
    assert all(uses[(0, i)] == 2 for i in range(4))  # every record twice
    half = [i for (s, i) in uses if s == 1]
    assert len(half) == 3 and all(uses[(1, i)] == 1 for i in half)  # a half, no record repeated
    assert all(uses[(2, i)] >= 1 for i in range(3)) and sum(uses[(2, i)] == 2 for i in range(3)) == 2
    assert all(uses[(3, i)] == 1 for i in range(5))


def test_mixture_is_deterministic_and_shuffled():
    a = mix_indices([50, 30], [1.0, 1.5], seed=1)
    assert a == mix_indices([50, 30], [1.0, 1.5], seed=1)
    assert a != sorted(a)  # sources are interleaved, not one after the other
    assert a != mix_indices([50, 30], [1.0, 1.5], seed=2)
    with pytest.raises(ValueError):
        mix_indices([1, 2], [1.0], seed=0)

"""prompts: what a user's prompt files turn into, on file:// and on S3."""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tao_trainer import storage
from tao_trainer.prompts import PromptRecord, is_held_out, load_prompts, prompt_id, split, strip_fields


def _jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def test_jsonl_file_gives_records_with_stable_ids_and_other_fields(storage_root: str) -> None:
    uri = storage.join(storage_root, "p.jsonl")
    storage.write_bytes(
        uri, _jsonl([{"prompt": "2+2?", "answer": "4", "topic": "math"}, {"prompt": "Ça va ?"}])
    )
    result = load_prompts(uri)
    assert result.sources == [uri] and result.rejects == [] and result.duplicates == 0
    first, second = result.records
    assert first.prompt == "2+2?" and first.fields == {"answer": "4", "topic": "math"}
    assert first.id == prompt_id("2+2?") and len(first.id) == 16
    assert second.prompt == "Ça va ?" and second.fields == {}
    assert load_prompts(uri).records == result.records  # same input, same ids


def test_parquet_file_loads_like_jsonl(storage_root: str) -> None:
    rows = [{"question": f"q{i}", "label": i} for i in range(5)]
    storage.write_bytes(storage.join(storage_root, "a.parquet"), _parquet(rows))
    storage.write_bytes(storage.join(storage_root, "a.jsonl"), _jsonl(rows))
    from_parquet = load_prompts(storage.join(storage_root, "a.parquet"), field="question")
    from_jsonl = load_prompts(storage.join(storage_root, "a.jsonl"), field="question")
    assert [r.model_dump() for r in from_parquet.records] == [r.model_dump() for r in from_jsonl.records]
    assert from_parquet.records[3].fields == {"label": 3}


def test_parquet_values_json_cannot_write_are_converted(tmp_path: Path) -> None:
    import datetime

    rows = [{"prompt": "p", "at": datetime.datetime(2026, 1, 2, 3, 4, 5)}]
    (tmp_path / "t.parquet").write_bytes(_parquet(rows))
    record = load_prompts(str(tmp_path / "t.parquet")).records[0]
    json.dumps(record.model_dump())  # later stages write records as JSON lines
    assert record.fields["at"].startswith("2026-01-02")


def test_prefix_loads_every_supported_file_in_sorted_order(storage_root: str) -> None:
    base = storage.join(storage_root, "prompts")
    storage.write_bytes(storage.join(base, "b.jsonl"), _jsonl([{"prompt": "b"}]))
    storage.write_bytes(storage.join(base, "a.json"), _jsonl([{"prompt": "a"}]))
    storage.write_bytes(storage.join(base, "sub/c.jsonl.gz"), gzip.compress(_jsonl([{"prompt": "c"}])))
    storage.write_bytes(storage.join(base, "d.parquet"), _parquet([{"prompt": "d"}]))
    storage.write_text(storage.join(base, "README.md"), "not prompts")
    storage.write_text(storage.join(base, "_SUCCESS"), "")
    # A sibling sharing the string prefix is not part of the directory.
    storage.write_bytes(storage.join(storage_root, "prompts-old/x.jsonl"), _jsonl([{"prompt": "old"}]))
    result = load_prompts(base)
    assert [r.prompt for r in result.records] == ["a", "b", "d", "c"]
    assert result.sources == [
        storage.join(base, n) for n in ("a.json", "b.jsonl", "d.parquet", "sub/c.jsonl.gz")
    ]


def test_messages_field(storage_root: str) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    uri = storage.join(storage_root, "chat.jsonl")
    storage.write_bytes(uri, _jsonl([{"messages": messages, "gold": "Paris"}]))
    (record,) = load_prompts(uri, field="messages").records
    assert record.prompt == messages and record.fields == {"gold": "Paris"}
    # The id hashes the canonical JSON: key order inside messages does not matter.
    reordered = [{"content": m["content"], "role": m["role"]} for m in messages]
    assert record.id == prompt_id(reordered) != prompt_id("Capital of France?")


def test_parquet_messages_column(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    (tmp_path / "m.parquet").write_bytes(_parquet([{"messages": messages}]))
    (record,) = load_prompts(str(tmp_path / "m.parquet"), field="messages").records
    assert record.prompt == messages and record.id == prompt_id(messages)


def test_malformed_lines_become_rejects_with_line_numbers_and_reasons(storage_root: str) -> None:
    lines = [
        '{"prompt": "good one"}',  # 1
        "",  # 2: blank, skipped silently
        "{not json",  # 3
        "[1, 2]",  # 4
        '{"text": "wrong field"}',  # 5
        '{"prompt": 42}',  # 6
        '{"prompt": "   "}',  # 7
        '{"prompt": [{"role": "user"}]}',  # 8
        '{"prompt": []}',  # 9
        '{"prompt": null}',  # 10
        "   ",  # 11: blank
        '{"prompt": "good two"}',  # 12
        "\xff\xfe not utf-8",  # 13
    ]
    uri = storage.join(storage_root, "mixed.jsonl")
    storage.write_bytes(uri, "\n".join(lines[:-1]).encode() + b"\n\xff\xfe not utf-8\n")
    result = load_prompts(uri)
    assert [r.prompt for r in result.records] == ["good one", "good two"]
    by_line = {r.line: r for r in result.rejects}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9, 10, 13]  # every bad line, none dropped
    assert all(r.source == uri for r in result.rejects)
    assert by_line[3].reason.startswith("line is not valid JSON: ") and by_line[3].raw == "{not json"
    assert by_line[4].reason.startswith("not a JSON object")
    assert by_line[5].reason == "field 'prompt' missing"
    assert "field 'prompt' must be" in by_line[6].reason and "int" in by_line[6].reason
    assert "empty string" in by_line[7].reason
    assert "field 'prompt' must be a list of OpenAI chat messages" in by_line[8].reason
    assert "empty list" in by_line[9].reason
    assert "null" in by_line[10].reason
    assert by_line[13].reason.startswith("line is not valid JSON")


def test_rejects_name_the_configured_field(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_bytes(
        _jsonl([{"prompt": "x"}, {"messages": "just text? no, a string is fine"}])
    )
    (tmp_path / "d.jsonl").write_bytes(_jsonl([{"messages": [{"role": "user", "content": ["part"]}]}]))
    result = load_prompts(str(tmp_path / "d.jsonl"), field="messages")
    assert "field 'messages' must be a list of OpenAI chat messages" in result.rejects[0].reason
    assert (
        load_prompts(str(tmp_path / "c.jsonl"), field="messages").rejects[0].reason
        == "field 'messages' missing"
    )


def test_reject_raw_is_truncated(tmp_path: Path) -> None:
    (tmp_path / "big.jsonl").write_text('{"prompt": ' + "9" * 10_000 + "}x\n")
    (reject,) = load_prompts(str(tmp_path / "big.jsonl")).rejects
    assert len(reject.raw) == 2000


def test_parquet_rejects_use_row_numbers(tmp_path: Path) -> None:
    rows = [{"prompt": "ok"}, {"prompt": None}, {"prompt": ""}]
    (tmp_path / "r.parquet").write_bytes(_parquet(rows))
    result = load_prompts(str(tmp_path / "r.parquet"))
    assert [r.prompt for r in result.records] == ["ok"]
    assert [(r.line, "null" in r.reason or "empty" in r.reason) for r in result.rejects] == [
        (2, True),
        (3, True),
    ]


def test_duplicates_are_kept_once_and_counted_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(
        _jsonl([{"prompt": "x", "n": 1}, {"prompt": "y"}, {"prompt": "x", "n": 2}])
    )
    (tmp_path / "b.jsonl").write_bytes(_jsonl([{"prompt": "y"}, {"prompt": "z"}]))
    result = load_prompts(f"file://{tmp_path}")
    assert [r.prompt for r in result.records] == ["x", "y", "z"]
    assert result.records[0].fields == {"n": 1}  # the first occurrence wins
    assert result.duplicates == 2


def test_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    (tmp_path / "w.jsonl").write_bytes(b'{"prompt": "a"}\r\n{"prompt": "b"}')
    assert [r.prompt for r in load_prompts(str(tmp_path / "w.jsonl")).records] == ["a", "b"]


def test_uri_matching_no_file_names_uri_and_formats(storage_root: str) -> None:
    for uri in (storage.join(storage_root, "absent"), storage.join(storage_root, "absent.jsonl")):
        with pytest.raises(FileNotFoundError) as info:
            load_prompts(uri)
        assert uri in str(info.value) and "*.jsonl" in str(info.value) and "*.parquet" in str(info.value)
    storage.write_text(storage.join(storage_root, "only/notes.txt"), "x")
    with pytest.raises(FileNotFoundError, match="accepted formats"):
        load_prompts(storage.join(storage_root, "only"))


def test_a_file_in_an_unsupported_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match=r"accepted formats are \*\.jsonl"):
        load_prompts(str(tmp_path / "p.csv"))


def _records(n: int, seed: int = 0) -> list[PromptRecord]:
    return [PromptRecord(id=prompt_id(f"prompt {seed}-{i}"), prompt=f"prompt {seed}-{i}") for i in range(n)]


def test_split_is_stable_and_independent_of_order_and_neighbours() -> None:
    records = _records(2000)
    pool, held = split(records, 0.2)
    assert 340 <= len(held) <= 460  # 400 expected; 3 sigma is about 54
    assert len(pool) + len(held) == 2000
    position = {r.id: i for i, r in enumerate(records)}
    for side in (pool, held):  # input order preserved on each side
        assert [position[r.id] for r in side] == sorted(position[r.id] for r in side)
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    _, held_shuffled = split(shuffled + _records(500, seed=1), 0.2)
    assert {r.id for r in held} == {r.id for r in held_shuffled if r.id in {x.id for x in records}}
    assert all(is_held_out(r.id, 0.2) for r in held) and not any(is_held_out(r.id, 0.2) for r in pool)
    # A larger fraction only adds records to the held-out side: none moves back into the pool.
    _, held_more = split(records, 0.3)
    assert {r.id for r in held} <= {r.id for r in held_more}


def test_split_edges_and_bad_fractions() -> None:
    records = _records(50)
    assert split(records, 0.0) == (records, [])
    assert split(records, 1.0) == ([], records)
    with pytest.raises(ValueError, match="between 0 and 1"):
        split(records, 1.5)


def test_strip_fields_removes_labels_and_leaves_the_original_alone() -> None:
    record = PromptRecord(id="i", prompt="p", fields={"answer": "4", "solution": "2+2", "topic": "m"})
    stripped = strip_fields(record, ["answer", "solution", "absent"])
    assert stripped.fields == {"topic": "m"} and stripped.id == "i" and stripped.prompt == "p"
    assert record.fields == {"answer": "4", "solution": "2+2", "topic": "m"}
    assert strip_fields(record, "answer").fields == {"solution": "2+2", "topic": "m"}  # a bare name works too

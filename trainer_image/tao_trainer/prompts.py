"""Loading the unlabeled prompts a TAO run learns from.

A source is one file or a directory prefix (file:// or s3://) of ``*.jsonl``, ``*.json`` (JSON lines),
``*.jsonl.gz`` and ``*.parquet`` files. Each record holds a prompt under ``field``: a non-empty string
or OpenAI chat messages (text content or text parts, assistant ``tool_calls``, ``tool`` turns); a ``tools``
field beside it is the tool list the chat template renders. Bad records are never dropped silently: each becomes a ``Reject`` naming its
source, line and reason, so a stage can report them and decide whether too many went bad. That holds for
hostile lines too: a line over ``max_line_bytes`` (skipped without being held in memory), nesting too deep
to parse, a lone surrogate (valid JSON, not valid Unicode text), or anything else that fails on one row
is a reject, never a crash of the stage. Lines are read in linear time whatever their length.

Ids are content hashes, so the same prompt has the same id in every round, file and format, and the
held-out split (a hash of the id) never moves a prompt from one side to the other.

>>> prompt_id("What is 2+2?")
'1d241cb92db797a8'
>>> prompt_id([{"role": "user", "content": "hi"}]) == prompt_id([{"content": "hi", "role": "user"}])
True
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
import re
from collections.abc import Collection, Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from tao_trainer import openai_wire, storage

FORMATS = (".jsonl", ".json", ".jsonl.gz", ".parquet")
_FORMATS_TEXT = "*.jsonl, *.json (JSON lines), *.jsonl.gz, *.parquet"
_RAW_LIMIT = 2000
# One encoder, made once: sorted keys and no spaces make the hash independent of key order and layout.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_PARQUET_BATCH = 8192
_READ_CHUNK = 1 << 20
MAX_LINE_BYTES = 16 << 20
"""The default longest line read (``prompts.maxLineBytes``): a longer one becomes a reject."""
# A `\uD800`-`\uDFFF` escape in the raw line: only then can a parsed value hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# Every loaded record sets all three fields: one shared set instead of a 216-byte set per record (~10% of a
# loaded prompt's memory; measured by benchmarks/data_plane.py). Sharing is safe: it already holds every field
# name, so pydantic's add() on attribute assignment changes nothing, and model_copy copies it before updating.
_ALL_FIELDS_SET = {"id", "prompt", "fields"}


class PromptRecord(BaseModel):
    id: str
    prompt: str | list[dict[str, Any]]
    fields: dict[str, Any] = {}


class Reject(BaseModel):
    source: str
    line: int
    reason: str
    raw: str


class LoadResult(BaseModel):
    records: list[PromptRecord]
    rejects: list[Reject]
    sources: list[str]
    duplicates: int


def prompt_id(prompt: str | list[dict[str, Any]]) -> str:
    """First 16 hex chars of the sha256 of the prompt's canonical JSON."""
    return hashlib.sha256(_CANONICAL.encode(prompt).encode("utf-8")).hexdigest()[:16]


def _prompt_problem(value: Any, field: str) -> str | None:
    """Why ``value`` is not a usable prompt, or None when it is."""
    allowed = "a non-empty string or a non-empty list of {role, content} objects"
    if isinstance(value, str):
        return None if value.strip() else f"field {field!r} is an empty string; it must be {allowed}"
    if isinstance(value, list):
        if not value:
            return f"field {field!r} is an empty list; it must be {allowed}"
        for index, message in enumerate(value):
            # OpenAI chat messages: text content or text parts, assistant tool calls, tool results.
            problem = openai_wire.prompt_message_problem(message)
            if problem is not None:
                return (
                    f"field {field!r} must be a list of OpenAI chat messages; item {index} ({_short(message)}): "
                    f"{problem}"
                )
        return None
    if value is None:
        return f"field {field!r} is null; it must be {allowed}"
    return f"field {field!r} must be {allowed}, got {type(value).__name__}"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _source_format(uri: str) -> str | None:
    lower = uri.lower()
    return next((fmt for fmt in FORMATS if lower.endswith(fmt)), None)


def resolve_sources(uri: str) -> list[str]:
    if storage.exists(uri):
        if _source_format(uri) is None:
            raise ValueError(f"unsupported prompt file {uri!r}: accepted formats are {_FORMATS_TEXT}")
        return [storage.normalize(uri)]
    sources = [u for u in storage.list_uris(uri) if _source_format(u) is not None]
    if not sources:
        raise FileNotFoundError(f"no prompt files at {uri!r}: accepted formats are {_FORMATS_TEXT}")
    return sources


def iter_lines_capped(uri: str, max_line_bytes: int) -> Iterator[tuple[bytes, int]]:
    """(line, its length) for each line of an object (``*.gz`` decompressed), in linear time.

    A line longer than ``max_line_bytes`` is yielded as ``b""`` with its true length, and never held whole
    in memory. Lines end at ``\\n``; a ``\\r`` before it is dropped (as ``storage.iter_lines`` does).
    """
    with storage.open_read(uri) as raw:
        stream: Any = gzip.GzipFile(fileobj=raw, mode="rb") if uri.endswith(".gz") else raw
        parts: list[bytes] = []
        size = 0
        while chunk := stream.read(_READ_CHUNK):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                size += end - start
                if size > max_line_bytes:
                    yield b"", size
                else:
                    line = b"".join([*parts, chunk[start:end]]) if parts else chunk[start:end]
                    yield (line[:-1] if line.endswith(b"\r") else line), size
                parts, size, start = [], 0, end + 1
            if start < len(chunk):
                size += len(chunk) - start
                if size <= max_line_bytes:
                    parts.append(chunk[start:])
                else:
                    parts = []
        if size:
            line = b"".join(parts)
            yield (b"" if size > max_line_bytes else line[:-1] if line.endswith(b"\r") else line), size


def _json_line_rows(uri: str, max_line_bytes: int) -> Iterator[tuple[int, Any, bytes | None, str | None]]:
    """(line number, parsed value, raw line, error) for each non-blank line."""
    for number, (line, size) in enumerate(iter_lines_capped(uri, max_line_bytes), start=1):
        if size > max_line_bytes:
            yield number, None, b"", f"line is {size} bytes, longer than maxLineBytes ({max_line_bytes})"
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
            yield number, None, line, f"line is not valid JSON: {exc}"
            continue
        except RecursionError:
            yield number, None, line, "line is nested too deeply to parse"
            continue
        if _SURROGATE_ESCAPE.search(line) and not _encodable(value):
            yield number, None, line, "line holds a lone surrogate (\\uD800-\\uDFFF): not valid Unicode text"
            continue
        yield number, value, line, None


def _encodable(value: Any) -> bool:
    try:
        _CANONICAL.encode(value).encode("utf-8")
    except (UnicodeEncodeError, RecursionError, ValueError):
        return False
    return True


def _is_json_native(arrow_type: Any) -> bool:
    import pyarrow as pa

    t = pa.types
    if t.is_null(arrow_type) or t.is_boolean(arrow_type) or t.is_integer(arrow_type):
        return True
    if t.is_floating(arrow_type) or t.is_string(arrow_type) or t.is_large_string(arrow_type):
        return True
    if t.is_list(arrow_type) or t.is_large_list(arrow_type):
        return _is_json_native(arrow_type.value_type)
    if t.is_struct(arrow_type):
        return all(_is_json_native(arrow_type.field(i).type) for i in range(arrow_type.num_fields))
    return False


def _parquet_rows(uri: str) -> Iterator[tuple[int, Any, bytes | None, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    norm = storage.normalize(uri)
    # Parquet needs random access (the footer comes first); an S3 object is read into memory once.
    source = (
        norm[len("file://") :] if norm.startswith("file://") else pa.BufferReader(storage.read_bytes(uri))
    )
    try:
        parquet = pq.ParquetFile(source)
    except pa.ArrowException as exc:
        raise ValueError(f"{uri}: not a readable Parquet file: {exc}") from None
    # Timestamps, decimals and bytes would break the JSON shards later stages write: convert them
    # here, and only for files that have such columns, so plain files pay nothing.
    convert = not all(_is_json_native(f.type) for f in parquet.schema_arrow)
    number = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH):
        for row in batch.to_pylist():
            number += 1
            if convert:
                row = json.loads(json.dumps(row, ensure_ascii=False, default=str))
            yield number, row, None, None


def _safe_raw(raw: bytes | None, value: Any) -> str:
    """`_raw_text`, or a placeholder when the value cannot be shown (too deep, not valid Unicode)."""
    try:
        return _raw_text(raw, value).encode("utf-8", "replace").decode("utf-8")
    except (RecursionError, ValueError, TypeError):
        return "(not shown)"


def _raw_text(raw: bytes | None, value: Any) -> str:
    if raw is not None:
        return raw[: _RAW_LIMIT * 4].decode("utf-8", "replace")[:_RAW_LIMIT]
    return json.dumps(value, ensure_ascii=False, default=str)[:_RAW_LIMIT]


def load_prompts(uri: str, field: str = "prompt", max_line_bytes: int = MAX_LINE_BYTES) -> LoadResult:
    """Load every prompt under ``uri`` (a file or a directory prefix), in sorted source order.

    Records with the same prompt are kept once (the first) and counted in ``duplicates``.
    """
    sources = resolve_sources(uri)
    # Millions of small dicts make the cyclic GC rescan an ever-growing heap: measured 17 us/line with
    # it, 6 us without. Nothing here makes reference cycles, so it is paused for the load only.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(sources, field, max_line_bytes)
    finally:
        if gc_was_enabled:
            gc.enable()


def is_prompt_source(uri: str) -> bool:
    """Whether an object is a prompt file by its name (what a prefix listing loads).

    >>> is_prompt_source("s3://b/p/part-1.jsonl"), is_prompt_source("s3://b/p/_SUCCESS")
    (True, False)
    """
    return _source_format(uri) is not None


def _row_problem(value: Any, field: str) -> str | None:
    if not isinstance(value, dict):
        return f"not a JSON object (got {type(value).__name__})"
    if field not in value:
        return f"field {field!r} missing"
    return _prompt_problem(value[field], field)


def iter_records(
    sources: list[str], field: str, max_line_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[str, Any, dict[str, Any]] | Reject]:
    """Every row of the sources in order, read once and never held: (id, prompt, the other fields) for a valid
    one, a `Reject` for a bad one. Duplicates are yielded too (the caller keeps the first of an id)."""
    for source in sources:
        parquet = source.lower().endswith(".parquet")
        rows = _parquet_rows(source) if parquet else _json_line_rows(source, max_line_bytes)
        for number, value, raw, error in rows:
            record_id = ""
            try:
                error = error or _row_problem(value, field)
                if error is None:
                    record_id = prompt_id(value[field])
            except (RecursionError, UnicodeError, ValueError, TypeError) as exc:  # one row, never the stage
                error = f"record cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
            if error is not None:
                yield Reject(source=source, line=number, reason=error, raw=_safe_raw(raw, value))
                continue
            # The parsed row is ours: what is left after popping the prompt is the fields dict.
            prompt = value.pop(field)
            yield record_id, prompt, value


def _load(sources: list[str], field: str, max_line_bytes: int = MAX_LINE_BYTES) -> LoadResult:
    records: list[PromptRecord] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    duplicates = 0
    for row in iter_records(sources, field, max_line_bytes):
        if isinstance(row, Reject):
            rejects.append(row)
            continue
        record_id, prompt, fields = row
        if record_id in seen:
            duplicates += 1
            continue
        seen.add(record_id)
        # Validated while read, so model_construct skips pydantic's validation copy of every dict (1M prompts).
        records.append(
            PromptRecord.model_construct(
                _fields_set=_ALL_FIELDS_SET, id=record_id, prompt=prompt, fields=fields
            )
        )
    return LoadResult(records=records, rejects=rejects, sources=sources, duplicates=duplicates)


def is_held_out(record_id: str, fraction: float) -> bool:
    """Whether a record belongs to the held-out set: a hash of its id alone decides.

    >>> is_held_out("1d241cb92db797a8", 0.0), is_held_out("1d241cb92db797a8", 1.0)
    (False, True)
    """
    bucket = int(hashlib.sha256(("heldout:" + record_id).encode("utf-8")).hexdigest()[:8], 16)
    return bucket / 2**32 < fraction


def split(records: Iterable[PromptRecord], fraction: float) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """(pool, held_out), each in input order; a record's side depends on its id only."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction must be between 0 and 1, got {fraction}")
    pool: list[PromptRecord] = []
    held_out: list[PromptRecord] = []
    for record in records:
        (held_out if is_held_out(record.id, fraction) else pool).append(record)
    return pool, held_out


def strip_fields(record: PromptRecord, names: Collection[str]) -> PromptRecord:
    """A copy of ``record`` without the named fields (labels must never reach the loop)."""
    drop = {names} if isinstance(names, str) else set(names)  # a bare str would drop its letters
    return record.model_copy(update={"fields": {k: v for k, v in record.fields.items() if k not in drop}})

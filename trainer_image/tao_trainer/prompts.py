"""Loading the unlabeled prompts a TAO run learns from.

A source is one file or a directory prefix (file:// or s3://) of ``*.jsonl``, ``*.json`` (JSON lines),
``*.jsonl.gz`` and ``*.parquet`` files. Each record holds a prompt under ``field``: a non-empty string
or OpenAI-style messages. Bad records are never dropped silently: each becomes a ``Reject`` naming its
source, line and reason, so a stage can report them and decide whether too many went bad.

Ids are content hashes, so the same prompt has the same id in every round, file and format, and the
held-out split (a hash of the id) never moves a prompt from one side to the other.

>>> prompt_id("What is 2+2?")
'1d241cb92db797a8'
>>> prompt_id([{"role": "user", "content": "hi"}]) == prompt_id([{"content": "hi", "role": "user"}])
True
"""

from __future__ import annotations

import gc
import hashlib
import json
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
            # Flat messages only: the capture proxy flattens content parts before it stores a prompt.
            if not openai_wire.is_plain_message(message):
                return (
                    f"field {field!r} must be a list of {{role, content}} objects with string values; "
                    f"item {index} is {_short(message)}"
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


def _resolve_sources(uri: str) -> list[str]:
    if storage.exists(uri):
        if _source_format(uri) is None:
            raise ValueError(f"unsupported prompt file {uri!r}: accepted formats are {_FORMATS_TEXT}")
        return [storage.normalize(uri)]
    sources = [u for u in storage.list_uris(uri) if _source_format(u) is not None]
    if not sources:
        raise FileNotFoundError(f"no prompt files at {uri!r}: accepted formats are {_FORMATS_TEXT}")
    return sources


def _json_line_rows(uri: str) -> Iterator[tuple[int, Any, bytes | None, str | None]]:
    """(line number, parsed value, raw line, error) for each non-blank line."""
    for number, line in enumerate(storage.iter_lines(uri), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), line, None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
            yield number, None, line, f"line is not valid JSON: {exc}"


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


def _raw_text(raw: bytes | None, value: Any) -> str:
    if raw is not None:
        return raw[: _RAW_LIMIT * 4].decode("utf-8", "replace")[:_RAW_LIMIT]
    return json.dumps(value, ensure_ascii=False, default=str)[:_RAW_LIMIT]


def load_prompts(uri: str, field: str = "prompt") -> LoadResult:
    """Load every prompt under ``uri`` (a file or a directory prefix), in sorted source order.

    Records with the same prompt are kept once (the first) and counted in ``duplicates``.
    """
    sources = _resolve_sources(uri)
    # Millions of small dicts make the cyclic GC rescan an ever-growing heap: measured 17 us/line with
    # it, 6 us without. Nothing here makes reference cycles, so it is paused for the load only.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(sources, field)
    finally:
        if gc_was_enabled:
            gc.enable()


def is_prompt_source(uri: str) -> bool:
    """Whether an object is a prompt file by its name (what a prefix listing loads).

    >>> is_prompt_source("s3://b/p/part-1.jsonl"), is_prompt_source("s3://b/p/_SUCCESS")
    (True, False)
    """
    return _source_format(uri) is not None


def load_sources(sources: list[str], field: str = "prompt") -> LoadResult:
    """`load_prompts` over given objects (e.g. only those that changed since a watermark)."""
    return _load([storage.normalize(s) for s in sources], field)


def _load(sources: list[str], field: str) -> LoadResult:
    records: list[PromptRecord] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    duplicates = 0
    for source in sources:
        rows = _parquet_rows(source) if source.lower().endswith(".parquet") else _json_line_rows(source)
        for number, value, raw, error in rows:
            if error is None:
                if not isinstance(value, dict):
                    error = f"not a JSON object (got {type(value).__name__})"
                elif field not in value:
                    error = f"field {field!r} missing"
                else:
                    error = _prompt_problem(value[field], field)
            if error is not None:
                rejects.append(Reject(source=source, line=number, reason=error, raw=_raw_text(raw, value)))
                continue
            record_id = prompt_id(value[field])
            if record_id in seen:
                duplicates += 1
                continue
            seen.add(record_id)
            # The parsed row is ours: what is left after popping the prompt is the fields dict. Validated
            # above, so model_construct skips pydantic's validation copy of every dict (1M prompts).
            prompt = value.pop(field)
            records.append(
                PromptRecord.model_construct(
                    _fields_set=_ALL_FIELDS_SET, id=record_id, prompt=prompt, fields=value
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

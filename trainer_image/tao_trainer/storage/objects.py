"""Objects and listings: read, write (atomically), exist, delete, list, on both schemes."""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from tao_trainer.storage import transfers
from tao_trainer.storage.client import _client, _is_missing, _not_found, _object_key
from tao_trainer.uris import normalize, split

# Temp files and dirs carry this suffix; listings skip them so a half-written object is never seen.
_TMP_SUFFIX = ".tao-tmp"
_CHUNK = 1 << 20
# S3's own maximum; a variable so that a test can page through a few keys instead of thousands.
_LIST_PAGE_SIZE = 1000


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


@contextlib.contextmanager
def open_read(uri: str) -> Iterator[IO[bytes]]:
    """A binary stream over one object, read as it is consumed (no whole-object buffer)."""
    scheme, where, key = split(uri)
    if scheme == "file":
        try:
            f = open(where, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise _not_found(uri) from None
        with f:
            yield f
        return
    key = _object_key(uri, where, key)
    try:
        response = _client().get_object(Bucket=where, Key=key)
    except Exception as exc:
        if _is_missing(exc):
            raise _not_found(uri) from None
        raise
    body = response["Body"]
    transfers.add("bytesPulled", int(response.get("ContentLength") or 0))
    with contextlib.closing(body):
        yield body


def iter_lines(uri: str) -> Iterator[bytes]:
    """Yield the lines of an object as bytes, without line endings; ``*.gz`` is decompressed.

    Lines are split on ``\\n`` only (a ``\\r`` before it is dropped), the same for both schemes.
    """
    with open_read(uri) as raw:
        # GzipFile only needs read() from its source, so it streams an S3 body too, and it reads
        # concatenated members (what `cat a.gz b.gz` makes) as one file.
        stream: IO[bytes] | gzip.GzipFile = (
            gzip.GzipFile(fileobj=raw, mode="rb") if uri.endswith(".gz") else raw
        )
        pending = b""
        while chunk := stream.read(_CHUNK):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                yield line[:-1] if line.endswith(b"\r") else line
        if pending:
            yield pending[:-1] if pending.endswith(b"\r") else pending


@contextlib.contextmanager
def _atomic_writer(uri: str) -> Iterator[IO[bytes]]:
    """Yield a binary file; the object appears whole at ``uri`` only if the block succeeds."""
    scheme, where, key = split(uri)
    if scheme == "file":
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                # Without fsync a crash after the rename can leave an empty file under the final name.
                os.fsync(f.fileno())
            # mkstemp makes 0600; give the usual umask-based mode so other pods' users can read it.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    key = _object_key(uri, where, key)
    # Spool locally, then one upload: S3 makes an object visible only when its PUT (or the whole
    # multipart upload) completes, so readers never see a partial object.
    with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
        yield spool
        spool.seek(0)
        _client().upload_fileobj(spool, where, key)


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(uri: str, data: bytes) -> None:
    scheme, where, key = split(uri)
    if scheme == "file":
        with _atomic_writer(uri) as f:
            f.write(data)
        return
    _client().put_object(Bucket=where, Key=_object_key(uri, where, key), Body=data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode("utf-8"))


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    """Read a JSON-lines object; blank lines are skipped, anything else that is not an object fails."""
    records: list[dict[str, Any]] = []
    for number, line in enumerate(iter_lines(uri), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{uri}:{number}: not valid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{uri}:{number}: not a JSON object")
        records.append(record)
    return records


def write_jsonl(uri: str, records: Iterable[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically, streaming ``records`` (a generator is fine)."""
    encoder = json.JSONEncoder(ensure_ascii=False)
    with _atomic_writer(uri) as f:
        for record in records:
            f.write(encoder.encode(record).encode("utf-8"))
            f.write(b"\n")


def write_lines(uri: str, lines: Iterable[bytes]) -> None:
    """Write lines that are already encoded (each ending in a newline), atomically, streaming ``lines``."""
    with _atomic_writer(uri) as f:
        for line in lines:
            f.write(line)


def exists(uri: str) -> bool:
    """Whether an object (a file, not a directory) is at ``uri``."""
    scheme, where, key = split(uri)
    if scheme == "file":
        return os.path.isfile(where)
    if not key or key.endswith("/"):
        return False
    try:
        _client().head_object(Bucket=where, Key=key)
    except Exception as exc:
        if _is_missing(exc):
            return False
        raise
    return True


def delete(uri: str) -> None:
    """Delete one object; a missing one is fine."""
    scheme, where, key = split(uri)
    if scheme == "file":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where)
        return
    try:
        _client().delete_object(Bucket=where, Key=_object_key(uri, where, key))
    except Exception as exc:
        if not _is_missing(exc):
            raise


def _dir_prefix(key: str) -> str:
    return key.rstrip("/") + "/" if key.strip("/") else ""


def _s3_objects(uri: str, bucket: str, key: str) -> list[dict[str, Any]]:
    """Every object under the directory ``key`` (paginated), sorted by key; folder markers skipped."""
    prefix = _dir_prefix(key)
    paginator = _client().get_paginator("list_objects_v2")
    objects: list[dict[str, Any]] = []
    try:
        pages = paginator.paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": _LIST_PAGE_SIZE}
        )
        for page in pages:
            objects.extend(o for o in page.get("Contents", ()) if not o["Key"].endswith("/"))
    except Exception as exc:
        if _is_missing(exc):  # only NoSuchBucket can happen on a list
            raise FileNotFoundError(errno.ENOENT, f"bucket {bucket!r} does not exist", uri) from None
        raise
    objects.sort(key=lambda o: o["Key"])
    return objects


def _local_files(root: str) -> list[str]:
    """Relative paths of the files under ``root``, skipping our in-flight temp files and dirs."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.endswith(_TMP_SUFFIX)]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if not name.endswith(_TMP_SUFFIX):
                found.append(name if rel_dir == "." else f"{rel_dir}/{name}")
    return found


def list_uris(prefix_uri: str) -> list[str]:
    """All objects under a directory prefix, recursively, as sorted full URIs; missing prefix -> [].

    The prefix is a directory: ``.../round-1`` never matches ``.../round-10/x`` nor ``.../round-1.json``.
    """
    scheme, where, key = split(prefix_uri)
    if scheme == "file":
        if not os.path.isdir(where):
            return []
        base = "file://" + where.rstrip("/")
        return sorted(f"{base}/{rel}" for rel in _local_files(where))
    return [f"s3://{where}/{o['Key']}" for o in _s3_objects(prefix_uri, where, key)]


def list_versions(uri: str) -> dict[str, str]:
    """Each object at ``uri`` (one file or a directory prefix) with a version tag that changes when the
    object does: ``size:etag`` on S3, ``size:mtime_ns`` on a file system. Missing -> {}.

    The continuous mode's watermark: comparing two listings tells which objects are new or changed
    without reading them.
    """
    scheme, where, key = split(uri)
    if scheme == "file":
        if os.path.isfile(where):
            st = os.stat(where)
            return {normalize(uri): f"{st.st_size}:{st.st_mtime_ns}"}
        out = {}
        for full in list_uris(uri):
            st = os.stat(split(full)[1])
            out[full] = f"{st.st_size}:{st.st_mtime_ns}"
        return out
    if key and not key.endswith("/"):
        try:
            head = _client().head_object(Bucket=where, Key=key)
            return {f"s3://{where}/{key}": f"{head['ContentLength']}:{head['ETag'].strip(chr(34))}"}
        except Exception as exc:
            if not _is_missing(exc):
                raise
    return {
        f"s3://{where}/{o['Key']}": f"{o['Size']}:{o['ETag'].strip(chr(34))}"
        for o in _s3_objects(uri, where, key)
    }

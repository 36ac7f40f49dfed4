"""One interface over ``file://`` and ``s3://`` storage.

Every function takes a full URI (``file:///abs/path``, ``s3://bucket/key``); a plain path is taken as a
local file. URIs are literal: nothing is percent-decoded, so a key or a path may hold any character.

Semantics shared by both schemes, so that a stage behaves the same on a laptop and in a cluster:

- A URI names one object (a file). ``exists`` and ``read_*`` see objects only, never directories.
- A prefix means a directory: ``list_uris("s3://b/round-1")`` lists ``round-1/...`` and never
  ``round-10/...``.
- Writes are atomic: a reader sees the old object or the new one, never a partial one.
- A missing object raises ``FileNotFoundError`` whose ``filename`` is the URI.

>>> join("s3://bucket/", "/runs/", "round-001", "scores/")
's3://bucket/runs/round-001/scores'
>>> join("file:///data", "a/b")
'file:///data/a/b'
>>> normalize("/data/./x/../prompts.jsonl")
'file:///data/prompts.jsonl'
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel, ConfigDict

# boto3 is imported lazily (file:// users should not pay for it) and ships no client types.
S3Client = Any

SCHEMES = ("file", "s3")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Temp files and dirs carry this suffix; listings skip them so a half-written object is never seen.
_TMP_SUFFIX = ".tao-tmp"
_CHUNK = 1 << 20
# S3's own maximum; a variable so that a test can page through a few keys instead of thousands.
_LIST_PAGE_SIZE = 1000
# S3 error codes that mean "the object (or its bucket) is not there".
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})


class StorageOptions(BaseModel):
    """How to reach S3. Frozen so that it can key the client cache."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # None lets boto3's standard chain decide (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, config file).
    endpoint_url: str | None = None
    region: str | None = None
    # MinIO and moto serve buckets by path, not by virtual host.
    path_style: bool = False


_configured: StorageOptions | None = None
_session: Any = None
_session_lock = threading.Lock()


def configure(options: StorageOptions | None) -> None:
    """Set the process-wide options; ``None`` leaves only the ``TAO_S3_*`` environment variables.

    Fields left unset (None, False) fall back to ``TAO_S3_ENDPOINT_URL``, ``TAO_S3_REGION`` and
    ``TAO_S3_PATH_STYLE``: a stage CLI always passes the job's options, and a deployment that points
    every pod at MinIO through the environment must still work for jobs that name no endpoint.
    Cached clients are dropped; the process's boto3 session, and the credentials it resolved, stay.
    """
    global _configured
    _configured = options
    _client_for.cache_clear()


def _env_options() -> StorageOptions:
    return StorageOptions(
        endpoint_url=os.environ.get("TAO_S3_ENDPOINT_URL") or None,
        region=os.environ.get("TAO_S3_REGION") or None,
        path_style=os.environ.get("TAO_S3_PATH_STYLE", "").strip().lower() in ("1", "true", "yes", "on"),
    )


def current_options() -> StorageOptions:
    """The options S3 calls use now: the configured ones, completed from the environment."""
    env = _env_options()
    if _configured is None:
        return env
    return StorageOptions(
        endpoint_url=_configured.endpoint_url or env.endpoint_url,
        region=_configured.region or env.region,
        path_style=_configured.path_style or env.path_style,
    )


@functools.cache
def _client_for(options: StorageOptions) -> S3Client:
    import boto3
    from botocore.config import Config

    config_kwargs: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": 5}}
    if options.path_style:
        config_kwargs["s3"] = {"addressing_style": "path"}
    if options.endpoint_url:
        # S3-compatible servers (older MinIO, Ceph) reject the CRC checksums boto3 sends by default
        # since 1.36; only send them where the operation requires it.
        config_kwargs["request_checksum_calculation"] = "when_required"
        config_kwargs["response_checksum_validation"] = "when_required"
    global _session
    # One session for the process: it caches the parsed service model (a new session costs ~80 ms
    # per client) and the credentials. Sessions are not thread-safe, clients are: hence the lock.
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client(
            "s3",
            endpoint_url=options.endpoint_url,
            region_name=options.region,
            config=Config(**config_kwargs),
        )


def _client() -> S3Client:
    return _client_for(current_options())


# --------------------------------------------------------------------------- URIs


def normalize(uri: str) -> str:
    """Return the canonical URI: ``file:///abs/path`` for local paths, ``s3://bucket/key`` unchanged.

    >>> normalize("s3://bucket/a/b.jsonl")
    's3://bucket/a/b.jsonl'
    >>> normalize("gs://bucket/x")
    Traceback (most recent call last):
    ...
    ValueError: unsupported storage URI 'gs://bucket/x': the scheme must be one of file, s3 (or a plain path)
    """
    if not isinstance(uri, str) or not uri:
        raise ValueError(f"storage URI must be a non-empty string, got {uri!r}")
    match = _SCHEME_RE.match(uri)
    if match is None:
        return "file://" + os.path.abspath(uri)
    scheme = match.group(1).lower()
    rest = uri[match.end() :]
    if scheme == "file":
        if rest.startswith("localhost/"):
            rest = rest[len("localhost") :]
        if not rest.startswith("/"):
            raise ValueError(f"file URI {uri!r} must be absolute, like file:///abs/path")
        return "file://" + os.path.abspath(rest)
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise ValueError(f"s3 URI {uri!r} has no bucket, expected s3://bucket/key")
        return f"s3://{bucket}/{key}" if key or rest.endswith("/") else f"s3://{bucket}"
    raise ValueError(
        f"unsupported storage URI {uri!r}: the scheme must be one of {', '.join(SCHEMES)} (or a plain path)"
    )


def join(uri: str, *parts: str) -> str:
    """Append path parts to a URI with single slashes; empty and ``.`` segments vanish.

    Parts are always relative (a leading slash does not reset the path, unlike ``os.path.join``) and
    ``..`` is refused, so a joined URI never escapes its base.
    """
    base = normalize(uri)
    segments: list[str] = []
    for part in parts:
        for segment in part.split("/"):
            if segment in ("", "."):
                continue
            if segment == "..":
                raise ValueError(f"'..' is not allowed in storage paths: {part!r}")
            segments.append(segment)
    if not segments:
        return base
    tail = "/".join(segments)
    if base.startswith("file://"):
        return "file://" + base[len("file://") :].rstrip("/") + "/" + tail
    bucket, _, key = base[len("s3://") :].partition("/")
    key = key.rstrip("/")
    return f"s3://{bucket}/{key}/{tail}" if key else f"s3://{bucket}/{tail}"


def _split(uri: str) -> tuple[str, str, str]:
    """(scheme, path or bucket, key); key is '' for file URIs."""
    norm = normalize(uri)
    if norm.startswith("file://"):
        return "file", norm[len("file://") :], ""
    bucket, _, key = norm[len("s3://") :].partition("/")
    return "s3", bucket, key


def _not_found(uri: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), uri)


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES


def _object_key(uri: str, bucket: str, key: str) -> str:
    if not key or key.endswith("/"):
        raise IsADirectoryError(errno.EISDIR, "an S3 URI naming an object needs a key", uri)
    return key


# --------------------------------------------------------------------------- objects


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
    scheme, where, key = _split(uri)
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
        body = _client().get_object(Bucket=where, Key=key)["Body"]
    except Exception as exc:
        if _is_missing(exc):
            raise _not_found(uri) from None
        raise
    with contextlib.closing(body):
        yield body


def iter_lines(uri: str) -> Iterator[bytes]:
    """Yield the lines of an object as bytes, without line endings; ``*.gz`` is decompressed.

    Lines are split on ``\\n`` only (a ``\\r`` before it is dropped), the same for both schemes.
    """
    with open_read(uri) as raw:
        # GzipFile only needs read() from its source, so it streams an S3 body too, and it reads
        # concatenated members (what `cat a.gz b.gz` makes) as one file.
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if uri.endswith(".gz") else raw
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
    scheme, where, key = _split(uri)
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
        yield spool  # type: ignore[misc]
        spool.seek(0)
        _client().upload_fileobj(spool, where, key)


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(uri: str, data: bytes) -> None:
    scheme, where, key = _split(uri)
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


def exists(uri: str) -> bool:
    """Whether an object (a file, not a directory) is at ``uri``."""
    scheme, where, key = _split(uri)
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
    scheme, where, key = _split(uri)
    if scheme == "file":
        with contextlib.suppress(FileNotFoundError):
            os.unlink(where)
        return
    try:
        _client().delete_object(Bucket=where, Key=_object_key(uri, where, key))
    except Exception as exc:
        if not _is_missing(exc):
            raise


# --------------------------------------------------------------------------- trees


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
    scheme, where, key = _split(prefix_uri)
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
    scheme, where, key = _split(uri)
    if scheme == "file":
        if os.path.isfile(where):
            st = os.stat(where)
            return {normalize(uri): f"{st.st_size}:{st.st_mtime_ns}"}
        out = {}
        for full in list_uris(uri):
            st = os.stat(_split(full)[1])
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


def _safe_relative(uri: str, rel: str) -> str:
    """Refuse keys that would land outside the target directory when downloaded."""
    parts = rel.split("/")
    if rel.startswith("/") or ".." in parts or any(p == "" for p in parts):
        raise ValueError(f"refusing to download {uri!r}: key part {rel!r} is not a plain relative path")
    return rel


def upload_dir(local_dir: Path, uri: str) -> None:
    """Make the tree at ``uri`` a copy of ``local_dir`` (files there but not in ``local_dir`` go).

    file://: copy into a temp dir beside the target, then rename it into place; the target is missing
    only for the instant between two renames. s3://: upload every file (multipart when large), then
    delete stale keys; readers during an upload may see a mix, so publish a marker object after it
    when readers need a consistent tree.
    """
    src = Path(local_dir)
    if not src.is_dir():
        raise _not_found(str(src))
    scheme, where, key = _split(uri)
    if scheme == "file":
        dest = Path(where)
        if dest.exists() and dest.resolve() == src.resolve():
            return
        if dest.resolve().is_relative_to(src.resolve()) or src.resolve().is_relative_to(dest.resolve()):
            # Either the copy would recurse into itself or the swap would delete the source.
            raise ValueError(f"cannot upload {src} to {uri}: one contains the other")
        if dest == Path(dest.anchor):
            raise ValueError(f"refusing to replace the filesystem root with {src}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=_TMP_SUFFIX))
        try:
            shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*" + _TMP_SUFFIX))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            _swap_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return
    if not key.strip("/"):
        # Replacement semantics would delete every other object in the bucket.
        raise ValueError(f"refusing to upload a directory to a bucket root: {uri!r}")
    prefix = _dir_prefix(key)
    client = _client()
    uploaded: set[str] = set()
    for rel in sorted(_local_files(str(src))):
        client.upload_file(str(src / rel), where, prefix + rel)
        uploaded.add(prefix + rel)
    stale = [o["Key"] for o in _s3_objects(uri, where, key) if o["Key"] not in uploaded]
    for start in range(0, len(stale), 1000):  # delete_objects takes at most 1000 keys
        batch = [{"Key": k} for k in stale[start : start + 1000]]
        client.delete_objects(Bucket=where, Delete={"Objects": batch, "Quiet": True})


def _swap_dir(new: Path, dest: Path) -> None:
    """Rename ``new`` over ``dest`` (a directory or absent); rename cannot replace a non-empty dir."""
    if dest.is_dir() and not dest.is_symlink():
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old.", suffix=_TMP_SUFFIX))
        os.replace(dest, old)  # replaces the empty dir mkdtemp just made
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        os.replace(new, dest)


def download_dir(uri: str, local_dir: Path) -> Path:
    """Copy the tree at ``uri`` into ``local_dir`` (created; files already there are kept or replaced).

    Raises FileNotFoundError when nothing is under ``uri``.
    """
    dest = Path(local_dir)
    scheme, where, key = _split(uri)
    if scheme == "file":
        if not os.path.isdir(where):
            raise _not_found(uri)
        shutil.copytree(where, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*" + _TMP_SUFFIX))
        return dest
    objects = _s3_objects(uri, where, key)
    if not objects:
        raise _not_found(uri)
    _download_objects(uri, where, key, objects, dest)
    return dest


def _download_objects(uri: str, bucket: str, key: str, objects: list[dict[str, Any]], dest: Path) -> None:
    prefix = _dir_prefix(key)
    client = _client()
    for obj in objects:
        rel = _safe_relative(uri, obj["Key"][len(prefix) :])
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        # download_file writes to a temp name and renames, and goes multipart for large objects.
        client.download_file(bucket, obj["Key"], str(target))


def _cache_root(cache_root: Path | None) -> Path:
    if cache_root is not None:
        return Path(cache_root)
    env = os.environ.get("TAO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tao"


def local_dir(uri: str, cache_root: Path | None = None) -> Path:
    """A local directory holding the tree at ``uri``.

    file://: the directory itself. s3://: a download under ``cache_root`` (else ``$TAO_CACHE_DIR``, else
    ``~/.cache/tao``), reused while the remote listing (keys, sizes, ETags) matches the one recorded in
    a marker written after the last complete download; otherwise downloaded again whole.
    """
    scheme, where, key = _split(uri)
    if scheme == "file":
        if not os.path.isdir(where):
            raise _not_found(uri)
        return Path(where)
    objects = _s3_objects(uri, where, key)
    if not objects:
        raise _not_found(uri)
    prefix = _dir_prefix(key)
    manifest = {
        "uri": f"s3://{where}/{prefix}",
        "objects": [[o["Key"][len(prefix) :], o["Size"], o.get("ETag", "")] for o in objects],
    }
    root = _cache_root(cache_root) / "s3"
    digest = hashlib.sha256(manifest["uri"].encode("utf-8")).hexdigest()[:24]
    target = root / digest
    # The marker sits beside the tree, not in it, so the tree is exactly what was uploaded.
    marker = root / f"{digest}.complete.json"
    if target.is_dir() and marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(marker.read_text("utf-8")) == manifest:
                return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{digest}.", suffix=_TMP_SUFFIX))
    try:
        _download_objects(uri, where, key, objects, tmp)
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()  # the old tree is about to go; never leave a marker vouching for it
        _swap_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(str(marker), manifest)
    return target

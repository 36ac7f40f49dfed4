"""Storage URIs as strings: ``file:///abs/path`` and ``s3://bucket/key``, normalized and joined, with no I/O.

URIs are literal: nothing is percent-decoded, so a key or a path may hold any character. Joined URIs never
escape their base (``..`` is refused).

>>> join("s3://bucket/", "/runs/", "round-001", "scores/")
's3://bucket/runs/round-001/scores'
>>> join("file:///data", "a/b")
'file:///data/a/b'
>>> normalize("/data/./x/../prompts.jsonl")
'file:///data/prompts.jsonl'
"""

from __future__ import annotations

import os
import re

SCHEMES = ("file", "s3")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


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


def split(uri: str) -> tuple[str, str, str]:
    """(scheme, path or bucket, key); key is '' for file URIs."""
    norm = normalize(uri)
    if norm.startswith("file://"):
        return "file", norm[len("file://") :], ""
    bucket, _, key = norm[len("s3://") :].partition("/")
    return "s3", bucket, key

"""What every part of the TAOJob schema shares: the camelCase base model and the checks used by many fields.

Pure pydantic: no I/O, no torch, no Kubernetes. The operator image imports the whole `spec` package.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

MODEL_SCHEMES = ("file://", "s3://", "hf://")
STORAGE_SCHEMES = ("file://", "s3://")


class CamelModel(BaseModel):
    """Kubernetes-style field names (camelCase) in YAML/JSON, snake_case in Python; unknown fields are errors."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def dump(self) -> dict[str, Any]:
        """The camelCase JSON form, without unset optional fields, as written to YAML, status and storage."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def check_regex(pattern: str, field: str) -> str:
    """The pattern, if it compiles and cannot backtrack exponentially (`safe_regex.catastrophic`: nested
    quantifiers over overlapping parts, such as `(a+)+`, `(a|a)*`, `(.*)*`); else a ValueError naming
    the field. Every user regex of the spec is checked here; at run time each call also has a time budget."""
    from tao_trainer.safe_regex import catastrophic

    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ValueError(f"{field}: invalid regular expression {pattern!r}: {exc}") from None
    reason = catastrophic(pattern)
    if reason is not None:
        raise ValueError(
            f"{field}: regular expression {pattern!r} can take exponential time ({reason}); "
            "rewrite it without a quantifier around a quantified part, e.g. (a+)+ -> a+"
        )
    return pattern


def check_scheme(uri: str, allowed: tuple[str, ...], what: str) -> str:
    """A URI with one of the allowed schemes, or a plain local path (resolved against the manifest by `tao run`)."""
    if "://" in uri and not uri.startswith(allowed):
        raise ValueError(f"{what} {uri!r} must start with one of {', '.join(allowed)} (or be a local path)")
    if not uri.strip():
        raise ValueError(f"{what} must not be empty")
    check_uri_path(uri, what)
    return uri


def check_uri_path(uri: str, what: str) -> str:
    """A file:// or s3:// URI whose path has no `.` or `..` segment (no walking out of a prefix), no control
    characters, an absolute path for file:// and a bucket for s3://. Plain local paths are left to `tao run`.

    >>> check_uri_path("s3://b/../other", "prompts uri")
    Traceback (most recent call last):
    ...
    ValueError: prompts uri 's3://b/../other' must not contain '.' or '..' path segments
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise ValueError(f"{what} {uri!r} must not contain control characters")
    segments = rest.replace("\\", "/").split("/")
    if any(s in (".", "..") for s in segments):
        raise ValueError(f"{what} {uri!r} must not contain '.' or '..' path segments")
    if scheme == "file" and not rest.startswith(("/", "localhost/")):
        raise ValueError(f"{what} {uri!r}: a file:// URI needs an absolute path (file:///data/...)")
    if scheme == "s3" and not segments[0]:
        raise ValueError(f"{what} {uri!r}: s3:// needs a bucket name (s3://bucket/prefix)")
    return uri

"""How S3 is reached: process-wide options (from the spec and TAO_S3_* variables) and one cached client."""

from __future__ import annotations

import errno
import functools
import os
import threading
from typing import Any

from tao_trainer.spec.loop import StorageOptions

# boto3 is imported lazily (file:// users should not pay for it) and ships no client types.
S3Client = Any

# S3 error codes that mean "the object (or its bucket) is not there".
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404", "NotFound"})

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
    # Only the connection settings (a whole StorageSpec may be passed, its uri is not kept).
    _configured = (
        None
        if options is None
        else StorageOptions(
            endpoint_url=options.endpoint_url, region=options.region, path_style=options.path_style
        )
    )
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
def _client_for(endpoint_url: str | None, region: str | None, path_style: bool) -> S3Client:
    import boto3
    from botocore.config import Config

    config_kwargs: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": 5}}
    if path_style:
        config_kwargs["s3"] = {"addressing_style": "path"}
    if endpoint_url:
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
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(**config_kwargs),
        )


def _client() -> S3Client:
    options = current_options()
    return _client_for(options.endpoint_url, options.region, options.path_style)


def _not_found(uri: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), uri)


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code")) in _MISSING_CODES


def _object_key(uri: str, bucket: str, key: str) -> str:
    if not key or key.endswith("/"):
        raise IsADirectoryError(errno.EISDIR, "an S3 URI naming an object needs a key", uri)
    return key

"""One interface over ``file://`` and ``s3://`` storage.

Every function takes a full URI (``file:///abs/path``, ``s3://bucket/key``); a plain path is taken as a
local file. URIs are literal: nothing is percent-decoded, so a key or a path may hold any character.

Semantics shared by both schemes, so that a stage behaves the same on a laptop and in a cluster:

- A URI names one object (a file). ``exists`` and ``read_*`` see objects only, never directories.
- A prefix means a directory: ``list_uris("s3://b/round-1")`` lists ``round-1/...`` and never
  ``round-10/...``.
- Writes are atomic: a reader sees the old object or the new one, never a partial one.
- A missing object raises ``FileNotFoundError`` whose ``filename`` is the URI.

URI arithmetic (``normalize``, ``join``) lives in `tao_trainer.uris` and is re-exported here.
"""

from tao_trainer.spec.loop import StorageOptions
from tao_trainer.storage.client import _client, configure, current_options
from tao_trainer.storage.dirs import cache_lock, cache_tree, download_dir, local_dir, upload_dir
from tao_trainer.storage.objects import (
    delete,
    exists,
    iter_lines,
    list_uris,
    list_versions,
    open_read,
    read_bytes,
    read_json,
    read_jsonl,
    read_text,
    write_bytes,
    write_json,
    write_jsonl,
    write_lines,
    write_text,
)
from tao_trainer.uris import join, normalize

__all__ = [
    "StorageOptions",
    "_client",
    "cache_lock",
    "cache_tree",
    "configure",
    "current_options",
    "delete",
    "download_dir",
    "exists",
    "iter_lines",
    "join",
    "list_uris",
    "list_versions",
    "local_dir",
    "normalize",
    "open_read",
    "read_bytes",
    "read_json",
    "read_jsonl",
    "read_text",
    "upload_dir",
    "write_bytes",
    "write_json",
    "write_jsonl",
    "write_lines",
    "write_text",
]

"""Answers an endpoint gave, kept in the run's storage so that a retried or resumed stage never pays twice.

A cache is a prefix of JSONL objects (`RunLayout.answer_cache`): every process appends nothing (object stores
have no append) but writes objects of its own, named by host, process and a counter, each holding the entries
it learned since its previous one. Opening a cache reads them all; an unreadable line (a torn write, a hand
edit) is skipped, costing at most a request asked again. Keys are hashes of everything that decides an answer
(endpoint, model, route and request body), so a changed setting never reads an old answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import uuid
from typing import Any

from tao_trainer import storage, uris

#: Set by `tao-stage` to `<run>/cache`: scorers that call endpoints keep their answers under it (the judge).
ANSWER_CACHE_ENV = "TAO_ANSWER_CACHE"


def request_key(url: str, route: str, body: dict[str, Any]) -> str:
    """The cache key of one request.

    >>> request_key("http://t/v1", "completions", {"model": "m", "prompt": "2+2="})[:12]
    'ba2a9c2b925e'
    """
    blob = json.dumps([url.rstrip("/"), route, body], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    """A persistent map from request keys to answers (any JSON value); thread-safe."""

    def __init__(self, prefix_uri: str, flush_every: int = 32) -> None:
        self.prefix = uris.normalize(prefix_uri)
        self.flush_every = flush_every
        self._entries: dict[str, Any] = {}
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._writer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._written = 0
        for uri in storage.list_uris(self.prefix + "/"):
            if not uri.endswith(".jsonl"):
                continue
            for line in storage.read_text(uri).splitlines():
                try:
                    row = json.loads(line)
                    self._entries[row["key"]] = row["value"]
                except (ValueError, KeyError, TypeError):
                    continue

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Any | None:
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, value: Any) -> None:
        """Remember `value`; written to storage with the next `flush_every` entries, or by `flush`."""
        with self._lock:
            self._entries[key] = value
            self._pending.append({"key": key, "value": value})
            due = len(self._pending) >= self.flush_every
        if due:
            self.flush()

    def flush(self) -> None:
        """Write the entries not written yet as one object of this process's own."""
        with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            self._written += 1
            uri = f"{self.prefix}/{self._writer}-{self._written:05d}.jsonl"
        storage.write_jsonl(uri, pending)

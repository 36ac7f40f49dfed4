"""What this process pulled from object storage, for its stage's result (`StageResult.counts`).

Counted where bytes cross the network: every S3 object read (`bytesPulled`), and of those the directory trees
(models) downloaded (`treesPulled`, `treeBytesPulled`); a tree found complete in the local cache instead is a
`treeCacheHits`. file:// storage is local and counts nothing. A shared cache volume (`spec.storage.cache`)
shows here as the round's stages pulling a model once between them.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_counts: dict[str, int] = {}


def add(name: str, amount: int = 1) -> None:
    with _lock:
        _counts[name] = _counts.get(name, 0) + amount


def counts() -> dict[str, int]:
    """The counters so far (only those that moved).

    >>> reset(); add("bytesPulled", 10); add("bytesPulled", 5); counts()
    {'bytesPulled': 15}
    """
    with _lock:
        return dict(_counts)


def reset() -> None:
    with _lock:
        _counts.clear()

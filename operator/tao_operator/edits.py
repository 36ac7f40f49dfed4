"""Which spec edits a started run accepts: the list is `api.MUTABLE_MID_RUN`, shared by both executors.

A run records a digest of every other field when it starts (the operator in `status.specDigest`, `tao run` in
its spec snapshot); an edit that changes one of them is refused and nothing of it is applied.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tao_operator.api import MUTABLE_MID_RUN


def spec_digest(spec: dict[str, Any]) -> dict[str, str]:
    """A digest per top-level field of a spec dump, the mutable fields left out (see `refused_edits`).

    >>> d = spec_digest({"rounds": 2, "generation": {"shards": 2}, "continuous": {"maxRounds": 3, "interval": "1h"}})
    >>> sorted(d)
    ['continuous', 'generation']
    """
    out: dict[str, str] = {}
    for key, value in spec.items():
        if key in MUTABLE_MID_RUN:
            continue
        nested = [p.split(".", 1)[1] for p in MUTABLE_MID_RUN if p.startswith(f"{key}.")]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in nested}
        out[key] = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
    return out


def refused_edits(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The `spec.` fields whose digest changed since the run started: edits that are refused.

    >>> refused_edits({"generation": "a", "model": "b"}, {"generation": "c", "model": "b", "new": "d"})
    ['spec.generation', 'spec.new']
    """
    return [f"spec.{k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]

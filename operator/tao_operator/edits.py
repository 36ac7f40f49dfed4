"""Which spec edits a started run accepts: the list is `api.MUTABLE_MID_RUN`, shared by both executors.

A run records a digest of every other field when it starts (the operator in `status.specDigest`, `tao run` in
its spec snapshot); an edit that changes one of them is refused and nothing of it is applied.

Of the accepted edits, those of `api.ROUND_SNAPSHOT` (evaluation, scoring) apply from the next round not yet
started: each round records those sections when its first stage starts (`round_snapshot`; the operator in
`status.rounds[].spec`, `tao run` in `<run>/round-NNN/spec.json`) and its stages run on the record (`on_snapshot`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tao_operator.api import MUTABLE_MID_RUN, ROUND_SNAPSHOT
from tao_trainer.spec import LoopSpec


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


# A continuous round's watch stage only waits for new prompts (and reads neither section): the round starts, and
# records its sections, with the stage after it. An edit made while a TAOJob waits applies to the round it awaits.
WAITING_STAGES = frozenset({"watch"})


def round_snapshot(spec: LoopSpec) -> tuple[str, str]:
    """(digest, compact JSON) of the sections a round runs on; defaults are left out to keep status small.

    >>> from tao_operator.plan import _example_spec
    >>> digest, values = round_snapshot(_example_spec())
    >>> len(digest), values
    (16, '{"evaluation":{},"scoring":{"scorers":[{"name":"regex","pattern":".+","type":"regex"}]}}')
    """
    sections = {
        name: getattr(spec, name).model_dump(mode="json", by_alias=True, exclude_defaults=True)
        for name in ROUND_SNAPSHOT
    }
    values = json.dumps(sections, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(values.encode()).hexdigest()[:16], values


def on_snapshot(spec: LoopSpec, values: str) -> LoopSpec:
    """`spec` with a round's recorded sections in place of its own (what a stage of that round runs on).

    >>> from tao_operator.plan import _example_spec
    >>> before = _example_spec()
    >>> _, values = round_snapshot(before)
    >>> after = before.model_copy(update={"scoring": before.scoring.model_copy(update={"scorers": []})})
    >>> on_snapshot(after, values).scoring == before.scoring
    True
    """
    recorded = json.loads(values)
    # The spec's own class: `tao run` hands in the whole TAOJob spec, the operator its loop part.
    return type(spec).model_validate(spec.model_dump(mode="json", by_alias=True) | recorded)

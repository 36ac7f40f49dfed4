"""Which TAOJob events start a reconcile pass (stage Jobs': job_watch.py), and the ended Jobs they leave for it.
Pure, and cheap: they run on every event the watch delivers.

A pass reads the TAOJob and its children fresh, so an event only has to say *that* something worth a pass
happened. Most events do not: the operator's own status patches come back as TAOJob events, and a stage Job
reports its pods starting and becoming ready before it reports the one change a pass acts on, its end. The
periodic safety sweep (handlers.py) still runs a pass for every TAOJob, so a filtered-out event delays nothing
for long (a pod stuck pulling its image is found by it: pods are not watched).
"""

from __future__ import annotations

import collections
import contextvars
from typing import Any

from tao_operator.api import ANNOTATION_RETRY

# (uid, generation, the retry annotation, being deleted): what a TAOJob event must change to need a pass.
Fingerprint = tuple[str | None, int | None, str | None, bool]


def taojob_fingerprint(body: dict[str, Any]) -> Fingerprint:
    """What of a TAOJob a pass acts on besides its children: the spec (its generation, bumped by every spec
    edit, suspend included), the retry annotation (annotations do not bump it), deletion, and the uid (a
    TAOJob re-created under the same name)."""
    meta = body.get("metadata") or {}
    return (
        meta.get("uid"),
        meta.get("generation"),
        (meta.get("annotations") or {}).get(ANNOTATION_RETRY),
        bool(meta.get("deletionTimestamp")),
    )


class TAOJobEvents:
    """The fingerprint each TAOJob had at its last pass started by a TAOJob event: status-only events (the
    operator's own patches, half the events it sees) then start none. Its keys are the TAOJobs the safety
    sweep visits. In memory only: a restarted operator meets every TAOJob in its first listing and runs one
    pass for each, as it must."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], Fingerprint] = {}
        # The context of kopf's handlers, kept from the first TAOJob event for the sweep's passes.
        self.context: contextvars.Context | None = None

    def needs_pass(self, event_type: str | None, body: dict[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        if event_type == "DELETED":
            self.seen.pop(key, None)
            return True  # the pass finds it gone and forgets its metrics
        fingerprint = taojob_fingerprint(body)
        if self.seen.get(key) == fingerprint:
            return False
        self.seen[key] = fingerprint
        return True

    def forget(self, namespace: str, name: str) -> None:
        self.seen.pop((namespace, name), None)


class EndedJobs:
    """Stage Jobs seen ending in a watch event, until the pass that records their result reads them here
    instead of from the API (a Job's end is final: a later read would show the same). Bounded: a Job whose
    pass never came (its TAOJob deleted meanwhile) is dropped oldest first.

    >>> ended = EndedJobs(limit=1)
    >>> ended.add("ns", {"metadata": {"name": "a"}}); ended.add("ns", {"metadata": {"name": "b"}})
    >>> ended.take("ns", "a"), ended.take("ns", "b")
    (None, {'metadata': {'name': 'b'}})
    """

    def __init__(self, limit: int = 1024) -> None:
        self.limit = limit
        self.jobs: collections.OrderedDict[tuple[str, str], dict[str, Any]] = collections.OrderedDict()

    def add(self, namespace: str, body: dict[str, Any]) -> None:
        self.jobs[(namespace, body["metadata"]["name"])] = body
        while len(self.jobs) > self.limit:
            self.jobs.popitem(last=False)

    def drop(self, namespace: str, name: str) -> None:
        self.jobs.pop((namespace, name), None)

    def take(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.jobs.pop((namespace, name), None)


__all__ = [
    "EndedJobs",
    "TAOJobEvents",
    "taojob_fingerprint",
]

"""The stage Jobs' watch: a plain list and watch of the Jobs labelled `tao.dev/job`, without kopf.

A pass acts on a stage Job only when it ends or disappears, yet each Job sends several watch events (created,
pods starting, ended). kopf would build its per-object machinery for every one of them (a Body, causes,
handler bookkeeping): about a third of the operator's CPU per stage Job. Here an event costs one JSON parse
and a dict lookup, and only an end or a deletion starts a pass.

As an informer does: list, then watch from the list's resourceVersion (with bookmarks), resume from the last
version seen when the API server ends a watch request, list again when that version has expired (410 Gone) or
the connection failed (with a backoff). `JobTracker` remembers each Job's version and whether it had ended, so
that a relist or a replayed stream starts no pass twice, and a Job deleted while the watch was down is noticed.
The safety sweep (handlers.py) still visits every TAOJob, whatever this watch missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tao_operator.api import LABEL_JOB
from tao_operator.cluster import ApiError, Cluster
from tao_operator.status import job_outcome

log = logging.getLogger("tao_operator.job_watch")

# The API server ends each watch request after this many seconds; the watch resumes from the last version.
WATCH_SECONDS = 300
# Seconds before listing again after a failure, growing with each failure in a row (the last repeats).
BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class JobChange:
    """A stage Job that ended (`body` is it, as it ended) or was deleted (`body` is None)."""

    namespace: str
    name: str
    taojob: str
    body: dict[str, Any] | None


class Expired(Exception):
    """The watch's resourceVersion is too old to resume from (410 Gone): list again."""


class JobTracker:
    """Each stage Job seen: whether it had ended, and its TAOJob. What turns watch events into changes.

    >>> t = JobTracker()
    >>> job = lambda ended: {"metadata": {"name": "j", "namespace": "ns", "labels": {LABEL_JOB: "run"}},
    ...     "status": {"conditions": [{"type": "Complete", "status": "True"}]} if ended else {}}
    >>> t.seen("ADDED", job(False)) is None  # created: nothing to do yet
    True
    >>> t.seen("MODIFIED", job(True)).taojob  # it ended: a pass
    'run'
    >>> t.seen("MODIFIED", job(True)) is None  # still ended (a later status update): no second pass
    True
    >>> t.seen("ADDED", job(True)) is None  # replayed by a reconnected watch
    True
    >>> t.seen("DELETED", job(True)).body is None
    True
    """

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], tuple[bool, str, str | None]] = {}  # (ended, TAOJob, uid)

    def seen(self, event_type: str, body: dict[str, Any]) -> JobChange | None:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        if LABEL_JOB not in labels:  # not ours (a server that ignores the selector): never a pass
            return None
        key = (meta.get("namespace") or "default", meta.get("name") or "")
        if event_type == "DELETED":
            self.jobs.pop(key, None)
            return JobChange(key[0], key[1], labels[LABEL_JOB], None)
        ended, uid = job_outcome(body) is not None, meta.get("uid")
        before = self.jobs.get(key)
        self.jobs[key] = (ended, labels[LABEL_JOB], uid)
        # A new uid under a known name is a new Job (the old one's deletion was missed): its end is news.
        if ended and (before is None or not before[0] or before[2] != uid):
            return JobChange(key[0], key[1], labels[LABEL_JOB], body)
        return None

    def relisted(self, items: list[dict[str, Any]], first: bool) -> list[JobChange]:
        """The changes a fresh listing shows against what was seen: Jobs that ended meanwhile, Jobs gone. The
        `first` listing starts none: a TAOJob's first sighting runs a pass anyway, and that pass reads its Jobs."""
        listed: set[tuple[str, str]] = set()
        changes = []
        for body in items:
            meta = body.get("metadata") or {}
            listed.add((meta.get("namespace") or "default", meta.get("name") or ""))
            if (change := self.seen("ADDED", body)) is not None:
                changes.append(change)
        for key in [k for k in self.jobs if k not in listed]:
            changes.append(JobChange(key[0], key[1], self.jobs.pop(key)[1], None))
        return [] if first else changes


class StageJobWatch:
    """Watches the stage Jobs of `namespace` (None: all namespaces) and calls `on_change` for each change, in
    the order they happened. `run` returns only when cancelled."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str | None,
        on_change: Callable[[JobChange], Awaitable[None]],
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.on_change = on_change
        self.watch_seconds = watch_seconds
        self.tracker = JobTracker()

    async def run(self) -> None:
        failures, first = 0, True
        while True:
            try:
                items, version = await self.cluster.list_versioned("jobs", self.namespace, LABEL_JOB)
                for change in self.tracker.relisted(items, first):
                    await self.on_change(change)
                first, failures = False, 0
                while True:
                    version = await self._watch(version)
            except Expired:
                log.debug("stage Jobs in %s: the watch's version expired; listing again", self._where())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the connection, the API server: try again, later each time
                delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                log.warning("stage Jobs in %s: the watch failed (again in %gs): %s", self._where(), delay, e)
                await asyncio.sleep(delay)

    async def _watch(self, version: str | None) -> str | None:
        """One watch request, to its end: the last resourceVersion seen."""
        async for event in self.cluster.watch("jobs", self.namespace, LABEL_JOB, version, self.watch_seconds):
            kind, body = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if body.get("code") == 410:
                    raise Expired
                raise ApiError(int(body.get("code") or 500), "WATCH", "jobs", str(body.get("message")))
            version = (body.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED", "DELETED") and (change := self.tracker.seen(kind, body)):
                await self.on_change(change)
        return version

    def _where(self) -> str:
        return self.namespace if self.namespace is not None else "all namespaces"


__all__ = ["JobChange", "JobTracker", "StageJobWatch"]

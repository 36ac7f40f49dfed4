"""kopf handlers: thin. Every trigger (a TAOJob change, a stage Job's end, a serving Deployment event, a periodic
safety sweep) runs the same `Reconciler.reconcile` (reconciler.py): read the TAOJob, ask the plan what is next,
create what is missing, record what finished, write status if it changed. Which events are triggers is decided
in triggers.py and job_watch.py: most are not (the operator's own status patches, a Job's pods starting).
Stage Jobs are watched without kopf (job_watch.py): their events are most of what the operator receives.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import Sequence
from typing import Any, cast

import kopf

from tao_operator import builders, metrics
from tao_operator.api import GROUP, LABEL_JOB, PLURAL, VERSION
from tao_operator.cluster import Cluster
from tao_operator.job_watch import WATCH_SECONDS, JobChange, StageJobWatch
from tao_operator.reconciler import Reconciler
from tao_operator.triggers import TAOJobEvents

__all__ = ["Reconciler", "build_registry"]


# --------------------------------------------------------------------------------------------- registry


class NoDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf builds every object's "essence" (a deep copy without status and bookkeeping) on every event,
    for its create/update handlers' diffs. This operator has none, so it needs no essence: an empty one."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None


# Passes a safety sweep runs at once: enough to sweep 1,000 TAOJobs in seconds, few enough to spare the API.
SWEEP_CONCURRENCY = 8
# The sweep looks this many times per interval for TAOJobs due: each gets its pass within 1.25 intervals.
SWEEP_TICKS = 4


def start_pass(
    reconciler: Reconciler, taojobs: TAOJobEvents, namespace: str, name: str, fresh: bool = False
) -> asyncio.Task[bool]:
    """A pass started outside kopf's handlers (the sweep, the stage Job watch), as a task in the context kopf
    gives its handlers: kopf.event posts through a queue it sets there only."""
    return asyncio.create_task(reconciler.trigger(namespace, name, fresh), context=taojobs.context)


async def sweep(reconciler: Reconciler, taojobs: TAOJobEvents, interval: float) -> None:
    """A pass for every TAOJob the watch has shown and no pass has visited for `interval` seconds: events can
    be missed (a watch reconnect) or filtered out (triggers.py), and this makes sure every TAOJob converges. A
    TAOJob whose stages end every few seconds already has passes: sweeping it too added about a fifth more
    passes in the paced benchmark (docs/benchmarks.md). One task for all, where a kopf timer would be a task per TAOJob and a finalizer on each."""
    slots = asyncio.Semaphore(SWEEP_CONCURRENCY)
    loop = asyncio.get_running_loop()

    async def one(namespace: str, name: str) -> None:
        async with slots:
            # Read from the API, never remembered: the sweep is there for what the watch missed.
            if not await start_pass(reconciler, taojobs, namespace, name, fresh=True):
                taojobs.forget(namespace, name)  # deleted while its DELETED event was missed

    while True:
        await asyncio.sleep(interval / SWEEP_TICKS)
        due = loop.time() - interval
        keys = [key for key in list(taojobs.seen) if reconciler.last_pass.get(key, -math.inf) <= due]
        await asyncio.gather(*(one(ns, name) for ns, name in keys))


class JobPasses:
    """What a stage Job's end or deletion does: note it for the pass (`Reconciler.ended_jobs`), then start
    that pass without waiting for it, so that the watch reads on."""

    def __init__(self, reconciler: Reconciler, taojobs: TAOJobEvents) -> None:
        self.reconciler = reconciler
        self.taojobs = taojobs
        self.running: set[asyncio.Task[bool]] = set()

    async def __call__(self, change: JobChange) -> None:
        if change.body is None:
            self.reconciler.ended_jobs.drop(change.namespace, change.name)
        else:  # the pass reads the ended Job from here, not again from the API
            self.reconciler.ended_jobs.add(change.namespace, change.body)
        if self.taojobs.context is None:
            return  # no TAOJob event handled yet: each TAOJob's first one runs a pass that sees this Job
        task = start_pass(self.reconciler, self.taojobs, change.namespace, change.taojob)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def close(self) -> None:
        for task in self.running:
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


def build_registry(
    defaults: builders.OperatorDefaults,
    server: str | None = None,
    safety_interval: float = 60.0,
    metrics_port: int | None = None,
    namespaces: Sequence[str] = (),
) -> kopf.OperatorRegistry:
    """All handlers on a fresh registry; `server` points the operator at a given API URL (tests);
    `metrics_port` exposes Prometheus metrics (0: any free port, see `metrics.serve`); `namespaces`: those
    kopf watches (empty: all), where stage Jobs are watched too."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        if server is not None:
            return kopf.ConnectionInfo(server=server, insecure=True)
        # The operator image has no `kubernetes` client: log in as kopf does without it.
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Only event handlers: kopf keeps no progress or diff base on the objects and puts no finalizer on
        # them (a TAOJob is deleted even while the operator is down), and it skips the deep copy of every
        # object it would otherwise build per event.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = NoDiffBase()
        # Serving Deployments are selected by the API server: others in a watched namespace never reach this
        # process (kopf would otherwise receive, parse and filter each of their events).
        settings.watching.label_selectors["apps", "deployments"] = LABEL_JOB
        settings.posting.level = 20  # INFO: post Normal events too
        # No CRD/namespace scanning: the resources are known, and the chart's RBAC grants nothing for it.
        settings.scanning.disabled = True
        if metrics_port is not None:
            metrics.serve(metrics_port)
        memo.taojob_events = TAOJobEvents()
        memo.reconciler = Reconciler(
            Cluster.for_url(server) if server else Cluster.from_environment(settings), defaults
        )
        memo.sweeper = asyncio.create_task(sweep(memo.reconciler, memo.taojob_events, safety_interval))
        memo.job_passes = JobPasses(memo.reconciler, memo.taojob_events)
        watch_seconds = int(settings.watching.server_timeout or WATCH_SECONDS)
        memo.job_watches = [
            asyncio.create_task(
                StageJobWatch(memo.reconciler.cluster, ns, memo.job_passes, watch_seconds).run()
            )
            for ns in ([*namespaces] if namespaces else [None])
        ]

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        for task in (memo.sweeper, *memo.job_watches):
            task.cancel()
        await asyncio.gather(memo.sweeper, *memo.job_watches, return_exceptions=True)
        await memo.job_passes.close()
        await memo.reconciler.close()

    def taojob_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
        if memo.taojob_events.context is None:  # for the sweep's passes (see `sweep`)
            memo.taojob_events.context = contextvars.copy_context()
        raw = cast(dict[str, Any], body)
        meta = raw.get("metadata") or {}
        memo.reconciler.saw_version(
            meta.get("namespace") or "default", meta.get("name") or "", None if type == "DELETED" else raw
        )
        return bool(memo.taojob_events.needs_pass(type, raw))

    @kopf.on.event(GROUP, VERSION, PLURAL, id="taojob", when=taojob_changed, registry=registry)
    async def on_taojob(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        # kopf types namespace as optional (cluster-scoped resources); a TAOJob is namespaced.
        await memo.reconciler.trigger(namespace or "default", name)

    @kopf.on.event(
        "apps", "v1", "deployments", labels={LABEL_JOB: kopf.PRESENT}, id="serving", registry=registry
    )
    async def on_serving(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.trigger(namespace or "default", body["metadata"]["labels"][LABEL_JOB])

    return registry

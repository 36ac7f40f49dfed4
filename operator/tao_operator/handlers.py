"""kopf handlers: thin. Every trigger (a TAOJob change, a stage Job's end, a serving Deployment event, a periodic
safety sweep) runs the same `Reconciler.reconcile` (reconciler.py): read the TAOJob, ask the plan what is next,
create what is missing, record what finished, write status if it changed. Which events are triggers is decided
in triggers.py: most are not (the operator's own status patches, a Job's pods starting).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, cast

import kopf

from tao_operator import builders, metrics
from tao_operator.api import GROUP, LABEL_JOB, PLURAL, VERSION
from tao_operator.cluster import Cluster
from tao_operator.reconciler import Reconciler
from tao_operator.triggers import TAOJobEvents, job_event_needs_pass

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


async def sweep(reconciler: Reconciler, taojobs: TAOJobEvents, interval: float) -> None:
    """Every `interval` seconds, a pass for every TAOJob the watch has shown: events can be missed (a watch
    reconnect) or filtered out (triggers.py), and this makes sure every TAOJob converges. One task for all,
    where a kopf timer would be a task per TAOJob and a finalizer on each."""
    slots = asyncio.Semaphore(SWEEP_CONCURRENCY)

    async def one(namespace: str, name: str) -> None:
        async with slots:
            # In the context kopf gives its handlers: kopf.event posts through a queue it sets there only.
            task = asyncio.create_task(reconciler.trigger(namespace, name), context=taojobs.context)
            if not await task:
                taojobs.forget(namespace, name)  # deleted while its DELETED event was missed

    while True:
        await asyncio.sleep(interval)
        await asyncio.gather(*(one(ns, name) for ns, name in list(taojobs.seen)))


def build_registry(
    defaults: builders.OperatorDefaults,
    server: str | None = None,
    safety_interval: float = 60.0,
    metrics_port: int | None = None,
) -> kopf.OperatorRegistry:
    """All handlers on a fresh registry; `server` points the operator at a given API URL (tests);
    `metrics_port` exposes Prometheus metrics (0: any free port, see `metrics.serve`)."""
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
        # Children are selected by the API server: other Jobs and Deployments in a watched namespace never
        # reach this process (kopf would otherwise receive, parse and filter each of their events).
        for group, plural in (("batch", "jobs"), ("apps", "deployments")):
            settings.watching.label_selectors[group, plural] = LABEL_JOB
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

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        memo.sweeper.cancel()
        await asyncio.gather(memo.sweeper, return_exceptions=True)
        await memo.reconciler.close()

    def taojob_changed(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
        if memo.taojob_events.context is None:  # for the sweep's passes (see `sweep`)
            memo.taojob_events.context = contextvars.copy_context()
        return bool(memo.taojob_events.needs_pass(type, cast(dict[str, Any], body)))

    @kopf.on.event(GROUP, VERSION, PLURAL, id="taojob", when=taojob_changed, registry=registry)
    async def on_taojob(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        # kopf types namespace as optional (cluster-scoped resources); a TAOJob is namespaced.
        await memo.reconciler.trigger(namespace or "default", name)

    def job_ended(type: str | None, body: kopf.Body, **_: Any) -> bool:
        return job_event_needs_pass(type, cast(dict[str, Any], body))

    @kopf.on.event(
        "batch",
        "v1",
        "jobs",
        labels={LABEL_JOB: kopf.PRESENT},
        when=job_ended,
        id="stage-job",
        registry=registry,
    )
    async def on_stage_job(
        event: kopf.RawEvent, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
    ) -> None:
        ns = namespace or "default"
        if event["type"] == "DELETED":
            memo.reconciler.ended_jobs.drop(ns, body["metadata"]["name"])
        else:  # it ended (job_ended): the pass reads it from here, not again from the API
            memo.reconciler.ended_jobs.add(ns, event["object"])
        await memo.reconciler.trigger(ns, body["metadata"]["labels"][LABEL_JOB])

    @kopf.on.event(
        "apps", "v1", "deployments", labels={LABEL_JOB: kopf.PRESENT}, id="serving", registry=registry
    )
    async def on_serving(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.trigger(namespace or "default", body["metadata"]["labels"][LABEL_JOB])

    return registry

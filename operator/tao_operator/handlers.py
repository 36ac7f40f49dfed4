"""kopf handlers: thin. Every trigger (a TAOJob change, a stage Job or serving Deployment event, a periodic
safety timer) runs the same `Reconciler.reconcile` (reconciler.py): read the TAOJob, ask the plan what is next,
create what is missing, record what finished, write status if it changed.
"""

from __future__ import annotations

from typing import Any

import kopf

from tao_operator import builders, metrics
from tao_operator.api import GROUP, LABEL_JOB, PLURAL, VERSION
from tao_operator.cluster import Cluster
from tao_operator.reconciler import Reconciler

__all__ = ["Reconciler", "build_registry"]


# --------------------------------------------------------------------------------------------- registry


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
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Keep kopf's bookkeeping in annotations: status belongs to the TAOJob schema alone.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
        settings.posting.level = 20  # INFO: post Normal events too
        # No CRD/namespace scanning: the resources are known, and the chart's RBAC grants nothing for it.
        settings.scanning.disabled = True
        if metrics_port is not None:
            metrics.serve(metrics_port)
        memo.reconciler = Reconciler(
            Cluster.for_url(server) if server else Cluster.from_environment(settings), defaults
        )

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.cluster.close()

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="resume", registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="create", registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, id="update", registry=registry)
    async def on_taojob(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        # kopf types namespace as optional (cluster-scoped resources); a TAOJob is namespaced.
        await memo.reconciler.reconcile(namespace or "default", name)

    @kopf.timer(GROUP, VERSION, PLURAL, id="safety", interval=safety_interval, registry=registry)
    async def periodic(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        # Events can be missed (a watch reconnect); a slow timer makes sure every TAOJob converges.
        await memo.reconciler.reconcile(namespace or "default", name)

    @kopf.on.event("batch", "v1", "jobs", labels={LABEL_JOB: kopf.PRESENT}, id="stage-job", registry=registry)
    @kopf.on.event(
        "apps", "v1", "deployments", labels={LABEL_JOB: kopf.PRESENT}, id="serving", registry=registry
    )
    async def on_child(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.reconcile(namespace or "default", body["metadata"]["labels"][LABEL_JOB])

    return registry

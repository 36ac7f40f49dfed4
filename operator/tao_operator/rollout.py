"""Serving reconciled to the whole desired state on every pass: the Deployment and the Service are read, compared
with the desired manifests (a hash of each, recorded on the object, plus the live replica count), and patched
when they differ; `serving.enabled: false` (or nothing left to serve) scales the Deployment to zero. Status is
read from the live objects.
"""

from __future__ import annotations

from typing import Any

from tao_operator import builders
from tao_operator.api import ANNOTATION_ADAPTER_URI, ConditionType, EventReason, Reason, ServingStatus
from tao_operator.children import drifted, foreign, with_template_hash
from tao_operator.cluster import ApiError, Cluster
from tao_operator.plan import Serve, UnknownPinnedRound, champion, rounds_seen, what_to_serve
from tao_operator.reconcile_pass import Pass
from tao_operator.status import champion_status, deployment_available, results_from_status, served_uri
from tao_trainer.layout import RunLayout


class Rollout:
    def __init__(self, cluster: Cluster, defaults: builders.OperatorDefaults, p: Pass) -> None:
        self.cluster, self.defaults, self.p = cluster, defaults, p

    def _serving_condition(self, state: bool, reason: str, message: str) -> None:
        from tao_operator.status import set_condition

        p = self.p
        set_condition(p.status, ConditionType.SERVING, state, reason, message, p.generation, p.now)

    async def ensure(self, layout: RunLayout) -> None:
        """Roll out what the plan says to serve: the champion or the pinned round; nothing else."""
        p = self.p
        job, status = p.job, p.status
        spec = p.loop
        results = results_from_status(status)
        champ_round, champ_uri = champion(spec, layout, results, rounds_seen(spec, results) + 1)
        status.champion = champion_status(status, champ_round, champ_uri)
        serving = job.spec.serving
        target = what_to_serve(
            spec, layout, results, enabled=serving.enabled, pinned_round=serving.pinned_round
        )
        if isinstance(target, UnknownPinnedRound):
            message = f"spec.serving.pinnedRound {target.round} has no trained model"
            self._serving_condition(False, Reason.PINNED_ROUND_UNKNOWN, message)
            return
        if target is None:
            await self._scale_down(
                "serving.enabled is false" if not serving.enabled else "nothing to serve yet"
            )
            return
        await self._roll_out(target)

    async def _scale_down(self, why: str) -> None:
        p = self.p
        cond = next((c for c in p.status.conditions if c.type == ConditionType.SERVING), None)
        if cond is None or cond.reason == Reason.DISABLED:
            return  # never served, or already scaled down: no request
        ns, name = p.job.metadata.namespace, builders.serving_name(p.job)
        live = await self.cluster.get("deployments", ns, name)
        if (
            live is not None
            and foreign(live, p.job.metadata.uid) is None
            and live["spec"].get("replicas") != 0
        ):
            await self.cluster.patch("deployments", ns, name, {"spec": {"replicas": 0}})
        p.status.serving = None
        self._serving_condition(False, Reason.DISABLED, f"{why}: Deployment {name} scaled to 0")

    async def _apply(
        self, resource: str, desired: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, bool, dict[str, Any] | None]:
        """Create or patch one serving object to `desired`: (the object, or None on a Conflict; whether it
        changed; what was there before)."""
        p = self.p
        ns, name = p.job.metadata.namespace, desired["metadata"]["name"]
        live = before = await self.cluster.get(resource, ns, name)
        if live is None:
            if await self.cluster.create(desired):
                return desired, True, None
            live = before = await self.cluster.get(resource, ns, name)
            if live is None:
                raise ApiError(
                    409, "POST", f"{resource}/{name}", "create conflicted, yet no such object exists"
                )
        if f := foreign(live, p.job.metadata.uid):
            p.conflict(f)
            return None, False, before
        if live is not None and drifted(live, desired):
            meta = desired["metadata"]
            patch = {"metadata": {"labels": meta["labels"], "annotations": meta["annotations"]}}
            spec = _dropping_adapter(live, desired["spec"])
            await self.cluster.patch(resource, ns, name, patch | {"spec": spec})
            return desired, True, before
        return live or desired, False, before

    async def _roll_out(self, target: Serve) -> None:
        p = self.p
        job = p.job
        desired = with_template_hash(
            builders.serving_deployment(
                job, target.model_uri, target.round, self.defaults, target.previous_uri
            )
        )
        live, changed, before = await self._apply("deployments", desired)
        if live is None:
            self._serving_condition(False, Reason.CONFLICT, p.problems[-1][1])
            return
        if changed and (before is None or served_uri(before) != target.model_uri):
            p.events.append(
                ("Normal", EventReason.ROLLOUT_STARTED, f"serving round {target.round}: {target.model_uri}")
            )
        service, _, _ = await self._apply("services", with_template_hash(builders.serving_service(job)))
        if service is None:
            self._serving_condition(False, Reason.CONFLICT, p.problems[-1][1])
            return
        ready = not changed and deployment_available(live)
        port = service["spec"]["ports"][0]["port"]
        name = desired["metadata"]["name"]
        p.status.serving = ServingStatus(
            round=target.round,
            model_uri=served_uri(live) or target.model_uri,
            url=f"http://{name}.{job.metadata.namespace}.svc.cluster.local:{port}/v1",
            deployment=name,
            ready=ready,
        )
        reason = Reason.AVAILABLE if ready else Reason.ROLLING_OUT
        self._serving_condition(ready, reason, f"round {target.round} at {p.status.serving.url}")


def _dropping_adapter(live: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` as a merge patch that also removes the served-adapter annotation from the live pod template when the
    desired state serves no adapter (a merge patch keeps what it does not name; null deletes). Only our own key:
    annotations others add (`kubectl rollout restart`'s) stay."""
    template = spec.get("template")
    live_template = (live.get("spec") or {}).get("template") or {}
    live_annotations = (live_template.get("metadata") or {}).get("annotations") or {}
    if template is None or ANNOTATION_ADAPTER_URI not in live_annotations:
        return spec
    annotations = template["metadata"].get("annotations") or {}
    if ANNOTATION_ADAPTER_URI in annotations:
        return spec
    metadata = {**template["metadata"], "annotations": {**annotations, ANNOTATION_ADAPTER_URI: None}}
    return {**spec, "template": {**template, "metadata": metadata}}

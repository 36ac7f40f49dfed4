"""kopf handlers: thin. Every trigger (a TAOJob change, a stage Job or serving Deployment event, a periodic
safety timer) runs the same `reconcile`: read the TAOJob, ask the plan what is next, create what is missing,
record what finished, write status if it changed.

Progress lives in the TAOJob's status and in the cluster, never in this process: a restarted operator
reconciles from there and, since child names are deterministic and creates are idempotent, never duplicates.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any, cast

import kopf

from tao_operator import builders, metrics
from tao_operator.api import (
    ANNOTATION_SUSPENDED_BY_OPERATOR,
    GROUP,
    LABEL_JOB,
    LABEL_JOB_NAME,
    PLURAL,
    VERSION,
    ConditionType,
    EventReason,
    Reason,
    ServingStatus,
    SpecError,
    TAOJob,
    TAOJobStatus,
    parse_taojob,
)
from tao_operator.cluster import Cluster
from tao_operator.plan import (
    Failed,
    Finished,
    RunStage,
    Serve,
    UnknownPinnedRound,
    champion,
    next_action,
    rounds_seen,
    what_to_serve,
)
from tao_operator.status import (
    STAGE_PHASE,
    champion_status,
    champion_text,
    deployment_available,
    derive_phase,
    dump,
    job_outcome,
    mark_running,
    merge_patch,
    own_status,
    prune_history,
    record_result,
    results_from_status,
    served_uri,
    set_condition,
    stage_result_from_pods,
)
from tao_trainer.contract import StageConfig
from tao_trainer.layout import RunLayout

Event = tuple[str, str, str]  # (type, reason, message)

# Each reconcile records at most one finished stage per loop turn; this bounds a single pass.
MAX_STEPS_PER_PASS = 32


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(self, cluster: Cluster, defaults: builders.OperatorDefaults) -> None:
        self.cluster = cluster
        self.defaults = defaults
        self.locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def reconcile(self, namespace: str, name: str) -> None:
        # One pass at a time per TAOJob: Job events and TAOJob events may arrive together.
        lock = self.locks.setdefault((namespace, name), asyncio.Lock())
        async with lock:
            metrics.RECONCILES.inc()
            try:
                body = await self.cluster.get("taojobs", namespace, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    metrics.set_phase(namespace, name, None)
                    return
                phase = await self._reconcile(body)
                metrics.set_phase(namespace, name, phase)
            except Exception:
                metrics.RECONCILE_ERRORS.inc()
                raise

    async def _reconcile(self, body: dict[str, Any]) -> str:
        meta = body["metadata"]
        namespace, name, generation = meta.get("namespace", "default"), meta["name"], meta.get("generation")
        old = body.get("status") or {}
        status = TAOJobStatus.model_validate(own_status(old))
        now = utcnow()
        events: list[Event] = []
        try:
            job = parse_taojob({k: v for k, v in body.items() if k != "status"}, f"TAOJob {namespace}/{name}")
        except SpecError as e:
            status.message = str(e)[:2000]
            problems = "; ".join(e.problems)
            set_condition(status, ConditionType.READY, False, Reason.INVALID_SPEC, problems, generation, now)
            events.append(("Warning", EventReason.INVALID_SPEC, problems))
            return await self._write(body, old, status, events)

        spec = job.spec.loop()
        layout = job.run_layout()
        status.run_uri = layout.root
        status.observed_generation = generation
        for _ in range(MAX_STEPS_PER_PASS):
            action = next_action(spec, layout, results_from_status(status))
            if isinstance(action, Failed):
                status.message = action.message
                set_condition(
                    status, ConditionType.READY, False, Reason.STAGE_FAILED, action.message, generation, now
                )
                break
            if isinstance(action, Finished):
                await self._ensure_serving(job, layout, status, events, now)
                done = status.serving is None or status.serving.ready
                status.message = None
                reason = Reason.SUCCEEDED if done else Reason.ROLLING_OUT
                set_condition(
                    status, ConditionType.READY, done, reason, champion_text(status), generation, now
                )
                break
            if not await self._advance(job, action, status, events, now):
                break
        was_suspended = old.get("phase") == "Suspended"
        is_suspended = derive_phase(status) == "Suspended"
        if was_suspended != is_suspended:
            events.append(
                ("Normal", EventReason.SUSPENDED, "spec.suspend is true: no new stage starts")
                if is_suspended
                else ("Normal", EventReason.RESUMED, "spec.suspend is false: the run continues")
            )
        return await self._write(body, old, status, events)

    async def _advance(
        self, job: TAOJob, action: RunStage, status: TAOJobStatus, events: list[Event], now: str
    ) -> bool:
        """Move one stage forward; True when a result was recorded (the plan can go on at once)."""
        ns, suspend, generation = job.metadata.namespace, job.spec.suspend, job.metadata.generation
        child = builders.child_name(job.metadata.name, action.round, action.stage)
        status.round = action.round
        k8s_job = await self.cluster.get("jobs", ns, child)
        if k8s_job is None:
            if suspend:
                set_condition(
                    status,
                    ConditionType.READY,
                    False,
                    Reason.SUSPENDED,
                    "spec.suspend is true",
                    generation,
                    now,
                )
                return False
            cfg = StageConfig(
                stage=action.stage,
                round=action.round,
                run_uri=status.run_uri or "",
                model_uri=action.model_uri,
                spec=job.spec.loop(),
            )
            await self.cluster.create(builders.stage_configmap(job, cfg))
            await self.cluster.create(builders.stage_job(job, cfg, self.defaults))
        if mark_running(status, action, child, now):
            events.append(
                ("Normal", EventReason.STAGE_STARTED, f"round {action.round}: {action.stage} (Job {child})")
            )
        outcome = job_outcome(k8s_job) if k8s_job is not None else None
        if outcome is None:
            if k8s_job is not None:
                await self._sync_suspend(k8s_job, suspend, events)
            reason = Reason.SUSPENDED if suspend else STAGE_PHASE[action.stage]
            message = f"round {action.round}: {action.stage}"
            set_condition(status, ConditionType.READY, False, reason, message, generation, now)
            return False
        pods = await self.cluster.list("pods", ns, {LABEL_JOB_NAME: child})
        result = stage_result_from_pods(action, child, outcome, pods)
        record_result(status, result, now)
        prune_history(status, job.spec.history_limit)
        if action.stage == "preflight" and status.preflight is not None:
            signal = status.preflight.signal
            informative = Reason.SIGNAL if signal else Reason.NO_SIGNAL
            verdict = status.preflight.verdict
            set_condition(
                status, ConditionType.SCORERS_INFORMATIVE, signal, informative, verdict, generation, now
            )
        outcome_label = "ok" if result.ok else "failed"
        metrics.STAGE_DURATION.labels(stage=action.stage, outcome=outcome_label).observe(
            result.duration_seconds
        )
        if result.ok and action.stage == "evaluate":
            metrics.ROUNDS.labels(verdict="promoted" if result.promoted else "rejected").inc()
        if not result.ok:
            events.append(("Warning", EventReason.STAGE_FAILED, result.message))
        elif action.stage == "evaluate":
            verdict_event = EventReason.PROMOTED if result.promoted else EventReason.NOT_PROMOTED
            events.append(("Normal", verdict_event, result.message))
            if result.promoted:
                await self._ensure_serving(job, RunLayout(status.run_uri or ""), status, events, now)
        else:
            events.append(("Normal", EventReason.STAGE_SUCCEEDED, f"round {action.round}: {action.stage}"))
        return True

    async def _sync_suspend(self, k8s_job: dict[str, Any], suspend: bool, events: list[Event]) -> None:
        """Suspend a running Job with the TAOJob, and resume only the Jobs this operator suspended: a queue
        manager such as Kueue also suspends Jobs (until admitted), and those are not ours to resume."""
        meta = k8s_job["metadata"]
        ours = (meta.get("annotations") or {}).get(ANNOTATION_SUSPENDED_BY_OPERATOR) == "true"
        is_suspended = bool((k8s_job.get("spec") or {}).get("suspend"))
        if suspend and not is_suspended:
            patch = {
                "metadata": {"annotations": {ANNOTATION_SUSPENDED_BY_OPERATOR: "true"}},
                "spec": {"suspend": True},
            }
            await self.cluster.patch("jobs", meta["namespace"], meta["name"], patch)
            events.append(("Normal", EventReason.JOB_SUSPENDED, f"Job {meta['name']}"))
        elif not suspend and ours:
            patch = {
                "metadata": {"annotations": {ANNOTATION_SUSPENDED_BY_OPERATOR: None}},
                "spec": {"suspend": False},
            }
            await self.cluster.patch("jobs", meta["namespace"], meta["name"], patch)
            events.append(("Normal", EventReason.JOB_RESUMED, f"Job {meta['name']}"))

    async def _ensure_serving(
        self, job: TAOJob, layout: RunLayout, status: TAOJobStatus, events: list[Event], now: str
    ) -> None:
        """Roll out what the plan says to serve: the champion or the pinned round; nothing else."""
        spec, generation = job.spec.loop(), job.metadata.generation
        results = results_from_status(status)
        champ_round, champ_uri = champion(spec, layout, results, rounds_seen(spec, results) + 1)
        status.champion = champion_status(status, champ_round, champ_uri)
        serving = job.spec.serving
        target = what_to_serve(
            spec, layout, results, enabled=serving.enabled, pinned_round=serving.pinned_round
        )
        if target is None:
            return
        if isinstance(target, UnknownPinnedRound):
            message = f"spec.serving.pinnedRound {target.round} has no trained model"
            set_condition(
                status, ConditionType.SERVING, False, Reason.PINNED_ROUND_UNKNOWN, message, generation, now
            )
            return
        await self._roll_out(job, target, status, events, now)

    async def _roll_out(
        self, job: TAOJob, target: Serve, status: TAOJobStatus, events: list[Event], now: str
    ) -> None:
        ns = job.metadata.namespace
        deployment = builders.serving_deployment(job, target.model_uri, target.round, self.defaults)
        name = deployment["metadata"]["name"]
        current = await self.cluster.get("deployments", ns, name)
        if current is None:
            await self.cluster.create(deployment)
            events.append(
                ("Normal", EventReason.ROLLOUT_STARTED, f"serving round {target.round}: {target.model_uri}")
            )
        elif served_uri(current) != target.model_uri:
            patch = {"metadata": {"labels": deployment["metadata"]["labels"]}, "spec": deployment["spec"]}
            await self.cluster.patch("deployments", ns, name, patch)
            events.append(
                ("Normal", EventReason.ROLLOUT_STARTED, f"serving round {target.round}: {target.model_uri}")
            )
            current = None
        await self.cluster.create(builders.serving_service(job))
        ready = deployment_available(current)
        status.serving = ServingStatus(
            round=target.round,
            model_uri=target.model_uri,
            url=builders.serving_url(job),
            deployment=name,
            ready=ready,
        )
        reason = Reason.AVAILABLE if ready else Reason.ROLLING_OUT
        message = f"round {target.round} at {status.serving.url}"
        set_condition(status, ConditionType.SERVING, ready, reason, message, job.metadata.generation, now)

    async def _write(
        self, body: dict[str, Any], old: dict[str, Any], status: TAOJobStatus, events: list[Event]
    ) -> str:
        """Derive the phase, patch status only when it changed, then post the transition events."""
        status.phase = derive_phase(status)
        patch = merge_patch(own_status(old), dump(status))
        if patch:
            meta = body["metadata"]
            namespace = meta.get("namespace", "default")
            await self.cluster.patch("taojobs", namespace, meta["name"], {"status": patch}, sub="status")
        for kind, reason, message in events:
            # The raw object as read from the API: kopf reads only its apiVersion, kind and metadata.
            kopf.event(cast(kopf.Body, body), type=kind, reason=reason, message=message[:1000])
        return status.phase


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

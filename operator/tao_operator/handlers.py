"""kopf handlers: thin. Every trigger (a TAOJob change, a stage Job or serving Deployment event, a periodic
safety timer) runs the same `reconcile`: read the TAOJob, ask the plan what is next, create what is missing,
record what finished, write status if it changed.

Progress lives in the TAOJob's status and in the cluster, never in this process: a restarted operator
reconciles from there and, since child names are deterministic and creates are idempotent, never duplicates.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import kopf

from tao_operator import builders, metrics
from tao_operator.api import (
    GROUP,
    PLURAL,
    VERSION,
    ChampionStatus,
    ServingStatus,
    SpecError,
    TAOJob,
    TAOJobStatus,
    parse_taojob,
)
from tao_operator.cluster import Cluster
from tao_operator.plan import Failed, Finished, RunStage, champion, next_action, rounds_seen
from tao_operator.status import (
    STAGE_PHASE,
    aggregate,
    dump,
    mark_running,
    merge_patch,
    own_status,
    parse_termination_message,
    prune_history,
    record_result,
    results_from_status,
    set_condition,
)
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec

# Marks a Job suspended because its TAOJob was, so that resuming never overrides a queue manager's suspension.
SUSPENDED_BY_US = "tao.dev/suspended-by-operator"

# Each reconcile records at most one finished stage per loop turn; this bounds a single pass.
MAX_STEPS_PER_PASS = 32


def utcnow() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def loop_spec(job: TAOJob) -> LoopSpec:
    """The part of the spec that stages read (the cluster-only fields stay with the operator)."""
    return LoopSpec.model_validate(job.spec.model_dump(include=set(LoopSpec.model_fields), by_alias=False))


def job_outcome(k8s_job: dict[str, Any]) -> str | None:
    """ "Complete", "Failed" or None (still running) from a batch/v1 Job's conditions."""
    for cond in (k8s_job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return None


def stage_result_from_pods(
    action: RunStage, job_name: str, outcome: str, pods: list[dict[str, Any]]
) -> StageResult:
    """The stage's result: one per completion index (the last succeeded pod), or the failing pod's message."""
    parsed: list[tuple[str, str, StageResult]] = []
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term is None:
                continue
            index = (pod["metadata"].get("annotations") or {}).get(
                "batch.kubernetes.io/job-completion-index", "0"
            )
            res = parse_termination_message(
                action.stage, action.round, pod["metadata"]["name"], term.get("message"), term.get("exitCode")
            )
            parsed.append((index, pod["metadata"]["name"], res))
    if outcome == "Failed":
        failures = [(pod, res) for _, pod, res in parsed if not res.ok]
        detail = (
            f"pod {failures[-1][0]}: {failures[-1][1].message}" if failures else "no pod reported a result"
        )
        # Keep what the failing pod measured (a preflight that found no signal reports its figures).
        last = failures[-1][1] if failures else None
        return StageResult(
            stage=action.stage,
            round=action.round,
            ok=False,
            message=f"stage {action.stage} of round {action.round} failed (Job {job_name}, {detail})",
            counts=last.counts if last else {},
            metrics=last.metrics if last else {},
            outputs=last.outputs if last else {},
        )
    latest = {index: res for index, _, res in parsed if res.ok}
    if not latest:
        return StageResult(
            stage=action.stage,
            round=action.round,
            ok=False,
            message=f"Job {job_name} completed but no pod reported a result",
        )
    return aggregate(action.stage, action.round, latest.values())


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
        events: list[tuple[str, str, str]] = []
        try:
            job = parse_taojob({k: v for k, v in body.items() if k != "status"}, f"TAOJob {namespace}/{name}")
        except SpecError as e:
            status.phase = "Failed"
            status.message = str(e)[:2000]
            set_condition(status, "Ready", False, "InvalidSpec", "; ".join(e.problems), generation, now)
            events.append(("Warning", "InvalidSpec", "; ".join(e.problems)))
            await self._write(body, old, status, events)
            return status.phase

        spec = loop_spec(job)
        meta_ = job.metadata
        layout = RunLayout.for_job(job.spec.storage.uri, meta_.namespace, meta_.name, meta_.uid)
        status.run_uri = layout.root
        status.observed_generation = generation
        for _ in range(MAX_STEPS_PER_PASS):
            action = next_action(spec, layout, results_from_status(status))
            if isinstance(action, Failed):
                status.phase = "Failed"
                status.message = action.message
                set_condition(status, "Ready", False, "StageFailed", action.message, generation, now)
                break
            if isinstance(action, Finished):
                await self._ensure_serving(job, layout, status, events, now)
                done = status.serving is None or status.serving.ready
                status.phase = "Succeeded" if done else "RollingOut"
                status.message = None
                set_condition(
                    status,
                    "Ready",
                    done,
                    "Succeeded" if done else "RollingOut",
                    _champion_text(status),
                    generation,
                    now,
                )
                break
            if not await self._advance(job, action, status, events, now):
                break
        was_suspended, is_suspended = old.get("phase") == "Suspended", status.phase == "Suspended"
        if was_suspended != is_suspended:
            events.append(
                ("Normal", "Suspended", "spec.suspend is true: no new stage starts")
                if is_suspended
                else ("Normal", "Resumed", "spec.suspend is false: the run continues")
            )
        await self._write(body, old, status, events)
        return status.phase

    async def _advance(
        self,
        job: TAOJob,
        action: RunStage,
        status: TAOJobStatus,
        events: list[tuple[str, str, str]],
        now: str,
    ) -> bool:
        """Move one stage forward; True when a result was recorded (the plan can go on at once)."""
        ns, suspend = job.metadata.namespace, job.spec.suspend
        child = builders.child_name(job.metadata.name, action.round, action.stage)
        status.round = action.round
        k8s_job = await self.cluster.get("jobs", ns, child)
        if k8s_job is None:
            if suspend:
                status.phase = "Suspended"
                set_condition(
                    status, "Ready", False, "Suspended", "spec.suspend is true", job.metadata.generation, now
                )
                return False
            cfg = StageConfig(
                stage=action.stage,
                round=action.round,
                run_uri=status.run_uri or "",
                model_uri=action.model_uri,
                spec=loop_spec(job),
            )
            await self.cluster.create(builders.stage_configmap(job, cfg))
            await self.cluster.create(builders.stage_job(job, cfg, self.defaults))
        if mark_running(status, action, child, now):
            events.append(("Normal", "StageStarted", f"round {action.round}: {action.stage} (Job {child})"))
        outcome = job_outcome(k8s_job) if k8s_job is not None else None
        if outcome is None:
            if k8s_job is not None:
                await self._sync_suspend(k8s_job, suspend, events)
            status.phase = "Suspended" if suspend else STAGE_PHASE[action.stage]
            set_condition(
                status,
                "Ready",
                False,
                status.phase,
                f"round {action.round}: {action.stage}",
                job.metadata.generation,
                now,
            )
            return False
        pods = await self.cluster.list("pods", ns, {"job-name": child})
        result = stage_result_from_pods(action, child, outcome, pods)
        record_result(status, result, now)
        prune_history(status, job.spec.history_limit)
        if action.stage == "preflight" and status.preflight is not None:
            signal = status.preflight.signal
            set_condition(
                status,
                "ScorersInformative",
                signal,
                "Signal" if signal else "NoSignal",
                status.preflight.verdict,
                job.metadata.generation,
                now,
            )
        metrics.STAGE_DURATION.labels(stage=action.stage, outcome="ok" if result.ok else "failed").observe(
            result.duration_seconds
        )
        if result.ok and action.stage == "evaluate":
            metrics.ROUNDS.labels(verdict="promoted" if result.promoted else "rejected").inc()
        if not result.ok:
            events.append(("Warning", "StageFailed", result.message))
        elif action.stage == "evaluate":
            events.append(("Normal", "Promoted" if result.promoted else "NotPromoted", result.message))
            if result.promoted:
                await self._ensure_serving(job, RunLayout(status.run_uri or ""), status, events, now)
        else:
            events.append(("Normal", "StageSucceeded", f"round {action.round}: {action.stage}"))
        return True

    async def _sync_suspend(
        self, k8s_job: dict[str, Any], suspend: bool, events: list[tuple[str, str, str]]
    ) -> None:
        """Suspend a running Job with the TAOJob, and resume only the Jobs this operator suspended: a queue
        manager such as Kueue also suspends Jobs (until admitted), and those are not ours to resume."""
        meta = k8s_job["metadata"]
        ours = (meta.get("annotations") or {}).get(SUSPENDED_BY_US) == "true"
        is_suspended = bool((k8s_job.get("spec") or {}).get("suspend"))
        if suspend and not is_suspended:
            await self.cluster.patch(
                "jobs",
                meta["namespace"],
                meta["name"],
                {"metadata": {"annotations": {SUSPENDED_BY_US: "true"}}, "spec": {"suspend": True}},
            )
            events.append(("Normal", "JobSuspended", f"Job {meta['name']}"))
        elif not suspend and ours:
            await self.cluster.patch(
                "jobs",
                meta["namespace"],
                meta["name"],
                {"metadata": {"annotations": {SUSPENDED_BY_US: None}}, "spec": {"suspend": False}},
            )
            events.append(("Normal", "JobResumed", f"Job {meta['name']}"))

    async def _ensure_serving(
        self,
        job: TAOJob,
        layout: RunLayout,
        status: TAOJobStatus,
        events: list[tuple[str, str, str]],
        now: str,
    ) -> None:
        """Serve the champion (or the pinned round); never the base unless pinned; never a rejected model."""
        spec = loop_spec(job)
        results = results_from_status(status)
        champ_round, champ_uri = champion(spec, layout, results, rounds_seen(spec, results) + 1)
        status.champion = _champion_status(status, champ_round, champ_uri)
        pinned = job.spec.serving.pinned_round
        target = (
            (pinned, spec.model.uri if pinned == 0 else layout.model(pinned))
            if pinned is not None
            else (champ_round, champ_uri)
        )
        if not job.spec.serving.enabled or (pinned is None and champ_round == 0):
            return
        # A round older than status' window (pruned) trained a model, or the run could not have gone on.
        if (
            pinned
            and pinned > status.pruned_rounds
            and not any(r.round == pinned and r.model_uri for r in status.rounds)
        ):
            set_condition(
                status,
                "Serving",
                False,
                "PinnedRoundUnknown",
                f"spec.serving.pinnedRound {pinned} has no trained model",
                job.metadata.generation,
                now,
            )
            return
        ns = job.metadata.namespace
        deployment = builders.serving_deployment(job, target[1], target[0], self.defaults)
        current = await self.cluster.get("deployments", ns, deployment["metadata"]["name"])
        if current is None:
            await self.cluster.create(deployment)
            events.append(("Normal", "RolloutStarted", f"serving round {target[0]}: {target[1]}"))
        elif _served_uri(current) != target[1]:
            await self.cluster.patch(
                "deployments",
                ns,
                deployment["metadata"]["name"],
                {"metadata": {"labels": deployment["metadata"]["labels"]}, "spec": deployment["spec"]},
            )
            events.append(("Normal", "RolloutStarted", f"serving round {target[0]}: {target[1]}"))
            current = None
        await self.cluster.create(builders.serving_service(job))
        status.serving = ServingStatus(
            round=target[0],
            model_uri=target[1],
            url=builders.serving_url(job),
            deployment=deployment["metadata"]["name"],
            ready=_available(current),
        )
        set_condition(
            status,
            "Serving",
            status.serving.ready,
            "Available" if status.serving.ready else "RollingOut",
            f"round {target[0]} at {status.serving.url}",
            job.metadata.generation,
            now,
        )

    async def _write(
        self,
        body: dict[str, Any],
        old: dict[str, Any],
        status: TAOJobStatus,
        events: list[tuple[str, str, str]],
    ) -> None:
        """Patch status only when it changed; then post the transition events."""
        patch = merge_patch(own_status(old), dump(status))
        if patch:
            meta = body["metadata"]
            await self.cluster.patch(
                "taojobs", meta.get("namespace", "default"), meta["name"], {"status": patch}, sub="status"
            )
        for kind, reason, message in events:
            kopf.event(body, type=kind, reason=reason, message=message[:1000])


def _champion_text(status: TAOJobStatus) -> str:
    if status.champion is None or status.champion.round == 0:
        return "no round beat the base model"
    return f"champion: round {status.champion.round}"


def _champion_status(status: TAOJobStatus, round_: int, uri: str) -> ChampionStatus:
    score = None
    for r in status.rounds:
        if r.round == round_ and r.challenger:
            score = r.challenger.get("score")
    if round_ == 0 and status.rounds and status.rounds[0].champion:
        score = status.rounds[0].champion.get("score")
    return ChampionStatus(round=round_, uri=uri, score=score)


def _served_uri(deployment: dict[str, Any]) -> str | None:
    return (deployment["spec"]["template"]["metadata"].get("annotations") or {}).get("tao.dev/model-uri")


def _available(deployment: dict[str, Any] | None) -> bool:
    if deployment is None:
        return False
    st = deployment.get("status") or {}
    want = deployment["spec"].get("replicas", 1)
    return (
        st.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and st.get("updatedReplicas", 0) >= want
        and st.get("availableReplicas", 0) >= want
    )


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
    async def on_taojob(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.reconcile(namespace, name)

    @kopf.timer(GROUP, VERSION, PLURAL, id="safety", interval=safety_interval, registry=registry)
    async def periodic(name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        # Events can be missed (a watch reconnect); a slow timer makes sure every TAOJob converges.
        await memo.reconciler.reconcile(namespace, name)

    @kopf.on.event(
        "batch", "v1", "jobs", labels={"tao.dev/job": kopf.PRESENT}, id="stage-job", registry=registry
    )
    @kopf.on.event(
        "apps", "v1", "deployments", labels={"tao.dev/job": kopf.PRESENT}, id="serving", registry=registry
    )
    async def on_child(body: kopf.Body, namespace: str, memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.reconcile(namespace, body["metadata"]["labels"]["tao.dev/job"])

    return registry

"""One stage forward: create its ConfigMap and Job (ours, or a Conflict), watch its pods, record its result.

A Job is found by the name recorded in status (`<taojob>-r<round>-<stage>[-a<attempt>]`); its pods by the Job's
uid. A finished stage whose pods are gone before their results were read runs again as a new attempt, whose pod
re-reports the result the stage stored (`results/<stage>.json`) without recomputing it.
"""

from __future__ import annotations

from typing import Any

from tao_operator import builders, metrics
from tao_operator.api import (
    ANNOTATION_COMPLETION_INDEX,
    ANNOTATION_SUSPENDED_BY_OPERATOR,
    LABEL_KUEUE_JOB_UID,
    LABEL_KUEUE_QUEUE,
    ConditionType,
    EventReason,
    Reason,
    RoundSpec,
    RoundStatus,
    StageStatus,
)
from tao_operator.children import foreign, pod_selector, pods_of, stuck_pod
from tao_operator.cluster import ApiError, Cluster
from tao_operator.edits import WAITING_STAGES, on_snapshot, round_snapshot
from tao_operator.plan import RunStage
from tao_operator.reconcile_pass import Pass, new_attempt
from tao_operator.status import (
    STAGE_PHASE,
    job_outcome,
    prune_history,
    record_result,
    round_status,
    set_condition,
    stage_result_from_pods,
    stage_status,
)
from tao_operator.triggers import EndedJobs
from tao_operator.usage import Usage, add, budget_exhausted
from tao_trainer.contract import StageConfig
from tao_trainer.spec import LoopSpec

# A lost result is re-reported by a new attempt; more lost in a row than this says something else is wrong.
MAX_ATTEMPTS = 6


def reported_all(k8s_job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """Whether every completion index of a Complete Job has a pod that terminated with exit code 0.

    >>> job = {"spec": {"completions": 2}}
    >>> done = {"state": {"terminated": {"exitCode": 0}}}
    >>> pod = lambda i: {"metadata": {"annotations": {ANNOTATION_COMPLETION_INDEX: str(i)}},
    ...                  "status": {"containerStatuses": [done]}}
    >>> reported_all(job, [pod(0)]), reported_all(job, [pod(0), pod(1)])
    (False, True)
    """
    seen = set()
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term and term.get("exitCode") == 0:
                seen.add((pod["metadata"].get("annotations") or {}).get(ANNOTATION_COMPLETION_INDEX, "0"))
    return len(seen) >= int((k8s_job.get("spec") or {}).get("completions") or 1)


class StageStep:
    def __init__(
        self,
        cluster: Cluster,
        defaults: builders.OperatorDefaults,
        p: Pass,
        ended_jobs: EndedJobs | None = None,
    ) -> None:
        self.cluster, self.defaults, self.p = cluster, defaults, p
        self.ended_jobs = ended_jobs or EndedJobs(limit=0)

    async def advance(self, action: RunStage) -> bool:
        """Move one stage forward; True when a result was recorded (the plan can go on at once)."""
        p = self.p
        job, status = p.job, p.status
        ns, uid, suspend = job.metadata.namespace, job.metadata.uid, job.spec.suspend
        status.round = action.round
        rnd = round_status(status, action.round)
        st = stage_status(rnd, action.stage)
        if st is None:
            st = StageStatus(stage=action.stage, state="Running")
            st.job = builders.child_name(job.metadata.name, action.round, action.stage)
            rnd.stages.append(st)
        child = st.job or builders.child_name(job.metadata.name, action.round, action.stage, st.attempt)
        # The Job of a stage not recorded as started exists only when a pass created it and stopped before
        # writing status: its create then answers 409 and reads it back (`_create`). So it is read first only
        # when this pass may not create it (suspended, over budget), to be followed if it exists.
        may_create = st.started_at is None and not suspend and self._within_budget()
        k8s_job = None
        if not may_create:
            k8s_job = self.ended_jobs.take(ns, child) or await self.cluster.get("jobs", ns, child)
        if f := foreign(k8s_job, uid):
            p.conflict(f)
            p.ready(
                False, STAGE_PHASE[action.stage], f"round {action.round}: {action.stage} waits: {f.message()}"
            )
            return False
        if k8s_job is None and st.started_at is not None:
            # Recorded as started, now gone (deleted, or collected before it was read): its result is missing.
            return self._lost(action, st, f"Job {child} disappeared before its result was read")
        if k8s_job is None:
            if suspend:
                p.ready(False, Reason.SUSPENDED, "spec.suspend is true")
                return False
            if not may_create:
                return False  # over budget: said by _within_budget
            k8s_job = await self._create(action, st.attempt, child)
            if k8s_job is None:
                return False
        if st.started_at is None:
            st.started_at = p.now
            p.events.append(
                ("Normal", EventReason.STAGE_STARTED, f"round {action.round}: {action.stage} (Job {child})")
            )
        outcome = job_outcome(k8s_job)
        if outcome is None:
            await self._sync_suspend(k8s_job, suspend)
            if not suspend and k8s_job.get("metadata", {}).get("uid"):
                pods = pods_of(k8s_job, await self.cluster.list("pods", ns, pod_selector(k8s_job)))
                if stuck := stuck_pod(pods):
                    p.problems.append((Reason.POD_STUCK, f"round {action.round} {action.stage}: {stuck}"))
            reason = Reason.SUSPENDED if suspend else STAGE_PHASE[action.stage]
            p.ready(False, reason, f"round {action.round}: {action.stage}")
            return False
        pods = pods_of(k8s_job, await self.cluster.list("pods", ns, pod_selector(k8s_job)))
        if outcome == "Complete" and not reported_all(k8s_job, pods):
            if st.attempt >= MAX_ATTEMPTS:
                message = f"Job {child} completed but its pods' results were lost {st.attempt} times in a row"
                record_result(status, _failed(action, message), p.now, job.spec.costs)
                return True
            return self._lost(
                action, st, f"Job {child} completed but its pods were gone before they were read"
            )
        result = stage_result_from_pods(action, child, outcome, pods)
        record_result(status, result, p.now, job.spec.costs)
        if result.ok and action.stage == "evaluate" and rnd.spec is not None:
            rnd.spec.values = None  # the round is over: its digest says what it ran on
        prune_history(status, job.spec.history_limit)
        self._after(action, result)
        return True

    def _lost(self, action: RunStage, st: StageStatus, why: str) -> bool:

        new_attempt(self.p.job, action.round, st)
        message = (
            f"round {action.round} {action.stage}: {why}; attempt {st.attempt} re-reports the stored result"
        )
        self.p.events.append(("Normal", EventReason.RESULT_MISSING, message))
        return True  # the plan goes on at once: the same stage, as the new attempt

    async def _create(self, action: RunStage, attempt: int, child: str) -> dict[str, Any] | None:
        """Create the ConfigMap and Job of an attempt; the Job (ours), or None on a Conflict."""
        p, job = self.p, self.p.job
        ns, uid = job.metadata.namespace, job.metadata.uid
        cfg = StageConfig(
            stage=action.stage,
            round=action.round,
            run_uri=p.status.run_uri or "",
            model_uri=action.model_uri,
            spec=round_spec(p.loop, round_status(p.status, action.round), action.stage),
        )
        cm = builders.stage_configmap(job, cfg, attempt)
        if not await self.cluster.create(cm):
            live = await self.cluster.get("configmaps", ns, cm["metadata"]["name"])
            if f := foreign(live, uid):
                # Named by the Job when it is someone else's too (the predecessor left both): the one to see.
                p.conflict(foreign(await self.cluster.get("jobs", ns, child), uid) or f)
                return None
            if live is not None and live.get("data") != cm["data"]:
                # Ours, written by a pass that stopped before its Job: bring it to this pass's config.
                await self.cluster.patch("configmaps", ns, cm["metadata"]["name"], {"data": cm["data"]})
        for service in builders.stage_services(job, cfg, attempt):
            # A multi-node train Job's headless Service: its pods find node 0 by name through it.
            if not await self.cluster.create(service):
                live = await self.cluster.get("services", ns, service["metadata"]["name"])
                if f := foreign(live, uid):
                    p.conflict(f)
                    return None
        manifest = builders.stage_job(job, cfg, self.defaults, attempt)
        if await self.cluster.create(manifest):
            return manifest  # its uid is unknown until read back: pods are listed on the next pass
        live = await self.cluster.get("jobs", ns, child)
        if live is None:
            raise ApiError(409, "POST", f"jobs/{child}", "create conflicted, yet no such Job exists")
        if f := foreign(live, uid):
            p.conflict(f)
            return None
        return live

    def _after(self, action: RunStage, result: Any) -> None:
        p, status = self.p, self.p.status
        if action.stage == "preflight" and status.preflight is not None:
            signal = status.preflight.signal
            informative = Reason.SIGNAL if signal else Reason.NO_SIGNAL
            set_condition(
                status,
                ConditionType.SCORERS_INFORMATIVE,
                signal,
                informative,
                status.preflight.verdict,
                p.generation,
                p.now,
            )
        metrics.STAGE_DURATION.labels(stage=action.stage, outcome="ok" if result.ok else "failed").observe(
            result.duration_seconds
        )
        if result.ok and action.stage == "evaluate":
            metrics.ROUNDS.labels(verdict="promoted" if result.promoted else "rejected").inc()
        if not result.ok:
            p.events.append(("Warning", EventReason.STAGE_FAILED, result.message))
        elif action.stage == "evaluate":
            verdict_event = EventReason.PROMOTED if result.promoted else EventReason.NOT_PROMOTED
            p.events.append(("Normal", verdict_event, result.message))
        else:
            p.events.append(("Normal", EventReason.STAGE_SUCCEEDED, f"round {action.round}: {action.stage}"))

    def _within_budget(self) -> bool:
        """Whether spec.budget lets a new stage start; when it does not, say so (BudgetExhausted, an event on the
        transition). Checked on the run's use repriced at today's spec.costs, so raising a cap or changing a
        price takes effect at the next reconcile."""
        p, status = self.p, self.p.status
        used = add([status.usage or Usage()], p.job.spec.costs)
        reached = budget_exhausted(p.job.spec.budget, used)
        was = next((c for c in status.conditions if c.type == ConditionType.BUDGET_EXHAUSTED), None)
        if reached is None:
            if was is not None and was.status == "True":
                message = "within spec.budget again"
                set_condition(
                    status,
                    ConditionType.BUDGET_EXHAUSTED,
                    False,
                    Reason.WITHIN_BUDGET,
                    message,
                    p.generation,
                    p.now,
                )
            return True
        if was is None or was.status != "True":
            p.events.append(("Warning", EventReason.BUDGET_EXHAUSTED, reached))
        set_condition(
            status,
            ConditionType.BUDGET_EXHAUSTED,
            True,
            Reason.BUDGET_EXHAUSTED,
            reached,
            p.generation,
            p.now,
        )
        p.ready(False, Reason.BUDGET_EXHAUSTED, reached)
        return False

    async def _sync_suspend(self, k8s_job: dict[str, Any], suspend: bool) -> None:
        """Suspend a running Job with the TAOJob, and resume only the Jobs this operator suspended.

        A Job in a Kueue queue is stopped through its Workload (`_sync_workloads`): Kueue unsuspends an admitted
        Job it finds suspended, so a patch of `spec.suspend` would be undone.
        """
        meta = k8s_job["metadata"]
        ours = (meta.get("annotations") or {}).get(ANNOTATION_SUSPENDED_BY_OPERATOR) == "true"
        is_suspended = bool((k8s_job.get("spec") or {}).get("suspend"))
        if (suspend and ours and is_suspended) or (not suspend and not ours) or not meta.get("uid"):
            return  # as wanted (the common case: no read); or just created, handled on the next pass
        if suspend and not ours and is_suspended and not _queued(meta):
            return  # suspended by someone else (a queue manager): theirs to resume
        ns, name = meta["namespace"], meta["name"]
        mark = {"annotations": {ANNOTATION_SUSPENDED_BY_OPERATOR: "true" if suspend else None}}
        workloads = await self._sync_workloads(k8s_job, suspend) if _queued(meta) else None
        if workloads:
            await self.cluster.patch("jobs", ns, name, {"metadata": mark})
            what = (
                f"Job {name} (Kueue Workload {', '.join(workloads)} {'deactivated' if suspend else 'active'})"
            )
        else:
            await self.cluster.patch("jobs", ns, name, {"metadata": mark, "spec": {"suspend": suspend}})
            what = f"Job {name}"
        if suspend != ours:
            self.p.events.append(
                ("Normal", EventReason.JOB_SUSPENDED if suspend else EventReason.JOB_RESUMED, what)
            )

    async def _sync_workloads(self, k8s_job: dict[str, Any], suspend: bool) -> list[str] | None:
        """Deactivate (or reactivate) the Kueue Workloads of a queued Job: Kueue then evicts it, suspends the Job
        and releases its quota, and keeps it so until `spec.active` is true again, when it queues it for
        admission and unsuspends it (Kueue's jobframework reconciler; `kubectl patch workload` does the same).
        The Workload names, or None when Kueue is not installed or has made none for this Job yet."""
        meta = k8s_job["metadata"]
        selector = {LABEL_KUEUE_JOB_UID: str(meta["uid"])}
        try:
            found = await self.cluster.list("workloads", meta["namespace"], selector)
        except ApiError as e:
            if e.status == 404:  # no Kueue API here: the Job is an ordinary one
                return None
            raise
        for wl in found:
            if ((wl.get("spec") or {}).get("active", True) is not False) == suspend:
                patch = {"spec": {"active": not suspend}}
                await self.cluster.patch("workloads", meta["namespace"], wl["metadata"]["name"], patch)
        return [wl["metadata"]["name"] for wl in found] or None

    async def stop_unplanned(self, last_round: int | None) -> None:
        """Suspend the running Jobs of rounds no longer planned (`rounds` lowered while one ran)."""
        if last_round is None:
            return
        p = self.p
        for rnd in p.status.rounds:
            if rnd.round <= last_round:
                continue
            for st in rnd.stages:
                if st.state != "Running" or st.job is None:
                    continue
                live = await self.cluster.get("jobs", p.job.metadata.namespace, st.job)
                if (
                    live is not None
                    and foreign(live, p.job.metadata.uid) is None
                    and job_outcome(live) is None
                ):
                    # Suspended, not deleted: raising spec.rounds again resumes it where it was.
                    await self._sync_suspend(live, True)


def _queued(meta: dict[str, Any]) -> bool:
    return bool((meta.get("labels") or {}).get(LABEL_KUEUE_QUEUE))


def round_spec(spec: LoopSpec, rnd: RoundStatus, stage: str) -> LoopSpec:
    """The spec a round's stages run on: `evaluation` and `scoring` as recorded when its first stage was
    created (recorded now if not yet: this is its first stage, or a retry cleared the record)."""
    if stage in WAITING_STAGES:
        return spec
    if rnd.spec is None or rnd.spec.values is None:
        digest, values = round_snapshot(spec)
        rnd.spec = RoundSpec(digest=digest, values=values)
        return spec
    return on_snapshot(spec, rnd.spec.values)


def _failed(action: RunStage, message: str) -> Any:
    from tao_trainer.contract import StageResult

    return StageResult(stage=action.stage, round=action.round, ok=False, message=message)

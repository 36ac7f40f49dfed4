"""Pure status bookkeeping for the operator: results <-> TAOJob status, conditions, phase.

The status is the operator's only memory: stage results are recorded in `status.rounds[].stages`, and the plan
reads them back with `results_from_status`. Nothing here talks to the API server.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

from tao_operator.api import (
    ANNOTATION_ADAPTER_URI,
    ANNOTATION_COMPLETION_INDEX,
    ANNOTATION_MODEL_URI,
    ChampionStatus,
    Condition,
    ConditionType,
    Phase,
    PreflightStatus,
    Reason,
    RoundStatus,
    StageStatus,
    TAOJobStatus,
)
from tao_operator.gate_status import GuardStatus, RoundGate
from tao_operator.plan import Results, RunStage, side_metrics
from tao_operator.usage import Usage, add, stage_usage
from tao_trainer.contract import StageResult
from tao_trainer.spec import ALL_STAGES, CostsSpec

STAGE_PHASE: dict[str, Phase] = {
    "preflight": "Preflight",
    "watch": "Watching",
    "prepare": "Generating",
    "generate": "Generating",
    "score": "Scoring",
    "train": "Training",
    "evaluate": "Evaluating",
}


# Ready's reason -> the phase shown in printer columns and metrics. While a stage runs, the reason is its phase.
_READY_REASON_PHASE: dict[str, Phase] = {
    # Not terminal: the run starts (or goes on) once the spec is fixed; the Degraded condition says what is wrong.
    Reason.INVALID_SPEC: "Pending",
    Reason.STAGE_FAILED: "Failed",
    Reason.SUCCEEDED: "Succeeded",
    Reason.ROLLING_OUT: "RollingOut",
    Reason.SUSPENDED: "Suspended",
    Reason.BUDGET_EXHAUSTED: "BudgetExhausted",
    **{phase: phase for phase in STAGE_PHASE.values()},
}


def derive_phase(status: TAOJobStatus) -> Phase:
    """The phase, from the Ready condition alone: conditions are the truth, the phase is their summary.

    >>> st = TAOJobStatus()
    >>> derive_phase(st)
    'Pending'
    >>> _ = set_condition(st, ConditionType.READY, False, "Training", "round 1: train", 1, "t0")
    >>> derive_phase(st)
    'Training'
    >>> _ = set_condition(st, ConditionType.READY, False, Reason.STAGE_FAILED, "boom", 1, "t1")
    >>> derive_phase(st)
    'Failed'
    """
    ready = next((c for c in status.conditions if c.type == ConditionType.READY), None)
    if ready is None:
        return "Pending"
    return _READY_REASON_PHASE[ready.reason]


def results_from_status(status: TAOJobStatus) -> Results:
    """What the plan needs from status: which stages finished, how, and which rounds were promoted.

    Rounds pruned from status (`prunedRounds`, see `prune_history`) were all complete: each stage of them reads
    as succeeded, and the champion's round, if pruned, as promoted (later promoted rounds are still listed).

    >>> st = TAOJobStatus(pruned_rounds=2, champion={"round": 1, "uri": "s3://m/1"})
    >>> res = results_from_status(st)
    >>> res[(1, "evaluate")].promoted, res[(2, "evaluate")].promoted, res[(2, "train")].ok
    (True, False, True)
    """
    results: Results = {}
    champion_round = status.champion.round if status.champion is not None else 0
    for r in range(1, status.pruned_rounds + 1):
        for stage in ALL_STAGES:
            results[(r, stage)] = StageResult(
                stage=stage,
                round=r,
                promoted=(r == champion_round) if stage == "evaluate" else None,
            )
    for rnd in status.rounds:
        for st in rnd.stages:
            if st.state == "Running":
                continue
            results[(rnd.round, st.stage)] = StageResult(
                stage=st.stage,  # type: ignore[arg-type]
                round=rnd.round,
                ok=st.state == "Succeeded",
                message=st.message,
                promoted=rnd.promoted if st.stage == "evaluate" else None,
            )
    return results


def round_status(status: TAOJobStatus, round_: int) -> RoundStatus:
    for rnd in status.rounds:
        if rnd.round == round_:
            return rnd
    rnd = RoundStatus(round=round_)
    status.rounds.append(rnd)
    status.rounds.sort(key=lambda r: r.round)
    return rnd


def stage_status(rnd: RoundStatus, stage: str) -> StageStatus | None:
    return next((s for s in rnd.stages if s.stage == stage), None)


def mark_running(status: TAOJobStatus, action: RunStage, job_name: str, now: str) -> bool:
    """Record that a stage's Job exists; False when it was already recorded (no transition)."""
    rnd = round_status(status, action.round)
    if stage_status(rnd, action.stage) is not None:
        return False
    rnd.stages.append(StageStatus(stage=action.stage, state="Running", job=job_name, started_at=now))
    return True


def aggregate(stage: str, round_: int, results: Iterable[StageResult]) -> StageResult:
    """One result for a stage from its pods' results (an Indexed Job has one per shard).

    Counts add up; a metric is averaged weighted by the pods' candidate counts; any failure fails the stage.

    >>> a = StageResult(stage="score", round=1, counts={"candidates": 30}, metrics={"meanScore": 1.0})
    >>> b = StageResult(stage="score", round=1, counts={"candidates": 10}, metrics={"meanScore": 0.0})
    >>> aggregate("score", 1, [a, b]).metrics, aggregate("score", 1, [a, b]).counts
    ({'meanScore': 0.75}, {'candidates': 40})
    """
    results = list(results)
    if len(results) == 1:
        return results[0]
    counts: dict[str, int] = {}
    weighted: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        for k, n in r.counts.items():
            counts[k] = counts.get(k, 0) + n
        weight: float = r.counts.get("candidates", r.counts.get("prompts", 1)) or 1
        for k, value in r.metrics.items():
            if value is not None:
                weighted.setdefault(k, []).append((value, weight))
    metrics: dict[str, float | None] = {
        k: round(sum(v * w for v, w in vals) / sum(w for _, w in vals), 4) for k, vals in weighted.items()
    }
    failed = [r for r in results if not r.ok]
    return StageResult(
        stage=stage,  # type: ignore[arg-type]
        round=round_,
        ok=not failed,
        message="; ".join(r.message for r in failed) if failed else "",
        counts=counts,
        metrics=metrics,
        outputs=results[0].outputs if results else {},
        promoted=results[0].promoted if results else None,
        duration_seconds=max((r.duration_seconds for r in results), default=0.0),
    )


def parse_termination_message(
    stage: str, round_: int, pod_name: str, message: str | None, exit_code: int | None
) -> StageResult:
    """A pod's StageResult from its termination message; a pod that died without one still yields a result."""
    if message:
        try:
            return StageResult.model_validate(json.loads(message))
        except (ValueError, TypeError):
            pass
    return StageResult(
        stage=stage,  # type: ignore[arg-type]
        round=round_,
        ok=exit_code == 0,
        message=f"pod {pod_name} exited with code {exit_code}: {(message or 'no termination message')[:500]}",
    )


def record_result(
    status: TAOJobStatus, result: StageResult, now: str, costs: CostsSpec | None = None
) -> None:
    """Copy a finished stage's summary into the round's history, and its use into the round's and the run's
    (priced at `costs`)."""
    rnd = round_status(status, result.round)
    st = stage_status(rnd, result.stage)
    if st is None:
        st = StageStatus(stage=result.stage, state="Running")
        rnd.stages.append(st)
    if st.state == "Running":  # counted once, however often the same finished stage is recorded
        used = stage_usage(result)
        rnd.usage = add([rnd.usage or Usage(), used], costs)
        status.usage = add([status.usage or Usage(), used], costs)
    st.state = "Succeeded" if result.ok else "Failed"
    st.finished_at = now
    st.message = result.message[:1000]
    if result.stage == "preflight" and "signal" in result.metrics:
        # Recorded whether or not it stopped the run: "no signal" is the finding the user needs to see.
        status.preflight = PreflightStatus(
            signal=result.metrics["signal"] == 1.0,
            informative_share=result.metrics.get("informativeShare"),
            mean_spread=result.metrics.get("meanSpread"),
            unscored_share=result.metrics.get("unscoredShare"),
            verdict=result.message[:1000],
            report=result.outputs.get("report"),
        )
    if not result.ok:
        return
    if result.stage == "prepare":
        rnd.prompts = result.counts.get("prompts")
    elif result.stage == "generate":
        rnd.candidates = result.counts.get("candidates")
    elif result.stage == "score":
        rnd.mean_score = result.metrics.get("meanScore")
    elif result.stage == "train":
        rnd.train_examples = result.counts.get("examples")
        rnd.train_loss = result.metrics.get("trainLoss")
        rnd.model_uri = result.outputs.get("model")
    elif result.stage == "evaluate":
        rnd.champion = side_metrics(result.metrics, "champion")
        rnd.challenger = side_metrics(result.metrics, "challenger")
        rnd.promoted = bool(result.promoted)
        rnd.verdict = result.message[:1000]
        rnd.export_uri = result.outputs.get("export")
        m = result.metrics
        guard_names = sorted({k.split(".")[1] for k in m if k.startswith("guard.") and k.count(".") == 2})
        rnd.gate = RoundGate(
            reason=result.outputs.get("reason", "promoted" if result.promoted else "not-better"),
            estimate=m.get("delta"),
            lower=m.get("gate.lower"),
            upper=m.get("gate.upper"),
            confidence=m.get("gate.confidence"),
            differing=result.counts.get("wins", 0) + result.counts.get("losses", 0),
            guards=[
                GuardStatus(
                    name=g,
                    change=m.get(f"guard.{g}.change"),
                    lower=m.get(f"guard.{g}.lower"),
                    passed=m.get(f"guard.{g}.pass") != 0.0,
                    uses_labels=m.get(f"guard.{g}.labels") == 1.0,
                )
                for g in guard_names
            ],
        )


def prune_history(status: TAOJobStatus, keep: int) -> int:
    """Keep the latest `keep` rounds in status (etcd objects must stay small; a continuous TAOJob runs
    rounds for months); older complete rounds are dropped and counted in `prunedRounds`. Their full
    records stay in storage (history.jsonl and each round's reports). Returns how many were dropped.

    >>> st = TAOJobStatus(rounds=[RoundStatus(round=r, promoted=True) for r in (1, 2, 3)])
    >>> prune_history(st, 2), [r.round for r in st.rounds], st.pruned_rounds
    (1, [2, 3], 1)
    """
    ordered = sorted(status.rounds, key=lambda rnd: rnd.round)
    drop = ordered[: max(0, len(ordered) - keep)]
    # Only a prefix of complete rounds may go: results_from_status treats every pruned round as complete.
    dropped = 0
    for rnd in drop:
        if rnd.round != status.pruned_rounds + 1 or rnd.promoted is None:
            break
        status.pruned_rounds += 1
        dropped += 1
    status.rounds = ordered[dropped:]
    return dropped


def set_condition(
    status: TAOJobStatus, type_: str, state: bool, reason: str, message: str, generation: int | None, now: str
) -> bool:
    """Upsert a condition; lastTransitionTime moves only when the status value flips (metav1 semantics). True
    when the condition says something new (another status, reason or message), e.g. to post an event once.

    >>> st = TAOJobStatus()
    >>> set_condition(st, "Ready", False, "Training", "", 1, "t0")
    True
    >>> set_condition(st, "Ready", False, "Evaluating", "", 1, "t1")
    True
    >>> st.conditions[0].reason, st.conditions[0].last_transition_time
    ('Evaluating', 't0')
    >>> set_condition(st, "Ready", False, "Evaluating", "", 1, "t2")
    False
    >>> set_condition(st, "Ready", True, "Succeeded", "", 1, "t2")
    True
    >>> len(st.conditions), st.conditions[0].last_transition_time
    (1, 't2')
    """
    value: Literal["True", "False"] = "True" if state else "False"
    previous = next((cond for cond in status.conditions if cond.type == type_), None)
    condition = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message[:1000],
        last_transition_time=previous.last_transition_time if previous and previous.status == value else now,
        observed_generation=generation,
    )
    if previous is None:
        status.conditions.append(condition)
        return True
    status.conditions[status.conditions.index(previous)] = condition
    return (previous.status, previous.reason, previous.message) != (value, reason, condition.message)


def dump(status: TAOJobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


# The status keys this operator owns (kopf or other tools may keep bookkeeping of their own beside them).
STATUS_KEYS = frozenset(f.alias or n for n, f in TAOJobStatus.model_fields.items())


def own_status(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k in STATUS_KEYS}


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """An RFC 7386 JSON merge patch turning `old` into `new` (None deletes a key).

    >>> merge_patch({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}, {"a": 1, "b": {"c": 4}, "e": [2]})
    {'b': {'d': None, 'c': 4}, 'e': [2]}
    """
    patch: dict[str, Any] = {k: None for k in old if k not in new}
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(old.get(k), dict):
            sub = merge_patch(old[k], v)
            if sub:
                patch[k] = sub
        elif old.get(k, object()) != v:
            patch[k] = v
    return patch


# --------------------------------------------------------------------------------------------- observed children


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
            index = (pod["metadata"].get("annotations") or {}).get(ANNOTATION_COMPLETION_INDEX, "0")
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


def champion_text(status: TAOJobStatus) -> str:
    if status.champion is None or status.champion.round == 0:
        return "no round beat the base model"
    return f"champion: round {status.champion.round}"


def champion_status(status: TAOJobStatus, round_: int, uri: str) -> ChampionStatus:
    """The champion with its held-out score as its winning round (or round 1, for the base) measured it."""
    score = None
    for r in status.rounds:
        if r.round == round_ and r.challenger:
            score = r.challenger.get("score")
    if round_ == 0 and status.rounds and status.rounds[0].champion:
        score = status.rounds[0].champion.get("score")
    return ChampionStatus(round=round_, uri=uri, score=score)


def served_uri(deployment: dict[str, Any]) -> str | None:
    """The round's model a serving Deployment's pods serve (recorded on the pod template): the LoRA adapter when
    one is served over the base, else the model itself."""
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get(ANNOTATION_ADAPTER_URI) or annotations.get(ANNOTATION_MODEL_URI)


def deployment_available(deployment: dict[str, Any] | None) -> bool:
    """Every wanted replica updated and available, as of the Deployment's current generation."""
    if deployment is None:
        return False
    st = deployment.get("status") or {}
    want = deployment["spec"].get("replicas", 1)
    return (
        st.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
        and st.get("updatedReplicas", 0) >= want
        and st.get("availableReplicas", 0) >= want
    )

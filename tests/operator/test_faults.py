"""The operator under faults: the real Reconciler against an in-memory API server (tests/fake_cluster.py).

Every case ends correctly: a crash before and after each API call the operator makes, a 409, 422 and 500 on
each write, and each scenario of issue 14 (stale children, lost results, serving drift, mid-run edits, errors
in status, disruptions, retries; Kueue in test_kueue.py, per-round spec snapshots in test_snapshot.py). Counts
are summed in `test_fault_matrix` and listed in docs/kubernetes.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_cluster import Fault, pod, settle, stage_result
from taojob_rig import DEFAULTS, baseline, comparable, condition, drive, setup, state, taojob

from tao_trainer.contract import StageResult

WRITES = [
    ("create", "jobs"),
    ("create", "configmaps"),
    ("patch", "taojobs/status"),
    ("create", "deployments"),
]
WRITES += [("create", "services")]


def test_fault_matrix() -> None:
    """A crash before and after every call, and a 409, 422 and 500 on every write, at each of its occurrences
    in a fault-free two-round run: every run ends Succeeded with the same status and no Job created twice."""
    clean, want = baseline()
    calls = list(dict.fromkeys(clean.log))
    faults = [Fault(c, n, when) for c in calls for n in range(clean.calls[c]) for when in ("before", "after")]
    faults += [
        Fault(c, n, "error", status)
        for c in WRITES
        for n in range(clean.calls[c])
        for status in (409, 422, 500)
        if not (status == 409 and c[0] == "patch")
    ]
    faults += [
        Fault(("patch", "taojobs/status"), n, "error", 409)
        for n in range(clean.calls[("patch", "taojobs/status")])
    ]
    survived = []
    for fault in faults:
        cluster, rec, _ = setup()
        cluster.faults = [fault]
        phase = asyncio.run(drive(cluster, rec))
        ok = (
            phase == "Succeeded"
            and comparable(state(cluster)) == want
            and set(cluster.created.values()) == {1}
            and set(cluster.jobs()) == set(clean.jobs())
        )
        survived.append(ok or fault)
    lost = [f for f in survived if f is not True]
    print(f"\nfault matrix: injected {len(faults)} / survived {len(faults) - len(lost)}")
    assert not lost, lost[:5]
    assert len(faults) > 100


# ------------------------------------------------------------------------------- 1. children are owned


def test_a_recreated_taojob_adopts_nothing_of_its_predecessor() -> None:
    old, _ = baseline()  # a finished run; then `kubectl delete --cascade=orphan` and a new TAOJob, same name
    cluster, rec, events = setup(taojob(uid="new-uid"))
    cluster.objects.update({k: v for k, v in old.objects.items() if k[0] != "taojobs"})
    # A pod posing as the evaluate Job's, with a crafted result, is never read either.
    fake = pod(
        {"metadata": {"name": "arith-r1-evaluate"}}, 0, '{"stage":"evaluate","round":1,"promoted":true}'
    )
    cluster.put("pods", fake)
    asyncio.run(drive(cluster, rec, passes=5))
    degraded = condition(cluster, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "Conflict")
    assert "Job arith-r1-prepare" in degraded["message"]
    assert state(cluster)["phase"] not in ("Succeeded", "Failed") and not cluster.created
    assert any(r == "Conflict" for _, r, _ in events)
    # The user removes the orphans: the new TAOJob runs its own children from the start.
    for key in [k for k in cluster.objects if k[0] in ("jobs", "configmaps", "deployments", "services")]:
        del cluster.objects[key]
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"
    assert condition(cluster, "Degraded")["status"] == "False"
    assert all(j["metadata"]["ownerReferences"][0]["uid"] == "new-uid" for j in cluster.jobs().values())


def test_an_object_being_deleted_is_waited_for() -> None:
    cluster, rec, _ = setup()
    stale = taojob()["metadata"] | {"name": "arith-r1-prepare", "deletionTimestamp": "now", "uid": "x"}
    cluster.objects[("jobs", "default", "arith-r1-prepare")] = {"kind": "Job", "metadata": stale, "spec": {}}
    asyncio.run(drive(cluster, rec, passes=3))
    assert condition(cluster, "Degraded")["reason"] == "WaitingForDeletion"
    cluster.delete("jobs", "arith-r1-prepare")
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"


# ------------------------------------------------------------------------------- 2. no result is lost


def test_pods_collected_before_they_were_read_rerun_as_a_new_attempt() -> None:
    cluster, rec, events = setup()
    # The first attempt of every stage loses its pods before they are read (PodGC); new attempts keep theirs.
    phase = asyncio.run(drive(cluster, rec, keep_pods=lambda name: name.endswith("-a2")))
    assert phase == "Succeeded", state(cluster).get("message")
    stages = [s for r in state(cluster)["rounds"] for s in r["stages"]]
    assert all(s["state"] == "Succeeded" and s["attempt"] == 2 for s in stages)
    assert "arith-r1-train-a2" in cluster.jobs()
    assert any(r == "ResultMissing" for _, r, _ in events)


def test_a_deleted_running_job_is_a_missing_result_not_a_failure() -> None:
    cluster, rec, _ = setup()
    asyncio.run(rec.reconcile("default", "arith"))
    cluster.delete("jobs", "arith-r1-prepare")
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"
    assert "arith-r1-prepare-a2" in cluster.jobs()


# ------------------------------------------------------------------------------- 3. errors reach status


def test_a_lasting_422_on_job_create_is_a_condition_not_a_silent_retry() -> None:
    cluster, rec, _ = setup()
    cluster.faults = [Fault(("create", "jobs"), 0, "error", 422, times=10**6)]
    asyncio.run(drive(cluster, rec, passes=3))
    degraded = condition(cluster, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ApiError") and "422" in degraded["message"]
    st = state(cluster)
    assert st["phase"] != "Failed" and st["observedGeneration"] == 1


def test_a_pod_stuck_on_its_image_is_named() -> None:
    cluster, rec, _ = setup()
    asyncio.run(rec.reconcile("default", "arith"))
    job = cluster.jobs()["arith-r1-prepare"]
    stuck = pod(job, 0, "")
    stuck["status"] = {
        "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff", "message": "x"}}}]
    }
    cluster.put("pods", stuck)
    asyncio.run(rec.reconcile("default", "arith"))
    degraded = condition(cluster, "Degraded")
    assert degraded["reason"] == "PodStuck" and stuck["metadata"]["name"] in degraded["message"]
    assert state(cluster)["phase"] == "Generating"


def test_an_invalid_edit_is_not_a_failure_and_generation_is_observed() -> None:
    cluster, rec, _ = setup()
    asyncio.run(rec.reconcile("default", "arith"))
    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["generation"] = {"candidates": 0}
    doc["metadata"]["generation"] = 2
    asyncio.run(rec.reconcile("default", "arith"))
    st = state(cluster)
    assert st["phase"] != "Failed" and st["observedGeneration"] == 2
    assert condition(cluster, "Degraded")["reason"] == "InvalidSpec"


# ------------------------------------------------------------------------------- 4. edits: applied or refused


def test_an_edit_that_would_break_the_run_is_refused_and_reverting_it_continues() -> None:
    cluster, rec, _ = setup()
    asyncio.run(rec.reconcile("default", "arith"))
    settle(cluster)
    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["generation"] = {"shards": 1}
    doc["spec"]["prompts"]["heldOutFraction"] = 0.5
    doc["metadata"]["generation"] = 2
    for _ in range(3):
        asyncio.run(rec.reconcile("default", "arith"))
        settle(cluster)
    degraded = condition(cluster, "Degraded")
    assert degraded["reason"] == "EditRefused"
    assert "spec.generation" in degraded["message"] and "spec.prompts" in degraded["message"]
    assert set(cluster.jobs()) == {"arith-r1-prepare"} and state(cluster)["observedGeneration"] == 2
    doc["spec"]["generation"] = {"shards": 2}
    del doc["spec"]["prompts"]["heldOutFraction"]
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"


def test_lowering_rounds_suspends_the_running_job_of_a_dropped_round() -> None:
    cluster, rec, _ = setup()
    doc = cluster.objects[("taojobs", "default", "arith")]
    for _ in range(8):  # round 1 done, round 2's prepare started
        asyncio.run(rec.reconcile("default", "arith"))
        if "arith-r2-prepare" in cluster.jobs():
            break
        settle(cluster)
    doc["spec"]["rounds"] = 1
    asyncio.run(rec.reconcile("default", "arith"))
    assert cluster.jobs()["arith-r2-prepare"]["spec"]["suspend"] is True
    assert state(cluster)["phase"] in ("Succeeded", "RollingOut")


def test_serving_follows_every_edit_and_disabling_scales_to_zero() -> None:
    cluster, rec, _ = setup()
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"
    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["serving"] = {"replicas": 3, "port": 9000, "args": ["--max-model-len", "512"]}
    asyncio.run(drive(cluster, rec))
    dep = cluster.objects[("deployments", "default", "arith-serve")]
    svc = cluster.objects[("services", "default", "arith-serve")]
    assert (
        dep["spec"]["replicas"] == 3
        and "--max-model-len" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert svc["spec"]["ports"][0]["port"] == 9000 and ":9000/" in state(cluster)["serving"]["url"]
    # A finished TAOJob's pass writes nothing (no re-POSTed Service).
    cluster.calls.clear()
    asyncio.run(rec.reconcile("default", "arith"))
    assert not [c for c in cluster.calls if c[0] in ("create", "patch")]
    doc["spec"]["serving"]["enabled"] = False
    asyncio.run(drive(cluster, rec))
    assert cluster.objects[("deployments", "default", "arith-serve")]["spec"]["replicas"] == 0
    assert "serving" not in state(cluster) and condition(cluster, "Serving")["reason"] == "Disabled"


# ------------------------------------------------------------------------------- 6, 8: retry, locks, disruptions (7, Kueue: test_kueue.py)


def test_a_failed_taojob_is_final_until_a_retry_is_asked_for() -> None:
    cluster, rec, events = setup()

    def failing_train(job: dict[str, Any]) -> StageResult:
        labels = job["metadata"]["labels"]
        stage, round_ = labels["tao.dev/stage"], int(labels["tao.dev/round"])
        if stage == "train" and round_ == 2:
            return StageResult(stage="train", round=2, ok=False, message="CUDA out of memory")
        return stage_result("arith", stage, round_)

    assert asyncio.run(drive(cluster, rec, result_for=failing_train)) == "Failed"
    jobs_then = set(cluster.jobs())
    asyncio.run(drive(cluster, rec, passes=5))
    assert set(cluster.jobs()) == jobs_then  # nothing re-created on its own (kubeflow/trainer#3737)
    cluster.objects[("taojobs", "default", "arith")]["metadata"]["annotations"] = {"tao.dev/retry": "1"}
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"
    assert "arith-r2-train-a2" in cluster.jobs() and set(cluster.created.values()) == {1}
    train = next(s for s in state(cluster)["rounds"][1]["stages"] if s["stage"] == "train")
    assert train["attempt"] == 2 and state(cluster)["retry"] == 1
    assert any(r == "Retry" for _, r, _ in events)
    assert not rec.locks and not rec.waiting  # the lock map holds only work in flight


def test_the_stage_job_ignores_disruptions() -> None:
    from tao_operator.api import parse_taojob
    from tao_operator.builders import stage_job
    from tao_trainer.contract import StageConfig

    job = parse_taojob(taojob())
    cfg = StageConfig(
        stage="train", round=1, run_uri="file:///r", model_uri="file:///b", spec=job.spec.loop()
    )
    rules = stage_job(job, cfg, DEFAULTS)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "Ignore" and rules[0]["onPodConditions"][0]["type"] == "DisruptionTarget"


@pytest.mark.parametrize("message", ["很" * 3000, "x" * 10000])
def test_a_big_result_keeps_what_the_plan_needs(message: str) -> None:
    from tao_trainer.cli import RESULT_LIMIT, compact

    metrics: dict[str, float | None] = {
        f"judge-with-a-rather-long-name-{i}.{side}.score": 0.5 for i in range(7) for side in ("a", "b")
    }
    big = StageResult(
        stage="evaluate",
        round=3,
        promoted=True,
        message=message,
        metrics=metrics,
        outputs={"report": "s3://bucket/" + "r" * 200},
    )
    text = compact(big)
    back = StageResult.model_validate_json(text)
    assert len(text.encode()) <= RESULT_LIMIT
    assert (back.promoted, back.round, back.stage, back.outputs) == (True, 3, "evaluate", big.outputs)

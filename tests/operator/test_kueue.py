"""Suspending a TAOJob whose stage Jobs go through a Kueue queue (issue 14, scenario 7).

`FakeKueue` plays Kueue's job reconciler for batch Jobs (pkg/controller/jobframework/reconciler.go): it makes a
Workload per queued Job, admits it at once (quota is plenty), evicts a Workload whose `spec.active` is false (the
Job is suspended and the quota released), and, as its step 7, unsuspends an admitted Workload's Job that it finds
suspended. Against it, a plain `spec.suspend: true` patch of a running stage Job is undone; the operator's
suspension (the Workload deactivated) holds, and resuming restarts the Job.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import kopf
from fake_cluster import Crash, FakeCluster, Fault, settle
from taojob_rig import DEFAULTS, check_calls, condition, setup, state, taojob

from tao_operator.cluster import ApiError
from tao_operator.reconciler import Reconciler

QUEUE = {"pods": {"default": {"labels": {"kueue.x-k8s.io/queue-name": "gpu"}}}}


class FakeKueue:
    """Kueue for batch Jobs with a queue-name label, instantly: what the operator must not fight."""

    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.unsuspended: list[str] = []  # Jobs it unsuspended because their Workload was admitted
        self.evicted: list[str] = []  # Jobs it suspended because their Workload was deactivated

    def workload(self, job: dict[str, Any]) -> dict[str, Any] | None:
        uid = job["metadata"]["uid"]
        return next(
            (
                o
                for (r, _, _), o in self.cluster.objects.items()
                if r == "workloads" and o["metadata"]["labels"]["kueue.x-k8s.io/job-uid"] == uid
            ),
            None,
        )

    def step(self) -> None:
        for name, job in self.cluster.jobs().items():
            meta, spec = job["metadata"], job["spec"]
            if not (meta.get("labels") or {}).get("kueue.x-k8s.io/queue-name"):
                continue
            if (job.get("status") or {}).get("conditions"):
                continue  # finished: Kueue marks the Workload finished and leaves the Job alone
            wl = self.workload(job)
            if wl is None:  # its webhook suspends a new queued Job; the reconciler makes its Workload
                spec["suspend"] = True
                wl = self.cluster.put(
                    "workloads",
                    {
                        "kind": "Workload",
                        "metadata": {
                            "name": f"job-{name}-{meta['uid'][:5]}",
                            "labels": {"kueue.x-k8s.io/job-uid": meta["uid"]},
                            "ownerReferences": [{"kind": "Job", "uid": meta["uid"], "controller": True}],
                        },
                        "spec": {"queueName": "gpu"},
                        "status": {},
                    },
                )
            status = wl.setdefault("status", {})
            if wl["spec"].get("active", True) is False:
                if status.get("admission") is not None or not spec.get("suspend"):
                    status["admission"] = None  # evicted (Deactivated): quota released, Job stopped
                    spec["suspend"] = True
                    self.evicted.append(name)
                continue
            status["admission"] = {"clusterQueue": "gpu"}  # admitted at once
            if spec.get("suspend"):  # step 7: an admitted Workload's Job is started
                spec["suspend"] = False
                self.unsuspended.append(name)


def running_stage(cluster: FakeCluster, kueue: FakeKueue) -> dict[str, Any]:
    """Reconcile once: round 1's first stage Job is created, queued, admitted and running (not finished)."""
    rec = Reconciler(cluster, DEFAULTS, post_event=lambda *_: None)
    asyncio.run(rec.reconcile("default", "arith"))
    kueue.step()
    job = cluster.jobs()["arith-r1-prepare"]
    assert job["spec"]["suspend"] is False and kueue.workload(job) is not None
    return job


def test_a_plain_suspend_patch_is_undone_by_kueue() -> None:
    """Why the operator does not patch a queued Job's spec.suspend: Kueue starts an admitted Job again."""
    cluster, _, _ = setup(taojob(**QUEUE))
    kueue = FakeKueue(cluster)
    job = running_stage(cluster, kueue)
    asyncio.run(cluster.patch("jobs", "default", job["metadata"]["name"], {"spec": {"suspend": True}}))
    kueue.step()
    assert cluster.jobs()["arith-r1-prepare"]["spec"]["suspend"] is False
    assert kueue.unsuspended == ["arith-r1-prepare", "arith-r1-prepare"]  # admitted, then undone


def test_suspending_deactivates_the_workload_which_holds_and_resuming_restarts_the_job() -> None:
    cluster, rec, events = setup(taojob(**QUEUE))
    kueue = FakeKueue(cluster)
    asyncio.run(rec.reconcile("default", "arith"))
    kueue.step()
    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["suspend"] = True
    for _ in range(4):  # the operator, Kueue and the Job controller, several times over
        asyncio.run(rec.reconcile("default", "arith"))
        kueue.step()
        settle(cluster)
    job = cluster.jobs()["arith-r1-prepare"]
    wl = kueue.workload(job)
    assert wl is not None and wl["spec"]["active"] is False and wl["status"]["admission"] is None
    assert job["spec"]["suspend"] is True and not job["status"].get("conditions")  # stopped, not finished
    assert kueue.unsuspended == ["arith-r1-prepare"] and kueue.evicted == ["arith-r1-prepare"]  # no fight
    assert set(cluster.jobs()) == {"arith-r1-prepare"} and state(cluster)["phase"] == "Suspended"
    assert any(r == "JobSuspended" and "deactivated" in m for _, r, m in events)
    # Passes while suspended read nothing more once Kueue has stopped the Job.
    cluster.calls.clear()
    asyncio.run(rec.reconcile("default", "arith"))
    assert not cluster.calls[("list", "workloads")] and not cluster.calls[("patch", "workloads")]

    doc["spec"]["suspend"] = False
    for _ in range(40):
        asyncio.run(rec.reconcile("default", "arith"))
        kueue.step()
        settle(cluster)
        if state(cluster).get("phase") == "Succeeded":
            break
    assert state(cluster)["phase"] == "Succeeded"
    assert kueue.workload(cluster.jobs()["arith-r1-prepare"])["spec"]["active"] is True
    assert "tao.dev/suspended-by-operator" not in (
        cluster.jobs()["arith-r1-prepare"]["metadata"].get("annotations") or {}
    )
    assert set(cluster.created.values()) == {1}  # resumed, not re-created
    assert any(r == "JobResumed" for _, r, _ in events)
    check_calls(cluster)


def test_a_suspended_taojob_keeps_a_queued_job_from_being_admitted() -> None:
    """A Job still waiting in the queue (suspended by Kueue's webhook, not admitted) is not ours to resume,
    but its Workload is deactivated so that Kueue does not start it while the TAOJob is suspended."""
    cluster, rec, _ = setup(taojob(**QUEUE))
    kueue = FakeKueue(cluster)
    asyncio.run(rec.reconcile("default", "arith"))
    job = cluster.jobs()["arith-r1-prepare"]
    job["spec"]["suspend"] = True  # the webhook's suspension; Kueue has made its Workload, not admitted it
    kueue.step()
    wl = kueue.workload(job)
    assert wl is not None
    wl["status"]["admission"] = None
    job["spec"]["suspend"] = True
    cluster.objects[("taojobs", "default", "arith")]["spec"]["suspend"] = True
    asyncio.run(rec.reconcile("default", "arith"))
    assert wl["spec"]["active"] is False
    kueue.step()
    assert cluster.jobs()["arith-r1-prepare"]["spec"]["suspend"] is True


def test_without_kueue_installed_a_queued_job_is_suspended_directly() -> None:
    """A queue-name label where no Kueue API exists (404 on Workloads): the Job is an ordinary one."""
    cluster, rec, _ = setup(taojob(**QUEUE))
    asyncio.run(rec.reconcile("default", "arith"))
    cluster.faults = [Fault(("list", "workloads"), 0, "error", 404, times=10**6)]
    cluster.objects[("taojobs", "default", "arith")]["spec"]["suspend"] = True
    asyncio.run(rec.reconcile("default", "arith"))
    assert cluster.jobs()["arith-r1-prepare"]["spec"]["suspend"] is True
    cluster.objects[("taojobs", "default", "arith")]["spec"]["suspend"] = False
    asyncio.run(rec.reconcile("default", "arith"))
    assert cluster.jobs()["arith-r1-prepare"]["spec"]["suspend"] is False


def test_a_crash_or_error_at_any_kueue_call_ends_suspended_then_succeeded() -> None:
    """A crash before and after each Workload list and patch and each Job patch of a suspend and a resume, and a
    500 on each: the Job is stopped while suspended, and the run ends Succeeded with no Job created twice."""
    calls = [("list", "workloads"), ("patch", "workloads"), ("patch", "jobs")]
    faults = [Fault(c, n, w) for c in calls for n in (0, 1) for w in ("before", "after")]
    faults += [Fault(c, n, "error", 500) for c in calls for n in (0, 1)]
    survived = 0
    for fault in faults:
        cluster, rec, _ = setup(taojob(**QUEUE))
        kueue = FakeKueue(cluster)
        asyncio.run(rec.reconcile("default", "arith"))
        kueue.step()
        cluster.faults = [fault]
        doc = cluster.objects[("taojobs", "default", "arith")]
        for suspend in (True, False):
            doc["spec"]["suspend"] = suspend
            for _ in range(40):
                # kopf retries a pass that met an error; a crash restarts the operator
                with contextlib.suppress(Crash, ApiError, kopf.TemporaryError):
                    asyncio.run(rec.reconcile("default", "arith"))
                kueue.step()
                if not suspend:  # the stage takes longer than the passes of the suspension
                    settle(cluster)
                if suspend and state(cluster).get("phase") == "Suspended" and kueue.evicted:
                    job = cluster.jobs()["arith-r1-prepare"]
                    if job["spec"]["suspend"] and not (job.get("status") or {}).get("conditions"):
                        break
                if not suspend and state(cluster).get("phase") == "Succeeded":
                    break
        ok = (
            state(cluster).get("phase") == "Succeeded"
            and kueue.evicted == ["arith-r1-prepare"]
            and set(cluster.created.values()) == {1}
            and condition(cluster, "Degraded").get("status") == "False"
        )
        assert cluster.calls[fault.call] > fault.nth, f"{fault} was never reached"
        survived += ok
        assert ok, (fault, state(cluster).get("phase"), kueue.evicted)
    print(f"\nkueue faults: injected {len(faults)} / survived {survived}")

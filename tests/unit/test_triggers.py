"""Which watch events start a reconcile pass (triggers.py, job_watch.py), and a failed pass being retried
(Reconciler.trigger).

The operator sees every status patch it makes come back as a TAOJob event, and every stage Job report its pods
starting before it ends: a pass for each would double its work. These tests pin what must still start one.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
from typing import Any

import pytest
from fake_cluster import Fault
from taojob_rig import setup, state, taojob

from tao_operator import handlers
from tao_operator import reconciler as reconciler_module
from tao_operator.api import ANNOTATION_RETRY, LABEL_JOB
from tao_operator.job_watch import JobTracker
from tao_operator.triggers import EndedJobs, TAOJobEvents


def test_a_status_patch_starts_no_pass_and_every_change_a_pass_acts_on_does() -> None:
    events = TAOJobEvents()
    body = taojob()
    assert events.needs_pass(None, body)  # first seen (the listing at start): one pass each
    patched = copy.deepcopy(body) | {"status": {"phase": "Generating"}}
    patched["metadata"]["resourceVersion"] = "7"
    assert not events.needs_pass("MODIFIED", patched)  # the operator's own status patch

    edited = copy.deepcopy(patched)
    edited["spec"]["suspend"] = True
    edited["metadata"]["generation"] = 2  # the API server bumps it on every spec edit
    assert events.needs_pass("MODIFIED", edited)
    assert not events.needs_pass("MODIFIED", edited)

    retried = copy.deepcopy(edited)
    retried["metadata"]["annotations"] = {ANNOTATION_RETRY: "1"}  # annotations do not bump generation
    assert events.needs_pass("MODIFIED", retried)

    deleting = copy.deepcopy(retried)
    deleting["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    assert events.needs_pass("MODIFIED", deleting)

    assert events.needs_pass("DELETED", deleting)
    assert ("default", "arith") not in events.seen  # the sweep no longer visits it
    recreated = taojob(uid="another-uid")
    assert events.needs_pass("ADDED", recreated)


def test_a_taojob_recreated_under_its_name_is_seen_even_at_the_same_generation() -> None:
    events = TAOJobEvents()
    assert events.needs_pass("ADDED", taojob(uid="first"))
    assert events.needs_pass("ADDED", taojob(uid="second"))  # its DELETED event was missed


def _job(status: dict[str, Any], name: str = "j", uid: str = "u1") -> dict[str, Any]:
    labels = {LABEL_JOB: "arith"}
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": labels}, "status": status}


RUNNING = {"active": 1, "ready": 1, "startTime": "t"}
COMPLETE = {"conditions": [{"type": "Complete", "status": "True"}]}


@pytest.mark.parametrize(
    ("event", "status", "needed"),
    [
        ("ADDED", {}, False),  # the operator's own create
        ("MODIFIED", RUNNING, False),
        ("MODIFIED", {"conditions": [{"type": "Suspended", "status": "True"}]}, False),
        ("MODIFIED", {"conditions": [{"type": "Complete", "status": "False"}]}, False),
        ("MODIFIED", COMPLETE, True),
        ("MODIFIED", {"conditions": [{"type": "Failed", "status": "True"}]}, True),
        ("DELETED", {"active": 1}, True),  # a running Job deleted: its result is lost
    ],
)
def test_a_stage_job_event_starts_a_pass_only_when_the_job_ended_or_went(
    event: str, status: dict[str, Any], needed: bool
) -> None:
    tracker = JobTracker()
    assert tracker.seen("ADDED", _job({})) is None
    change = tracker.seen(event, _job(status))
    assert (change is not None) is needed
    if change is not None:
        assert (change.namespace, change.name, change.taojob) == ("ns", "j", "arith")
        assert change.body == (None if event == "DELETED" else _job(status))


def test_a_job_ends_once_however_often_it_is_reported_and_a_new_one_under_its_name_is_news() -> None:
    tracker = JobTracker()
    assert tracker.seen("MODIFIED", _job(COMPLETE)) is not None
    # Later updates of an ended Job, and a reconnected watch replaying it: no second pass.
    assert tracker.seen("MODIFIED", _job(COMPLETE | {"succeeded": 1})) is None
    assert tracker.seen("ADDED", _job(COMPLETE)) is None
    # Deleted and made again under its name (its DELETED event missed): the new Job's end starts a pass.
    assert tracker.seen("MODIFIED", _job(COMPLETE, uid="u2")) is not None
    unlabeled = _job(COMPLETE, name="other")
    unlabeled["metadata"]["labels"] = {}
    assert tracker.seen("MODIFIED", unlabeled) is None  # not the operator's (a server ignoring the selector)


def test_a_relisting_reports_what_changed_while_the_watch_was_down_and_the_first_nothing() -> None:
    tracker = JobTracker()
    # The first listing (the operator starting): each TAOJob's first sighting runs the pass that reads them.
    assert tracker.relisted([_job(RUNNING, "a"), _job(RUNNING, "b"), _job(COMPLETE, "c")], first=True) == []
    # The watch was down: a ended, b was deleted, c is unchanged, d is new and already ended.
    changes = tracker.relisted([_job(COMPLETE, "a"), _job(COMPLETE, "c"), _job(COMPLETE, "d")], first=False)
    assert {(c.name, c.body is None) for c in changes} == {("a", False), ("b", True), ("d", False)}
    assert all(c.taojob == "arith" for c in changes)
    assert (
        tracker.relisted([_job(COMPLETE, "a"), _job(COMPLETE, "c"), _job(COMPLETE, "d")], first=False) == []
    )


def test_ended_jobs_are_read_once_and_bounded() -> None:
    ended = EndedJobs(limit=2)
    for name in ("a", "b", "c"):
        ended.add("ns", {"metadata": {"name": name}})
    assert ended.take("ns", "a") is None  # the oldest was dropped
    assert ended.take("ns", "c") == {"metadata": {"name": "c"}}
    assert ended.take("ns", "c") is None  # taken: the next pass reads the API
    ended.drop("ns", "b")
    assert ended.take("ns", "b") is None


def test_a_failed_pass_runs_again_after_the_delay_and_once_however_often_it_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconciler_module, "RETRY_DELAY", 0.05)
    cluster, rec, _ = setup()
    # The first two status writes fail: passes raise, event handlers are not retried by kopf.
    cluster.faults = [Fault(("patch", "taojobs/status"), 0, "error", 500, times=2)]

    async def scenario() -> tuple[int, int, dict[str, Any]]:
        assert await rec.trigger("default", "arith") is True  # failed, said, retried later: no raise
        assert await rec.trigger("default", "arith") is True  # failed again before the retry
        scheduled = len(rec.retries)
        await asyncio.sleep(0.3)
        return scheduled, len(rec.retries), state(cluster)

    scheduled, left, status = asyncio.run(scenario())
    assert scheduled == 1  # one retry per TAOJob, not one per failed pass
    assert left == 0
    assert status.get("phase") and status.get("rounds")  # the retry wrote what the failed passes could not
    assert cluster.calls[("patch", "taojobs/status")] == 3


def test_a_pass_for_a_taojob_that_is_gone_says_so() -> None:
    cluster, rec, _ = setup()
    del cluster.objects[("taojobs", "default", "arith")]
    assert asyncio.run(rec.trigger("default", "arith")) is False
    assert not rec.retries


def test_close_cancels_the_scheduled_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconciler_module, "RETRY_DELAY", 30.0)
    cluster, rec, _ = setup()
    cluster.faults = [Fault(("get", "taojobs"), 0, "error", 500)]

    async def scenario() -> None:
        await rec.trigger("default", "arith")
        assert len(rec.retries) == 1
        await rec.close()

    asyncio.run(scenario())
    assert not rec.retries


def test_the_safety_sweep_visits_only_taojobs_no_pass_has_seen_for_an_interval() -> None:
    cluster, rec, _ = setup()
    cluster.objects[("taojobs", "default", "quiet")] = taojob("quiet", uid="quiet-uid")
    taojobs = TAOJobEvents()
    for name in ("arith", "quiet"):
        assert taojobs.needs_pass("ADDED", cluster.objects[("taojobs", "default", name)])
    taojobs.context = contextvars.copy_context()
    swept: list[str] = []
    reconcile_by_trigger = rec.trigger

    async def trigger(namespace: str, name: str, fresh: bool = False) -> bool:
        assert fresh  # the sweep is there for what the watch missed: it reads the API
        swept.append(name)  # only the sweep calls trigger here; the busy TAOJob's passes call reconcile
        return await reconcile_by_trigger(namespace, name, fresh)

    rec.trigger = trigger  # type: ignore[method-assign]

    async def scenario() -> None:
        sweeper = asyncio.create_task(handlers.sweep(rec, taojobs, interval=0.4))
        try:
            for _ in range(30):  # arith's stages end every 50 ms: each end is a pass
                await rec.reconcile("default", "arith")
                await asyncio.sleep(0.05)
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)

    asyncio.run(scenario())
    # Over ~1.5 s: the idle TAOJob is swept about once per interval (at most 1.25 intervals apart); the busy
    # one, passed every 50 ms, never.
    assert 2 <= swept.count("quiet") <= 4, swept
    assert "arith" not in swept


def test_a_pass_reads_the_taojob_it_wrote_only_while_the_watch_knows_no_newer_version() -> None:
    cluster, rec, _ = setup()
    reads = lambda: cluster.calls[("get", "taojobs")]  # noqa: E731

    def watch_delivers() -> None:  # the TAOJob watch's latest event: the object as it is now
        rec.saw_version("default", "arith", copy.deepcopy(cluster.objects[("taojobs", "default", "arith")]))

    async def scenario() -> None:
        await rec.reconcile("default", "arith")
        assert reads() == 1 and state(cluster).get("phase")
        # The status patch comes back as a TAOJob event: the next pass (a stage Job ended) reads no TAOJob.
        watch_delivers()
        await rec.reconcile("default", "arith")
        assert reads() == 1
        # A spec edit reaches the watch: the versions differ, the pass reads the API and sees it.
        await cluster.patch("taojobs", "default", "arith", {"spec": {"suspend": True}})
        watch_delivers()
        await rec.reconcile("default", "arith")
        assert reads() == 2 and state(cluster)["phase"] == "Suspended"
        # The status patch of that pass has not come back yet: the remembered TAOJob is newer than what the
        # watch knows, and is not used.
        await rec.reconcile("default", "arith")
        assert reads() == 3
        watch_delivers()
        # The safety sweep's passes always read the API; a deleted TAOJob is forgotten.
        await rec.reconcile("default", "arith", fresh=True)
        assert reads() == 4
        rec.saw_version("default", "arith", None)
        del cluster.objects[("taojobs", "default", "arith")]
        assert await rec.reconcile("default", "arith") is False
        assert ("default", "arith") not in rec.bodies and ("default", "arith") not in rec.watched

    asyncio.run(scenario())

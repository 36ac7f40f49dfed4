"""Which watch events start a reconcile pass (triggers.py), and a failed pass being retried (Reconciler.trigger).

The operator sees every status patch it makes come back as a TAOJob event, and every stage Job report its pods
starting before it ends: a pass for each would double its work. These tests pin what must still start one.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from fake_cluster import Fault
from taojob_rig import setup, state, taojob

from tao_operator import reconciler as reconciler_module
from tao_operator.api import ANNOTATION_RETRY
from tao_operator.triggers import EndedJobs, TAOJobEvents, job_event_needs_pass


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


@pytest.mark.parametrize(
    ("event", "status", "needed"),
    [
        ("ADDED", {}, False),  # the operator's own create
        ("MODIFIED", {"active": 1, "ready": 1, "startTime": "t"}, False),
        ("MODIFIED", {"conditions": [{"type": "Suspended", "status": "True"}]}, False),
        ("MODIFIED", {"conditions": [{"type": "Complete", "status": "False"}]}, False),
        ("MODIFIED", {"conditions": [{"type": "Complete", "status": "True"}]}, True),
        ("MODIFIED", {"conditions": [{"type": "Failed", "status": "True"}]}, True),
        (None, {"conditions": [{"type": "Complete", "status": "True"}]}, True),  # ended while we were down
        ("DELETED", {"active": 1}, True),  # a running Job deleted: its result is lost
    ],
)
def test_a_stage_job_event_starts_a_pass_only_when_the_job_ended_or_went(
    event: str | None, status: dict[str, Any], needed: bool
) -> None:
    assert job_event_needs_pass(event, {"metadata": {"name": "j"}, "status": status}) is needed


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

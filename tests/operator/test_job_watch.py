"""The stage Jobs' own watch (job_watch.py) against the Kubernetes API emulator over HTTP: a Job's end and its
deletion each reach the operator once, other Jobs never, and what happened while the watch was down (refused
watches, an expired resourceVersion) is found by listing again."""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import pytest
from kube_harness import NS, PATHS, Api, Emulator, declare_resources, eventually

from tao_operator import job_watch
from tao_operator.api import LABEL_JOB
from tao_operator.cluster import Cluster
from tao_operator.job_watch import JobChange, StageJobWatch

COMPLETE = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}


class FlakyEmulator(Emulator):
    """Refuses Job watches with a 500 while `refuse_watches` is set, answers the next one with a 410 (its
    resourceVersion expired) when `expire_next` is, and counts the Job lists (those after the 410 too)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.refuse_watches = False
        self.expire_next = False
        self.job_lists = 0
        self.lists_at_expiry: int | None = None  # job_lists when the 410 was sent

    def _jobs(self, request: Any) -> bool:
        return request.resource is not None and request.resource.plural == "jobs"

    async def _handle(self, request: Any) -> Any:
        if self._jobs(request) and request.action == kmock.action.LIST:
            self.job_lists += 1
        if self._jobs(request) and request.action == kmock.action.WATCH and self.refuse_watches:
            raise kmock.KubernetesError(status=500, reason="InternalError", message="injected")
        return await super()._handle(request)

    async def _serve_watch(self, request: Any) -> Any:
        if self._jobs(request) and self.expire_next:
            self.expire_next = False
            self.lists_at_expiry = self.job_lists
            yield b""
            yield {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
            # Held open: the client must act on the event itself (kmock may not flush a last event on return).
            await asyncio.sleep(3600)
        async for event in super()._serve_watch(request):
            yield event


def job(name: str, labelled: bool = True, status: dict[str, Any] | None = None) -> dict[str, Any]:
    labels = {LABEL_JOB: "arith"} if labelled else {"app": "someone-else"}
    body: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}]}}},
    }
    if status is not None:
        body["status"] = status
    return body


@pytest.mark.asyncio
async def test_each_end_and_deletion_reaches_the_operator_once_through_refusals_and_an_expiry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(job_watch, "BACKOFF", (0.05,))
    async with FlakyEmulator() as emu, kmock.Server(emu):
        declare_resources(emu)
        url = str(emu.url).rstrip("/")
        api = Api(url)
        await api.call(
            "POST", PATHS["jobs"], job("old", status=COMPLETE)
        )  # ended before the operator started
        await api.call("POST", PATHS["jobs"], job("b"))  # running
        await api.call("POST", PATHS["jobs"], job("foreign", labelled=False, status=COMPLETE))
        changes: list[JobChange] = []

        async def record(change: JobChange) -> None:
            changes.append(change)

        emu.refuse_watches = True
        cluster = Cluster.for_url(url)
        watch = asyncio.create_task(StageJobWatch(cluster, NS, record).run())
        try:
            # The first listing starts no pass (each TAOJob's first sighting runs one), and every watch fails.
            await eventually(lambda: emu.job_lists >= 3, timeout=10)
            assert changes == []
            # While the watch is down, b ends and old is deleted: the next listing finds both.
            await api.patch("jobs", "b", {"status": COMPLETE})
            await api.call("DELETE", f"{PATHS['jobs']}/old")
            await eventually(lambda: len(changes) == 2, timeout=10)
            assert {(c.name, c.body is None) for c in changes} == {("b", False), ("old", True)}
            assert all((c.namespace, c.taojob) == (NS, "arith") for c in changes)

            assert "the watch failed" in caplog.text  # each refusal was said, with its backoff
            # The watch comes back, is told its version expired, lists again and watches.
            emu.expire_next = True
            await asyncio.sleep(0.1)  # a refused watch in flight says so
            caplog.clear()
            emu.refuse_watches = False
            await eventually(lambda: emu.job_lists > (emu.lists_at_expiry or emu.job_lists), timeout=10)
            await asyncio.sleep(0.3)
            assert len(changes) == 2  # relisting and the watch's replay of b and old: nothing twice
            assert "the watch failed" not in caplog.text  # an expired version is routine, not a failure

            # Live: created and running is nothing; its end is one change carrying the ended Job; later
            # updates of the ended Job are nothing; its deletion is one change.
            await api.call("POST", PATHS["jobs"], job("a"))
            await api.patch("jobs", "a", {"status": {"active": 1}})
            await api.patch("jobs", "a", {"status": COMPLETE})
            await eventually(lambda: len(changes) == 3, timeout=10)
            ended = changes[2]
            assert ended.name == "a" and ended.body is not None
            assert ended.body["status"]["conditions"][0]["type"] == "Complete"
            await api.patch("jobs", "a", {"metadata": {"annotations": {"seen": "yes"}}})
            await api.patch("jobs", "foreign", {"status": {"failed": 1}})
            await api.call("DELETE", f"{PATHS['jobs']}/a")
            await eventually(lambda: len(changes) == 4, timeout=10)
            await asyncio.sleep(0.3)
            assert [(c.name, c.body is None) for c in changes[2:]] == [("a", False), ("a", True)]
            assert "foreign" not in {c.name for c in changes}
            # Only the operator's Jobs were asked for, on every list and watch.
            assert emu.watch_selectors["jobs"] == {LABEL_JOB}
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await cluster.close()
            await api.close()

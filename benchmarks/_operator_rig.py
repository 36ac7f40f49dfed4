"""operator_scale.py's rig: the emulated API server and a fake control plane, in the driver's process.

- `BenchEmulator`: the tests' kmock `Emulator` with reads and writes answered straight from its object
  store, server-side label selection from a label index, and served requests forgotten (kmock 0.8 otherwise
  matches each request against every earlier one), so that the emulator's cost does not grow with the
  number of objects. It counts requests per verb and resource (the operator's apart from the control
  plane's), lists without a label selector, and the timeline of stage Jobs and TAOJobs;
- `FastPlane`: the Job controller and the kubelet with no process: for each stage Job the operator
  creates, a pod whose terminated container carries a valid StageResult, then the Job marked Complete; and
  Jobs of other workloads on demand;
- the operator's process (this commit's, or an older one's from a worktree) and its CPU and RSS from /proc.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import _bench as bench  # noqa: E402
import aiohttp  # noqa: E402
import aiohttp.web  # noqa: E402
import kmock  # noqa: E402
from kube_harness import (  # noqa: E402
    HARNESS_AGENT,
    NS,
    PATHS,
    TAOJOBS,
    Emulator,
    declare_resources,
    now,
    selector_matches,
)

__all__ = [
    "NS",
    "TAOJOBS",
    "BenchEmulator",
    "FastPlane",
    "declare_resources",
    "operator_code",
    "proc_stats",
    "stage_result",
    "start_operator",
]


# ------------------------------------------------------------------------------------- the API server


class _DirectDispatch(kmock.KubernetesScaffold):
    """Reads and writes answered straight from the object store: kmock 0.8 matches every request against its
    reaction DSL (~1.5 ms each here), which made the emulator, not the operator, the bottleneck. Watches and
    discovery still go through kmock."""

    async def _handle(self, request: Any) -> Any:
        serve = (
            {
                kmock.action.FETCH: self._serve_fetch,
                kmock.action.LIST: self._serve_list,
                kmock.action.CREATE: self._serve_create,
                kmock.action.UPDATE: self._serve_update,
                kmock.action.DELETE: self._serve_delete,
            }.get(request.action)
            if request.resource is not None and request.resource.plural
            else None
        )
        if serve is None:
            return await super()._handle(request)
        return aiohttp.web.json_response(await serve(request))  # type: ignore[operator]


class BenchEmulator(Emulator, _DirectDispatch):
    """The tests' emulator, plus what a benchmark needs: request counts, a timeline, and no O(objects) scans."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # (who, verb, resource) -> requests; who is "operator" (any agent but the control plane's) or "plane"
        self.counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # Lists by the operator without a label selector (kopf's own watch lists of taojobs are expected)
        self.unselected_lists: collections.Counter[str] = collections.Counter()
        self.created: dict[str, float] = {}  # stage Job name -> when the operator POSTed it
        self.completed: dict[str, float] = {}  # stage Job name -> when the control plane marked it Complete
        self.job_meta: dict[str, tuple[str, int, str]] = {}  # Job name -> (taojob, round, stage)
        # TAOJob name -> (when the operator wrote its terminal phase, the phase)
        self.finished: dict[str, tuple[float, str]] = {}
        self.new_jobs: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.counting = True
        self.by_label: collections.defaultdict[tuple[Any, ...], list[Any]] = collections.defaultdict(list)

    async def _handle(self, request: Any) -> Any:
        t = time.monotonic()
        if request.resource is None or not request.resource.plural:
            if self.counting:
                self.counts[("operator", "discovery", str(request.url.path))] += 1
            try:
                return await super()._handle(request)
            finally:
                self._forget(request)
        ours = request.headers.get("User-Agent") != HARNESS_AGENT
        action = str(request.action).split(".")[-1].lower()
        verb = {"fetch": "get", "update": "patch"}.get(action, action)
        what = request.resource.plural + ("/status" if str(request.url.path).endswith("/status") else "")
        if self.counting:
            self.counts[("operator" if ours else "plane", verb, what)] += 1
            if (
                ours
                and verb == "list"
                and not request.params.get("labelSelector")
                and request.resource.plural != "taojobs"
            ):
                self.unselected_lists[what] += 1
        data = request.data
        if verb == "create" and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                # The harness adds 5 hex digits: thousands of kopf's events would collide (409) now and then.
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:12]
        if ours and verb == "create" and what == "jobs" and isinstance(data, dict):
            labels = data["metadata"].get("labels") or {}
            name = data["metadata"]["name"]
            self.created.setdefault(name, t)
            self.job_meta[name] = (
                labels["tao.dev/job"],
                int(labels["tao.dev/round"]),
                labels["tao.dev/stage"],
            )
        elif not ours and verb == "patch" and what == "jobs" and request.name in self.job_meta:
            if any(c.get("type") == "Complete" for c in (data.get("status") or {}).get("conditions", [])):
                self.completed.setdefault(request.name, t)
        elif ours and verb == "patch" and what == "taojobs/status" and isinstance(data, dict):
            phase = (data.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed") and request.name not in self.finished:
                self.finished[request.name] = (t, phase)
        try:
            response = await super()._handle(request)
        finally:
            self._forget(request)
        if verb == "create" and isinstance(data, dict):
            self._index(request)
        if ours and verb == "create" and what == "jobs" and isinstance(data, dict):
            self.new_jobs.put_nowait(data)
        return response

    def _forget(self, request: Any) -> None:
        """Drop a served request from kmock's log: kmock matches each request against every logged one (for
        test assertions), which makes a long run quadratic. Only requests still in flight stay logged."""
        log = self._requests
        for i in range(len(log) - 1, -1, -1):
            if log[i] is request:
                del log[i]
                break
        for payload in self._payloads:
            payload._requests.clear()

    # kmock 0.8 finds an object by scanning every stored object; a real API server does not.
    def _lookup(self, request: Any) -> Any:
        obj = self.objects._objects.get((request.resource, request.namespace, request.name))
        if obj is None or obj.deleted:
            raise kmock.KubernetesObjectNotFoundError()
        return obj

    async def _serve_fetch(self, request: Any) -> Any:
        return self._lookup(request).raw

    async def _serve_update(self, request: Any) -> Any:
        return self._lookup(request).last.raw

    async def _serve_delete(self, request: Any) -> Any:
        return self._lookup(request).last.raw

    async def _serve_create(self, request: Any) -> Any:
        meta = request.data.get("metadata", {})
        key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
        return self.objects._objects[key].raw

    def _index(self, request: Any) -> None:
        """Index a new object by resource and by each label (set at creation; this benchmark never relabels)."""
        meta = request.data.get("metadata", {})
        ns = request.namespace or meta.get("namespace")
        key = (request.resource, ns, meta.get("name"))
        self.by_label[(request.resource, ns, None, None)].append(key)
        for k, v in (meta.get("labels") or {}).items():
            self.by_label[(request.resource, ns, k, v)].append(key)

    async def _serve_list(self, request: Any) -> Any:
        """Server-side label selection, from the label index (its first equality term) then the selector."""
        selector = request.params.get("labelSelector", "")
        equal = [tuple(t.split("=", 1)) for t in selector.split(",") if "=" in t and "!=" not in t]
        first = equal[0] if equal else (None, None)
        items = []
        for key in self.by_label.get((request.resource, request.namespace, *first), []):
            obj = self.objects._objects.get(key)
            if obj is None or obj.deleted:
                continue
            if selector_matches(selector, obj.raw.get("metadata", {}).get("labels") or {}):
                items.append(obj.raw)
        return {"metadata": {"resourceVersion": "..."}, "items": items}


# --------------------------------------------------------------------------------- the fake control plane


def stage_result(taojob: str, round_: int, stage: str) -> dict[str, Any]:
    """A valid StageResult for the stage, as the stage CLI would write to /dev/termination-log."""
    result: dict[str, Any] = {
        "stage": stage,
        "round": round_,
        "ok": True,
        "message": "",
        "durationSeconds": 0.01,
    }
    if stage == "prepare":
        result["counts"] = {
            "prompts": 1000,
            "pool": 9000,
            "heldOut": 100,
            "rejects": 0,
            "duplicates": 0,
            "files": 1,
        }
    elif stage == "generate":
        result["counts"] = {"prompts": 1000, "candidates": 8000, "shardsDone": 1, "shardsSkipped": 0}
    elif stage == "score":
        result["counts"] = {"candidates": 8000, "unscored": 0}
        result["metrics"] = {"meanScore": 0.5}
    elif stage == "train":
        result["counts"] = {"examples": 4000, "candidates": 8000, "steps": 125}
        result["metrics"] = {"trainLoss": 0.9}
        result["outputs"] = {"model": f"s3://bench/runs/{taojob}/round-{round_:03d}/train/model"}
    elif stage == "evaluate":
        result["metrics"] = {"champion.score": 0.5, "challenger.score": 0.6, "winRate": 0.6}
        result["promoted"] = True
        result["message"] = "challenger beats the champion by 0.100: promoted"
    return result


class FastPlane:
    """Plays the Job controller and the kubelet with no process: a pod with the result, then Job Complete."""

    def __init__(self, emu: BenchEmulator, url: str, stage_seconds: float) -> None:
        self.emu, self.url, self.stage_seconds = emu, url, stage_seconds
        self.random = random.Random(0)
        self.session = aiohttp.ClientSession(
            headers={"User-Agent": HARNESS_AGENT}, connector=aiohttp.TCPConnector(limit=50)
        )
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop_task: asyncio.Task[None] | None = None

    async def call(self, method: str, path: str, body: Any, merge: bool = False) -> None:
        headers = {"Content-Type": "application/merge-patch+json" if merge else "application/json"}
        async with self.session.request(
            method, self.url + path, data=json.dumps(body), headers=headers
        ) as resp:
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {(await resp.text())[:300]}")
            await resp.read()

    def start(self) -> None:
        self.loop_task = asyncio.create_task(self._loop())

    async def unrelated_jobs(self, events: int) -> None:
        """`events` watch events of Jobs that are not the operator's (no tao.dev labels), as other workloads
        in a watched namespace make: half as many Jobs created, then each one's status patched."""
        slots = asyncio.Semaphore(20)
        names = [f"unrelated-{i:05d}" for i in range((events + 1) // 2)]

        async def create(name: str) -> None:
            job = {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": name, "namespace": NS, "labels": {"app": "someone-else"}},
                "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}},
            }
            async with slots:
                await self.call("POST", PATHS["jobs"], job)

        async def finish(name: str) -> None:
            status = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
            async with slots:
                await self.call("PATCH", f"{PATHS['jobs']}/{name}", status, merge=True)

        await asyncio.gather(*(create(n) for n in names))
        await asyncio.gather(*(finish(n) for n in names[: events - len(names)]))

    async def _loop(self) -> None:
        while True:
            job = await self.emu.new_jobs.get()
            task = asyncio.create_task(self._complete(job))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _complete(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        taojob, round_, stage = self.emu.job_meta[name]
        if self.stage_seconds:
            # Durations spread over 0.5-1.5x, so that the fleet's stages drift out of step as real ones do.
            await asyncio.sleep(self.stage_seconds * self.random.uniform(0.5, 1.5))
        container = job["spec"]["template"]["spec"]["containers"][0]
        message = json.dumps(stage_result(taojob, round_, stage))
        await self.call(
            "POST",
            PATHS["pods"],
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"{name}-0-x",
                    "namespace": NS,
                    "labels": {
                        "job-name": name,
                        "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
                        **(job["spec"]["template"]["metadata"].get("labels") or {}),
                    },
                    "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
                    "ownerReferences": [
                        {
                            "apiVersion": "batch/v1",
                            "kind": "Job",
                            "name": name,
                            "uid": job["metadata"]["uid"],
                            "controller": True,
                        }
                    ],
                },
                "spec": job["spec"]["template"]["spec"],
                "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "ready": False,
                            "restartCount": 0,
                            "image": container["image"],
                            "imageID": "",
                            "state": {
                                "terminated": {
                                    "exitCode": 0,
                                    "reason": "Completed",
                                    "message": message,
                                    "finishedAt": now(),
                                }
                            },
                        }
                    ],
                },
            },
        )
        await self.call(
            "PATCH",
            f"{PATHS['jobs']}/{name}",
            {
                "status": {
                    "succeeded": 1,
                    "failed": 0,
                    "completionTime": now(),
                    "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}],
                }
            },
            merge=True,
        )

    async def stop(self) -> None:
        for t in [*self.tasks, *([self.loop_task] if self.loop_task else [])]:
            t.cancel()
        await asyncio.gather(
            *self.tasks, *([self.loop_task] if self.loop_task else []), return_exceptions=True
        )
        await self.session.close()


# ------------------------------------------------------------------------------------------- the operator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The operator's own process: what `tao operator -n default` runs (the same registry, handlers and settings: a
# 60 s safety sweep, no metrics port), logged in straight to the emulator's URL so that no kubeconfig is needed.
OPERATOR = """
import asyncio, inspect, sys, kopf, tao_operator
print("operator code:", tao_operator.__file__, flush=True)
from tao_operator.builders import OperatorDefaults
from tao_operator.handlers import build_registry
url, liveness = sys.argv[1], sys.argv[2]
defaults = OperatorDefaults(trainer_image="tao-trainer:bench", serving_image="vllm:bench")
# Older operators (--compare) take no namespaces: kopf alone watched their stage Jobs.
scope = {"namespaces": ["default"]} if "namespaces" in inspect.signature(build_registry).parameters else {}
asyncio.run(kopf.operator(registry=build_registry(defaults, server=url, metrics_port=None, **scope),
                          namespaces=["default"], liveness_endpoint=liveness, standalone=True))
"""


def start_operator(url: str, workdir: Path, tree: Path | None) -> subprocess.Popen[bytes]:
    """This commit's operator, or (`tree`) the one of an older commit's worktree."""
    cmd = [sys.executable, "-c", OPERATOR, url, f"http://127.0.0.1:{free_port()}/healthz"]
    env = {**os.environ, "HOME": str(workdir)}
    if tree is not None:
        env["PYTHONPATH"] = bench.pythonpath(tree)
    log = open(workdir / "operator.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def operator_code(workdir: Path) -> str:
    """Where the running operator's package came from (its first log line)."""
    for line in (workdir / "operator.log").read_text(errors="replace").splitlines():
        if line.startswith("operator code: "):
            return line.removeprefix("operator code: ")
    return "?"


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds (user + system), peak and current RSS in MB, from /proc."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    kb = lambda key: int(status[key].split()[0])  # noqa: E731
    return {"cpu_s": bench.proc_cpu_seconds(pid), "hwm_mb": kb("VmHWM") / 1024, "rss_mb": kb("VmRSS") / 1024}

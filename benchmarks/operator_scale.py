"""The operator under many concurrent TAOJobs: stage-transition latency, API requests per transition, RSS and CPU.

    python benchmarks/operator_scale.py [--taojobs 50,200] [--paced 200:10] [--rounds 2] [--smoke]

Two processes. This one runs kmock's emulated API server (the tests' `Emulator`, with reads and writes
answered straight from its object store and server-side label selection, as a real API server does, so that
the emulator's own cost does not grow with the number of objects) and a benchmark-only fake control plane: for
each stage Job the operator creates, it creates a pod whose terminated container carries a valid StageResult
as its termination message, then marks the Job Complete. No stage process runs. The other process is the
real operator (kopf with the registry `tao operator` runs, its 60 s safety timer included, watching namespace
default, logged in to the emulator's URL): its peak RSS (VmHWM) and CPU time come from /proc.

Every TAOJob runs 2 fixed rounds (preflight and serving disabled): 10 stage Jobs, 9 transitions between them
plus the last Job -> Succeeded. Transition latency is measured in the emulator, on one clock: from the control
plane's PATCH that marks a Job Complete to the operator's POST of the TAOJob's next Job. Requests are counted
per verb and resource, the operator's (any agent but the control plane's) apart from the control plane's.

Two kinds of run:
- saturation (--taojobs): all TAOJobs applied at once, every stage completes the moment its Job exists. The
  fleet is a closed loop that always has work queued, so latency ~ fleet size / throughput: these runs give
  the throughput, the CPU per transition and requests per transition at each size;
- paced (--paced N:S): N TAOJobs arriving over S seconds, each stage 'running' 0.5-1.5x S: latency when the
  operator is not saturated (real stages run for minutes).
Figures go to benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import aiohttp  # noqa: E402
import aiohttp.web  # noqa: E402
import kmock  # noqa: E402
from kube_harness import HARNESS_AGENT, NS, PATHS, TAOJOBS, Emulator, declare_resources, now  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "operator_scale.json"
STAGES_PER_ROUND = ("prepare", "generate", "score", "train", "evaluate")
TARGETS = {"p95_ms": 1000.0, "rss_mb": 250.0}


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
        elif not ours and verb == "patch" and what == "jobs" and isinstance(data, dict):
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
        """Server-side label selection (equality terms only: all the operator uses), from the label index."""
        wanted = [
            tuple(term.split("=", 1))
            for term in request.params.get("labelSelector", "").split(",")
            if "=" in term
        ]
        first = wanted[0] if wanted else (None, None)
        items = []
        for key in self.by_label.get((request.resource, request.namespace, *first), []):
            obj = self.objects._objects.get(key)
            if obj is None or obj.deleted:
                continue
            labels = obj.raw.get("metadata", {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in wanted):
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
                    "labels": {"job-name": name, **(job["spec"]["template"]["metadata"].get("labels") or {})},
                    "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
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
# 60 s safety timer, no metrics port), logged in straight to the emulator's URL so that no kubeconfig is needed.
OPERATOR = """
import asyncio, sys, kopf
from tao_operator.builders import OperatorDefaults
from tao_operator.handlers import build_registry
url, liveness = sys.argv[1], sys.argv[2]
defaults = OperatorDefaults(trainer_image="tao-trainer:bench", serving_image="vllm:bench")
asyncio.run(kopf.operator(registry=build_registry(defaults, server=url, metrics_port=None),
                          namespaces=["default"], liveness_endpoint=liveness, standalone=True))
"""


def start_operator(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", OPERATOR, url, f"http://127.0.0.1:{free_port()}/healthz"]
    log = open(workdir / "operator.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, env={**os.environ, "HOME": str(workdir)}, stdout=log, stderr=subprocess.STDOUT
    )


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds (user + system), peak and current RSS in MB, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    kb = lambda key: int(status[key].split()[0])  # noqa: E731
    return {"cpu_s": cpu, "hwm_mb": kb("VmHWM") / 1024, "rss_mb": kb("VmRSS") / 1024}


def taojob_manifest(name: str, rounds: int) -> dict[str, Any]:
    return {
        "apiVersion": "tao.dev/v1alpha1",
        "kind": "TAOJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"uri": "s3://bench/base-model"},
            "prompts": {"uri": "s3://bench/prompts.jsonl"},
            "storage": {"uri": "s3://bench/runs"},
            "rounds": rounds,
            "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
            "preflight": {"enabled": False},
            "serving": {"enabled": False},
        },
    }


# ------------------------------------------------------------------------------------------------ one run


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return (
        ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")
    )


async def run_once(n: int, rounds: int, stage_seconds: float, timeout: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tao-opscale-"))
    async with BenchEmulator() as emu, kmock.Server(emu):
        declare_resources(emu)
        url = str(emu.url).rstrip("/")
        operator = start_operator(url, workdir)
        plane = FastPlane(emu, url, stage_seconds)
        try:
            deadline = time.monotonic() + 60
            watched = lambda: {w for (who, verb, w) in emu.counts if who == "operator" and verb == "watch"}  # noqa: E731
            while not {"taojobs", "jobs"} <= watched():
                if operator.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the operator did not start: {(workdir / 'operator.log').read_text()[-2000:]}"
                    )
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            startup = proc_stats(operator.pid)
            startup_requests = sum(c for (who, _, _), c in emu.counts.items() if who == "operator")
            emu.counts.clear()
            emu.unselected_lists.clear()
            plane.start()

            started = time.monotonic()
            rig_cpu = time.process_time()
            posting = asyncio.Semaphore(20)

            async def post(i: int) -> None:
                if stage_seconds:  # paced: TAOJobs arrive spread over one stage duration
                    await asyncio.sleep(stage_seconds * i / n)
                async with posting:
                    await plane.call("POST", TAOJOBS, taojob_manifest(f"bench-{i:04d}", rounds))

            await asyncio.gather(*(post(i) for i in range(n)))
            while len(emu.finished) < n:
                if operator.poll() is not None:
                    raise RuntimeError(
                        f"the operator exited: {(workdir / 'operator.log').read_text()[-2000:]}"
                    )
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"only {len(emu.finished)}/{n} TAOJobs finished within {timeout:.0f}s")
                await asyncio.sleep(0.05)
            wall = time.monotonic() - started
            rig_cpu = time.process_time() - rig_cpu
            await asyncio.sleep(1.0)  # trailing events (kopf posts Kubernetes events asynchronously)
            emu.counting = False
            end = proc_stats(operator.pid)
        finally:
            await plane.stop()
            operator.terminate()
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
    shutil.rmtree(workdir, ignore_errors=True)  # kept when the run failed: the operator's log is there

    # Transitions: each Job's completion -> the next stage Job of the same TAOJob; the last -> the terminal phase.
    by_job: dict[str, list[tuple[int, int, str]]] = collections.defaultdict(list)
    order = {s: i for i, s in enumerate(STAGES_PER_ROUND)}
    for name, (taojob, round_, stage) in emu.job_meta.items():
        by_job[taojob].append((round_, order[stage], name))
    latencies, final = [], []
    for taojob, jobs in by_job.items():
        jobs.sort()
        for (_, _, a), (_, _, b) in zip(jobs, jobs[1:], strict=False):
            latencies.append(emu.created[b] - emu.completed[a])
        if taojob in emu.finished and jobs[-1][2] in emu.completed:
            final.append(emu.finished[taojob][0] - emu.completed[jobs[-1][2]])
    failed = sum(1 for _, phase in emu.finished.values() if phase != "Succeeded")
    handled = len(emu.completed)  # stage Jobs whose completion the operator had to act on
    op = {(verb, what): c for (who, verb, what), c in emu.counts.items() if who == "operator"}
    op_total = sum(op.values())
    per_stage = {f"{verb} {what}": round(c / handled, 3) for (verb, what), c in sorted(op.items())}
    plane_total = sum(c for (who, _, _), c in emu.counts.items() if who == "plane")
    cpu = end["cpu_s"] - startup["cpu_s"]
    return {
        "taojobs": n,
        "rounds": rounds,
        "stageSeconds": stage_seconds,
        "stageJobs": len(emu.created),
        "transitions": len(latencies),
        "failedTaojobs": failed,
        "wallSeconds": round(wall, 2),
        "transitionsPerSecond": round((len(latencies) + len(final)) / wall, 1),
        "latencyMs": {
            "p50": round(pct(latencies, 50) * 1000, 1),
            "p95": round(pct(latencies, 95) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
            "mean": round(statistics.mean(latencies) * 1000, 1),
        },
        "finalLatencyMs": {
            "p50": round(pct(final, 50) * 1000, 1),
            "p95": round(pct(final, 95) * 1000, 1),
            "max": round(max(final) * 1000, 1),
        }
        if final
        else None,
        "operatorRequests": op_total,
        "operatorRequestsPerStageJob": round(op_total / handled, 2),
        "operatorRequestsByKindPerStageJob": per_stage,
        "operatorListsWithoutSelector": dict(emu.unselected_lists),
        "operatorWatchRequests": sum(c for (verb, _), c in op.items() if verb == "watch"),
        "startupRequests": startup_requests,
        "controlPlaneRequests": plane_total,
        "operatorRssMb": {
            "peak": round(end["hwm_mb"], 1),
            "end": round(end["rss_mb"], 1),
            "afterStartup": round(startup["rss_mb"], 1),
        },
        "operatorCpuSeconds": round(cpu, 2),
        "operatorCpuMsPerStageJob": round(cpu / handled * 1000, 2),
        "operatorCpuShare": round(cpu / wall, 2),
        "rigCpuShare": round(rig_cpu / wall, 2),  # the emulated API server and the fake control plane
    }


# ------------------------------------------------------------------------------------------------- main


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--taojobs", default="50,200", help="fleet sizes for saturation runs (stages end at once)"
    )
    parser.add_argument(
        "--paced",
        default="200:10",
        help="paced runs as TAOJOBS:STAGE_SECONDS (comma-separated; '' for none): each stage Job "
        "'runs' 0.5-1.5x STAGE_SECONDS and TAOJobs arrive over STAGE_SECONDS",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--smoke", action="store_true", help="3 TAOJobs, 1 round, no paced run (the smoke test)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where the figures go (default: {RESULTS.relative_to(ROOT)}; none with --smoke)",
    )
    args = parser.parse_args(argv)
    plan = [(3, 0.0)] if args.smoke else [(int(x), 0.0) for x in args.taojobs.split(",") if x]
    if not args.smoke:
        plan += [(int(n), float(secs)) for n, secs in (p.split(":") for p in args.paced.split(",") if p)]
    rounds = 1 if args.smoke else args.rounds
    out = args.json or (None if args.smoke else RESULTS)

    load_before = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores (shared), load average {load_before[0]:.2f}; "
        f"{rounds} round(s) per TAOJob",
        flush=True,
    )
    runs = []
    for n, secs in plan:
        run = asyncio.run(run_once(n, rounds, secs, args.timeout))
        runs.append(run)
        print(f"  done: {n} TAOJobs, stages of {secs:g}s, in {run['wallSeconds']}s", flush=True)

    header = [
        "taojobs",
        "stage s",
        "stage jobs",
        "transitions",
        "wall s",
        "trans/s",
        "p50 ms",
        "p95 ms",
        "max ms",
        "last->done p95",
        "req/job",
        "lists w/o selector",
        "rss MB",
        "cpu s",
        "cpu ms/job",
        "op cpu %",
        "rig cpu %",
    ]
    rows = [
        [
            str(r["taojobs"]),
            f"{r['stageSeconds']:g}",
            str(r["stageJobs"]),
            str(r["transitions"]),
            f"{r['wallSeconds']:.1f}",
            f"{r['transitionsPerSecond']:.1f}",
            f"{r['latencyMs']['p50']:.0f}",
            f"{r['latencyMs']['p95']:.0f}",
            f"{r['latencyMs']['max']:.0f}",
            f"{(r['finalLatencyMs'] or {}).get('p95', float('nan')):.0f}",
            f"{r['operatorRequestsPerStageJob']:.2f}",
            str(sum(r["operatorListsWithoutSelector"].values())),
            f"{r['operatorRssMb']['peak']:.0f}",
            f"{r['operatorCpuSeconds']:.1f}",
            f"{r['operatorCpuMsPerStageJob']:.1f}",
            f"{r['operatorCpuShare'] * 100:.0f}",
            f"{r['rigCpuShare'] * 100:.0f}",
        ]
        for r in runs
    ]
    print("\noperator under N concurrent TAOJobs (latency: Job marked Complete -> next stage Job created)")
    print(table(rows, header))
    kinds = sorted(
        {k for r in runs for k in r["operatorRequestsByKindPerStageJob"] if not k.startswith("watch")}
    )
    print("\noperator API requests per stage Job, by verb and resource")
    print(
        table(
            [[k, *(f"{r['operatorRequestsByKindPerStageJob'].get(k, 0):.2f}" for r in runs)] for k in kinds],
            ["request", *(f"N={r['taojobs']}/{r['stageSeconds']:g}s" for r in runs)],
        )
    )
    print(
        "watch requests during the runs (reconnects; each replays its resource): "
        + ", ".join(str(r["operatorWatchRequests"]) for r in runs)
    )
    load_after = os.getloadavg()
    verdicts = []
    for r in runs:
        verdicts.append(
            {
                "taojobs": r["taojobs"],
                "stageSeconds": r["stageSeconds"],
                "p95<=1s": r["latencyMs"]["p95"] <= TARGETS["p95_ms"],
                "rss<=250MB": r["operatorRssMb"]["peak"] <= TARGETS["rss_mb"],
                "noUnselectedLists": not r["operatorListsWithoutSelector"],
            }
        )
    per_job = [r["operatorRequestsPerStageJob"] for r in runs if not r["stageSeconds"]]
    bounded = len(per_job) < 2 or max(per_job) <= 1.25 * min(per_job)
    print(
        "\ntargets: "
        + "; ".join(
            f"N={v['taojobs']}/{v['stageSeconds']:g}s: p95<=1s {'met' if v['p95<=1s'] else 'MISSED'}, "
            f"RSS<=250MB {'met' if v['rss<=250MB'] else 'MISSED'}"
            for v in verdicts
        )
        + f"; requests per stage Job independent of N: {'yes' if bounded else 'NO'} ({', '.join(map(str, per_job))})"
    )
    print(f"load average after: {load_after[0]:.2f}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "benchmark": "operator_scale",
                    "machine": {
                        "cores": os.cpu_count(),
                        "loadAverageBefore": round(load_before[0], 2),
                        "loadAverageAfter": round(load_after[0], 2),
                        "shared": True,
                    },
                    "targets": {"p95LatencyMs": TARGETS["p95_ms"], "rssMb": TARGETS["rss_mb"]},
                    "runs": runs,
                    "verdicts": verdicts,
                    "requestsPerStageJobIndependentOfN": bounded,
                },
                indent=1,
            )
            + "\n"
        )
        print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

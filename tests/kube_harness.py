"""A Kubernetes stand-in for operator tests: kmock's API emulator over real HTTP, the real operator in its own
thread, and a fake control plane that plays the Job controller, the kubelet, the Deployment controller and
the garbage collector by running each pod's container command as a local process.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kmock
import kopf

from tao_operator.builders import OperatorDefaults
from tao_operator.handlers import build_registry

NS = "default"
TAOJOBS = "/apis/tao.dev/v1alpha1/namespaces/default/taojobs"
PATHS = {
    "jobs": "/apis/batch/v1/namespaces/default/jobs",
    "pods": "/api/v1/namespaces/default/pods",
    "configmaps": "/api/v1/namespaces/default/configmaps",
    "deployments": "/apis/apps/v1/namespaces/default/deployments",
    "services": "/api/v1/namespaces/default/services",
    "taojobs": TAOJOBS,
}


# Requests from the fake control plane carry this agent; everything else came from the operator (kopf or ours).
HARNESS_AGENT = "tao-test-harness"
VERBS = {
    "fetch": "get",
    "list": "list",
    "watch": "watch",
    "create": "create",
    "update": "patch",
    "delete": "delete",
}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A label selector as the API server applies it (`key`, `!key`, `key=value`, `key==value`, `key!=value`,
    comma-joined; set terms are not used here).

    >>> selector_matches("tao.dev/job", {"tao.dev/job": "a"}), selector_matches("a=1,!b", {"a": "1", "b": ""})
    (True, False)
    """
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _labels(obj: Any) -> dict[str, str]:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


class Emulator(kmock.KubernetesEmulator):
    """kmock 0.8 plus the metadata an API server manages, label selectors on lists and watches, 422 on failed
    patch tests, and a create log."""

    _rv = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.creations: collections.Counter[tuple[str, str]] = collections.Counter()
        self.operator_calls: set[tuple[str, str, str]] = set()  # (verb, group, resource[/subresource])
        self.watch_selectors: collections.defaultdict[str, set[str | None]] = collections.defaultdict(set)

    async def _handle(self, request: Any) -> Any:
        if (
            request.resource is not None
            and request.resource.plural
            and request.headers.get("User-Agent") != HARNESS_AGENT
        ):
            verb = VERBS.get(str(request.action).split(".")[-1].lower(), str(request.action))
            sub = "/status" if str(request.url.path).endswith("/status") else ""
            self.operator_calls.add((verb, request.resource.group or "", request.resource.plural + sub))
        data, rv = request.data, str(next(self._rv))
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            meta.update(
                resourceVersion=rv,
                generation=1,
                **({"namespace": request.namespace} if request.namespace else {}),
            )
        elif request.action == kmock.action.UPDATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = rv
            if "spec" in data and not str(request.url).endswith("/status"):
                key = (request.resource, request.namespace, request.name)
                if key in self.objects:
                    meta["generation"] = int(self.objects[key].get("metadata", {}).get("generation", 1)) + 1
        elif request.action == kmock.action.UPDATE and isinstance(data, list):
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv})
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as e:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(e)) from None
        if request.action == kmock.action.CREATE and isinstance(data, dict) and request.resource is not None:
            self.creations[(request.resource.plural, data["metadata"].get("name"))] += 1
        return response

    # kmock 0.8 ignores labelSelector; an API server applies it, and the operator's watches rely on it.
    async def _serve_list(self, request: Any) -> Any:
        payload = await super()._serve_list(request)
        if selector := request.params.get("labelSelector"):
            payload["items"] = [i for i in payload["items"] if selector_matches(selector, _labels(i))]
        return payload

    async def _serve_watch(self, request: Any) -> Any:
        selector = request.params.get("labelSelector")
        if request.resource is not None:
            self.watch_selectors[request.resource.plural].add(selector)
        async for event in super()._serve_watch(request):
            if (
                not selector
                or not isinstance(event, dict)
                or selector_matches(selector, _labels(event.get("object")))
            ):
                yield event


def declare_resources(emu: Emulator) -> None:
    emu.resources["tao.dev/v1alpha1/taojobs"] = kmock.ResourceInfo(
        kind="TAOJob",
        namespaced=True,
        subresources={"status"},
        verbs={"list", "watch", "patch", "get", "create", "delete"},
    )
    verbs = {
        "list",
        "watch",
        "get",
        "create",
        "patch",
        "delete",
    }  # without verbs, kopf does not watch a resource
    emu.resources["batch/v1/jobs"] = kmock.ResourceInfo(
        kind="Job", namespaced=True, subresources={"status"}, verbs=verbs
    )
    emu.resources["apps/v1/deployments"] = kmock.ResourceInfo(
        kind="Deployment", namespaced=True, subresources={"status"}, verbs=verbs
    )
    emu.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True, subresources={"status"})
    emu.resources["v1/configmaps"] = kmock.ResourceInfo(kind="ConfigMap", namespaced=True)
    emu.resources["v1/services"] = kmock.ResourceInfo(kind="Service", namespaced=True)
    emu.resources["v1/events"] = kmock.ResourceInfo(kind="Event", namespaced=True)
    emu.resources["v1/namespaces"] = kmock.ResourceInfo(
        kind="Namespace", namespaced=False
    )  # kopf waits for it


class Api:
    """A small async JSON client for the tests and the fake control plane."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = aiohttp.ClientSession(headers={"User-Agent": HARNESS_AGENT})

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None, merge: bool = False) -> Any:
        headers = {"Content-Type": "application/merge-patch+json" if merge else "application/json"}
        async with self.session.request(
            method, self.url + path, data=None if body is None else json.dumps(body), headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status == 404:
                return None
            if resp.status >= 400:
                raise RuntimeError(f"{method} {path}: {resp.status} {text[:500]}")
            return json.loads(text) if text else None

    async def list(self, kind: str) -> list[dict[str, Any]]:
        out = await self.call("GET", PATHS[kind])
        return [o for o in (out or {}).get("items", []) if o]

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return await self.call("GET", f"{PATHS[kind]}/{name}")

    async def patch(self, kind: str, name: str, body: dict[str, Any]) -> Any:
        return await self.call("PATCH", f"{PATHS[kind]}/{name}", body, merge=True)


class OperatorThread:
    """The real operator (kopf + our handlers) in its own thread and event loop, restartable."""

    def __init__(self, url: str, defaults: OperatorDefaults | None = None) -> None:
        self.url = url
        self.defaults = defaults or OperatorDefaults(
            trainer_image="tao-trainer:test", serving_image="vllm:test"
        )
        self.thread: threading.Thread | None = None
        self.stop_flag: threading.Event | None = None

    def start(self) -> None:
        registry = build_registry(
            self.defaults, server=self.url, safety_interval=2.0, metrics_port=0, namespaces=[NS]
        )

        @kopf.on.startup(registry=registry)
        def watch_timeout(settings: kopf.OperatorSettings, **_: Any) -> None:
            settings.watching.server_timeout = 30

        self.stop_flag = threading.Event()
        coro = kopf.operator(registry=registry, standalone=True, namespaces=[NS], stop_flag=self.stop_flag)
        self.thread = threading.Thread(target=asyncio.run, args=(coro,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        assert self.stop_flag is not None and self.thread is not None
        self.stop_flag.set()
        self.thread.join(timeout=30)


class ControlPlane:
    """Plays the Job controller + kubelet (pods run as local processes), the Deployment controller and the GC."""

    def __init__(self, api: Api, env: dict[str, str]) -> None:
        self.api = api
        self.env = env
        self.started: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []
        self.pod_log: list[tuple[str, int, int]] = []  # (job, index, exit code)
        self.pods: dict[str, asyncio.subprocess.Process] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix="tao-pods-"))
        self.task: asyncio.Task[None] | None = None
        # Opt-in (it costs a model load): run each rolled-out Deployment's model behind a real HTTP server, `tao
        # serve` standing in for vLLM, with the pod's capture proxy started from the manifest in front of it.
        self.serve_models = False
        self.endpoints: dict[str, str] = {}  # Deployment name -> base URL clients use (the proxy's, if any)
        self.servers: dict[str, list[asyncio.subprocess.Process]] = {}
        # Jobs whose pods wait on an image that cannot be pulled (ImagePullBackOff) until taken out of the set.
        self.unpullable: set[str] = set()

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        for t in [*self.tasks, *([self.task] if self.task else [])]:
            t.cancel()
        await asyncio.gather(*self.tasks, *([self.task] if self.task else []), return_exceptions=True)
        for name in list(self.servers):
            await self._stop_servers(name)
        for (
            proc
        ) in self.pods.values():  # a pod still running (a continuous TAOJob's watch) dies with the node
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def _loop(self) -> None:
        while True:
            for job in await self.api.list("jobs"):
                name = job["metadata"]["name"]
                if name not in self.started and not _finished(job):
                    self.started.add(name)
                    self.tasks.append(asyncio.create_task(self._run_job(job)))
            for dep in await self.api.list("deployments"):
                await self._roll(dep)
            await asyncio.sleep(0.05)

    async def _run_job(self, job: dict[str, Any]) -> None:
        name, spec = job["metadata"]["name"], job["spec"]
        pod_spec = spec["template"]["spec"]
        container = pod_spec["containers"][0]
        config_map = next(v["configMap"]["name"] for v in pod_spec.get("volumes", []) if "configMap" in v)
        config = (await self.api.get("configmaps", config_map))["data"]["config.json"]
        config_path = self.workdir / f"{name}.json"
        config_path.write_text(config)
        backoff, failures = spec.get("backoffLimit", 6), 0
        for index in range(spec.get("completions", 1)):
            while True:
                while (await self.api.get("jobs", name) or {}).get("spec", {}).get("suspend"):
                    await asyncio.sleep(0.05)  # a suspended Job gets no new pods
                code = await self._run_pod(job, container, index, config_path, attempt=failures)
                if code == 0:
                    break
                failures += 1
                if failures > backoff:
                    await self.api.patch(
                        "jobs",
                        name,
                        {
                            "status": {
                                "failed": failures,
                                "conditions": [
                                    {
                                        "type": "Failed",
                                        "status": "True",
                                        "reason": "BackoffLimitExceeded",
                                        "lastTransitionTime": now(),
                                    }
                                ],
                            }
                        },
                    )
                    return
        await self.api.patch(
            "jobs",
            name,
            {
                "status": {
                    "succeeded": spec.get("completions", 1),
                    "failed": failures,
                    "completionTime": now(),
                    "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now()}],
                }
            },
        )

    async def _run_pod(
        self, job: dict[str, Any], container: dict[str, Any], index: int, config: Path, attempt: int
    ) -> int:
        job_name = job["metadata"]["name"]
        pod_name = f"{job_name}-{index}-{attempt}-{uuid.uuid4().hex[:5]}"
        await self.api.call(
            "POST",
            PATHS["pods"],
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name,
                    "namespace": NS,
                    "labels": {
                        "job-name": job_name,
                        "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
                        **job["spec"]["template"]["metadata"].get("labels", {}),
                    },
                    "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
                    "ownerReferences": [job_owner(job)],
                },
                "spec": job["spec"]["template"]["spec"],
            },
        )
        if job_name in self.unpullable:
            waiting = {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}
            await self.api.patch(
                "pods", pod_name, {"status": {"containerStatuses": [{"state": {"waiting": waiting}}]}}
            )
            while job_name in self.unpullable:
                await asyncio.sleep(0.05)
        term = self.workdir / f"{pod_name}.termination"
        env = dict(self.env)
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
        env |= {
            "JOB_COMPLETION_INDEX": str(index),
            "TAO_RESULT_PATH": str(term),
            "HOME": str(self.workdir),
            "HF_HOME": str(self.workdir / "hf"),
            "TAO_CACHE_DIR": str(self.workdir / "cache"),
        }
        cmd = [
            a.replace("/etc/tao/config.json", str(config))
            for a in container["command"] + container.get("args", [])
        ]
        if cmd[0] == "tao-stage":
            cmd = [sys.executable, "-m", "tao_trainer.cli", *cmd[1:]]
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        self.pods[pod_name] = proc
        _, err = await proc.communicate()
        code = proc.returncode or 0
        message = term.read_text() if term.exists() else err.decode()[-1000:]
        self.pod_log.append((job_name, index, code))
        await self.api.patch(
            "pods",
            pod_name,
            {
                "status": {
                    "phase": "Succeeded" if code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "ready": False,
                            "restartCount": 0,
                            "image": container["image"],
                            "imageID": "",
                            "state": {
                                "terminated": {
                                    "exitCode": code,
                                    "reason": "Completed" if code == 0 else "Error",
                                    "message": message,
                                    "finishedAt": now(),
                                }
                            },
                        }
                    ],
                }
            },
        )
        return code

    async def _roll(self, dep: dict[str, Any]) -> None:
        """A Deployment becomes available once its init container fetched the model (run here for real)."""
        meta, st = dep["metadata"], dep.get("status") or {}
        if st.get("observedGeneration") == meta.get("generation"):
            return
        for init in dep["spec"]["template"]["spec"].get("initContainers", []):
            cmd = [a.replace("/models", str(self.workdir / meta["name"] / "models")) for a in init["command"]]
            if cmd[0] == "tao-stage":
                cmd = [sys.executable, "-m", "tao_trainer.cli", *cmd[1:]]
            proc = await asyncio.create_subprocess_exec(
                *cmd, env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            if await proc.wait() != 0:
                return  # stays unavailable, as a crash-looping init container would
        if self.serve_models:
            await self._serve(dep)
        n = dep["spec"].get("replicas", 1)
        await self.api.patch(
            "deployments",
            meta["name"],
            {
                "status": {
                    "observedGeneration": meta.get("generation"),
                    "replicas": n,
                    "updatedReplicas": n,
                    "readyReplicas": n,
                    "availableReplicas": n,
                }
            },
        )

    async def _serve(self, dep: dict[str, Any]) -> None:
        """Start the pod's servers on local ports: the model (`tao serve`, for vLLM) and, if the manifest has one,
        the capture container with exactly its arguments but for the two addresses that differ outside a pod."""
        name = dep["metadata"]["name"]
        await self._stop_servers(name)
        pod_spec = dep["spec"]["template"]["spec"]
        vllm = next(c for c in pod_spec["containers"] if c["name"] == "vllm")
        served_name = vllm["args"][vllm["args"].index("--served-model-name") + 1]
        model_dir = self.workdir / name / "models" / "model"
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tao_operator.cli",
            "serve",
            str(model_dir),
            "--port",
            "0",
            "--served-model-name",
            served_name,
            "--quiet",
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.servers[name] = [server]
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), timeout=120)).decode()
        model_url = line.rsplit(" at ", 1)[1].strip()  # "serving NAME at http://127.0.0.1:PORT/v1"
        url = model_url
        capture = next((c for c in pod_spec["containers"] if c["name"] == "capture"), None)
        if capture is not None:
            port = _free_port()
            args = list(capture["args"])
            args[args.index("--upstream") + 1] = model_url.removesuffix("/v1")
            args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
            env = dict(self.env) | {v["name"]: v["value"] for v in capture.get("env", []) if "value" in v}
            env |= {"HOME": str(self.workdir), "TAO_CACHE_DIR": str(self.workdir / "cache")}
            proxy = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tao_trainer.cli",
                *args,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            self.servers[name].append(proxy)
            url = f"http://127.0.0.1:{port}/v1"
            await eventually(lambda: _answers(f"http://127.0.0.1:{port}/capture/health"), timeout=60)
        self.endpoints[name] = url

    async def _stop_servers(self, name: str) -> None:
        for proc in self.servers.pop(name, []):
            if proc.returncode is None:
                proc.terminate()  # SIGTERM: the proxy flushes what it holds, as in a pod's shutdown
                try:
                    await asyncio.wait_for(proc.wait(), timeout=15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        self.endpoints.pop(name, None)

    async def collect_garbage(self, owner_uid: str) -> list[str]:
        """What the garbage collector does after an owner is deleted: delete its dependents."""
        removed = []
        for kind in ("jobs", "configmaps", "deployments", "services", "pods"):
            for obj in await self.api.list(kind):
                owners = obj["metadata"].get("ownerReferences") or []
                if any(o.get("uid") == owner_uid for o in owners):
                    await self.api.call("DELETE", f"{PATHS[kind]}/{obj['metadata']['name']}")
                    removed.append(f"{kind}/{obj['metadata']['name']}")
        return removed


def job_owner(job: dict[str, Any]) -> dict[str, Any]:
    """The ownerReference the Job controller puts on the pods it creates."""
    meta = job["metadata"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _finished(job: dict[str, Any]) -> bool:
    return any(
        c.get("status") == "True" and c.get("type") in ("Complete", "Failed")
        for c in (job.get("status") or {}).get("conditions") or []
    )


async def eventually(check: Callable[[], Any], timeout: float = 120.0, interval: float = 0.1) -> Any:
    """Poll an async or sync check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def stage_env() -> dict[str, str]:
    return os.environ | {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


# Every API call the operator made in the emulated-cluster tests, as (verb, group, resource); the chart's RBAC is
# tested against this file, and a test fails if the operator makes a call missing from it (TAO_RECORD_API=1 adds
# them).
API_CALLS = Path(__file__).parent / "operator" / "api_calls.json"


def check_recorded_calls(calls: set[tuple[str, str, str]]) -> None:
    recorded = {tuple(c) for c in json.loads(API_CALLS.read_text())} if API_CALLS.exists() else set()
    if os.environ.get("TAO_RECORD_API") == "1":
        API_CALLS.write_text(json.dumps(sorted(recorded | calls), indent=1) + "\n")
        return
    missing = calls - recorded
    assert not missing, (
        f"API calls not in {API_CALLS.name} (and so not in the chart's RBAC): {sorted(missing)}"
    )

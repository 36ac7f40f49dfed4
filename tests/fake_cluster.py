"""An in-memory API server with the `Cluster` interface, a fault injector, and an instant control plane.

The fault suite drives the real `Reconciler` against it: no HTTP, no kopf, no stage process, so that hundreds of
injected faults run in seconds. Semantics follow the API server where the operator depends on them: uids and
generations on create, 409 on a taken name, RFC 7386 merge patches, label selection on lists.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tao_operator.cluster import ApiError
from tao_trainer.contract import StageResult

Key = tuple[str, str, str]  # (resource, namespace, name)
Call = tuple[str, str]  # (verb, resource[/status])


class Crash(Exception):
    """The operator process died at this point."""


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


@dataclass
class Fault:
    """At the `nth` call (0-based) of `call`: crash `before` or `after` it, or answer `status` instead."""

    call: Call
    nth: int
    when: str = "before"  # before | after | error
    status: int = 500
    times: int = 1  # how many calls in a row (an error that lasts)


@dataclass
class FakeCluster:
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    calls: Counter[Call] = field(default_factory=Counter)
    created: Counter[Key] = field(default_factory=Counter)
    faults: list[Fault] = field(default_factory=list)
    log: list[Call] = field(default_factory=list)
    _rv: Any = field(default_factory=lambda: itertools.count(1))

    def _enter(self, call: Call) -> Fault | None:
        n = self.calls[call]
        self.calls[call] += 1
        self.log.append(call)
        for f in self.faults:
            if f.call == call and f.nth <= n < f.nth + f.times:
                if f.when == "before":
                    raise Crash(f"before {call} #{n}")
                if f.when == "error":
                    raise ApiError(f.status, call[0].upper(), call[1], f"injected {f.status}")
                return f
        return None

    @staticmethod
    def _leave(fault: Fault | None, call: Call) -> None:
        if fault is not None and fault.when == "after":
            raise Crash(f"after {call}")

    async def get(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        fault = self._enter(("get", resource))
        obj = self.objects.get((resource, namespace, name))
        self._leave(fault, ("get", resource))
        return copy.deepcopy(obj)

    async def create(self, manifest: dict[str, Any]) -> bool:
        resource = {
            "Job": "jobs",
            "ConfigMap": "configmaps",
            "Deployment": "deployments",
            "Service": "services",
        }[manifest["kind"]]
        fault = self._enter(("create", resource))
        key = (resource, manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if fault is not None and fault.when == "error" and fault.status == 409:
            return False
        if key in self.objects:
            self._leave(fault, ("create", resource))
            return False
        self.put(resource, manifest)
        self.created[key] += 1
        self._leave(fault, ("create", resource))
        return True

    def put(self, resource: str, manifest: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(manifest)
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("namespace", "default")
        meta.update(generation=1, resourceVersion=str(next(self._rv)))
        self.objects[(resource, meta["namespace"], meta["name"])] = obj
        return obj

    async def patch(
        self, resource: str, namespace: str, name: str, body: dict[str, Any], sub: str | None = None
    ) -> Any:
        call = ("patch", resource + (f"/{sub}" if sub else ""))
        fault = self._enter(call)
        obj = self.objects.get((resource, namespace, name))
        if obj is None:
            raise ApiError(404, "PATCH", name, "not found")
        if "spec" in body and sub is None:
            obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
        merge(obj, body)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))  # as an API server: every write, a version
        self._leave(fault, call)
        return copy.deepcopy(obj)

    async def list(self, resource: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        fault = self._enter(("list", resource))
        out = [
            copy.deepcopy(o)
            for (r, ns, _), o in self.objects.items()
            if r == resource
            and ns == namespace
            and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]
        self._leave(fault, ("list", resource))
        return out

    async def close(self) -> None:
        pass

    # ------------------------------------------------------------------------------ the control plane

    def delete(self, resource: str, name: str) -> None:
        self.objects.pop((resource, "default", name), None)

    def jobs(self) -> dict[str, dict[str, Any]]:
        return {k[2]: o for k, o in self.objects.items() if k[0] == "jobs"}


def stage_result(name: str, stage: str, round_: int) -> StageResult:
    """What a stage reports, instantly: every round is promoted."""
    return StageResult(
        stage=stage,  # type: ignore[arg-type]
        round=round_,
        counts={"prompts": 10, "candidates": 40, "examples": 10},
        metrics={"meanScore": 0.5, "challenger.score": 0.6, "champion.score": 0.5},
        outputs={"model": f"file:///store/{name}/round-{round_:03d}/train/model"} if stage == "train" else {},
        promoted=True if stage == "evaluate" else None,
        message=f"{stage} done",
    )


ResultFor = Callable[[dict[str, Any]], StageResult]


def settle(
    cluster: FakeCluster, result_for: ResultFor | None = None, keep_pods: Callable[[str], bool] | None = None
) -> None:
    """The Job controller and kubelet: each unsuspended, unfinished Job gets its pods (with the result as
    their termination message) and completes; each Deployment becomes available."""
    for job in list(cluster.jobs().values()):
        st = job.setdefault("status", {})
        if st.get("conditions") or job["spec"].get("suspend") or job["metadata"].get("deletionTimestamp"):
            continue
        labels = job["metadata"]["labels"]
        stage, round_ = labels["tao.dev/stage"], int(labels["tao.dev/round"])
        result = result_for(job) if result_for else stage_result(labels["tao.dev/job"], stage, round_)
        for index in range(job["spec"].get("completions", 1)):
            if keep_pods is None or keep_pods(job["metadata"]["name"]):
                cluster.put(
                    "pods", pod(job, index, json.dumps(result.model_dump(mode="json", by_alias=True)))
                )
        outcome = "Complete" if result.ok else "Failed"
        st["conditions"] = [{"type": outcome, "status": "True"}]
    for key, dep in list(cluster.objects.items()):
        if key[0] == "deployments":
            n = dep["spec"].get("replicas", 1)
            dep["status"] = {
                "observedGeneration": dep["metadata"]["generation"],
                "updatedReplicas": n,
                "availableReplicas": n,
            }


def pod(
    job: dict[str, Any], index: int, message: str, exit_code: int = 0, name: str | None = None
) -> dict[str, Any]:
    meta = job["metadata"]
    return {
        "kind": "Pod",
        "metadata": {
            "name": name or f"{meta['name']}-{index}-{uuid.uuid4().hex[:5]}",
            "namespace": "default",
            "labels": {"job-name": meta["name"], "batch.kubernetes.io/controller-uid": meta.get("uid", "")},
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta.get("uid"),
                    "controller": True,
                }
            ],
        },
        "status": {
            "containerStatuses": [{"state": {"terminated": {"exitCode": exit_code, "message": message}}}]
        },
    }

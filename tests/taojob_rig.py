"""The fault suites' rig: a TAOJob manifest, the real Reconciler on the in-memory API server (fake_cluster.py),
and a driver that reconciles and lets the control plane act pass after pass (tests/operator/test_faults.py,
test_kueue.py, test_snapshot.py)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import kopf
from fake_cluster import Crash, FakeCluster, settle

from tao_operator.builders import OperatorDefaults
from tao_operator.cluster import ApiError
from tao_operator.reconciler import Reconciler

DEFAULTS = OperatorDefaults(trainer_image="tao-trainer:test", serving_image="vllm:test")
UID = "taojob-uid-1"


def taojob(name: str = "arith", uid: str = UID, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"uri": "file:///base"},
        "prompts": {"uri": "file:///p.jsonl"},
        "storage": {"uri": "file:///store"},
        "rounds": 2,
        "preflight": {"enabled": False},
        "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
        "generation": {"shards": 2},
    }
    body.update(spec)
    return {
        "apiVersion": "tao.dev/v1alpha1",
        "kind": "TAOJob",
        "metadata": {"name": name, "namespace": "default", "uid": uid, "generation": 1},
        "spec": body,
    }


def setup(doc: dict[str, Any] | None = None) -> tuple[FakeCluster, Reconciler, list[tuple[str, str, str]]]:
    cluster = FakeCluster()
    cluster.objects[("taojobs", "default", "arith")] = doc or taojob()
    events: list[tuple[str, str, str]] = []
    rec = Reconciler(
        cluster, DEFAULTS, post_event=lambda _b, kind, reason, msg: events.append((kind, reason, msg))
    )
    return cluster, rec, events


def state(cluster: FakeCluster, name: str = "arith") -> dict[str, Any]:
    return cluster.objects[("taojobs", "default", name)].get("status") or {}


def condition(cluster: FakeCluster, type_: str) -> dict[str, Any]:
    return next((c for c in state(cluster).get("conditions", []) if c["type"] == type_), {})


async def drive(cluster: FakeCluster, rec: Reconciler, passes: int = 60, **settle_kw: Any) -> str:
    """Reconcile and let the control plane act, pass after pass, swallowing crashes (a restarted operator)
    and errors (kopf's retry), until the TAOJob is finished and a further pass changes nothing."""
    quiet = 0
    for _ in range(passes):
        before = copy.deepcopy(state(cluster))
        try:
            await rec.reconcile("default", "arith")
        except (Crash, ApiError, kopf.TemporaryError):
            quiet = 0
            continue
        settle(cluster, **settle_kw)
        phase = state(cluster).get("phase")
        quiet = quiet + 1 if state(cluster) == before and phase in ("Succeeded", "Failed") else 0
        if quiet >= 2:
            break
    check_calls(cluster)
    return str(state(cluster).get("phase"))


API_CALLS = json.loads((Path(__file__).parent / "operator" / "api_calls.json").read_text())
GROUPS = {
    "jobs": "batch",
    "deployments": "apps",
    "taojobs": "tao.dev",
    "taojobs/status": "tao.dev",
    "workloads": "kueue.x-k8s.io",
}


def check_calls(cluster: FakeCluster) -> None:
    """Every call made here is in api_calls.json, and so in the chart's RBAC (tests/unit/test_chart.py)."""
    missing = {(v, GROUPS.get(r, ""), r) for v, r in cluster.log} - {tuple(c) for c in API_CALLS}
    assert not missing, f"API calls not in api_calls.json: {sorted(missing)}"


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """Status without times (a faulty run takes more passes)."""
    out = copy.deepcopy(status)
    for c in out.get("conditions", []):
        c.pop("lastTransitionTime", None)
    out["conditions"] = sorted(out.get("conditions", []), key=lambda c: c["type"])
    for r in out.get("rounds", []):
        for s in r.get("stages", []):
            s.pop("startedAt", None)
            s.pop("finishedAt", None)
    return out


def baseline() -> tuple[FakeCluster, dict[str, Any]]:
    cluster, rec, _ = setup()
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"
    return cluster, comparable(state(cluster))

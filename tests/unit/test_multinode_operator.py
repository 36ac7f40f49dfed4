"""The operator creates a multi-node train stage's headless Service with its Job, owned by the TAOJob, and stops
at a Service of that name that is not its own (the real Reconciler against the in-memory API server)."""

from __future__ import annotations

import asyncio
from typing import Any

from fake_cluster import FakeCluster, settle

from tao_operator.builders import OperatorDefaults
from tao_operator.reconciler import Reconciler


def _taojob(nodes: int) -> dict[str, Any]:
    return {
        "apiVersion": "tao.dev/v1alpha1",
        "kind": "TAOJob",
        "metadata": {"name": "big", "namespace": "default", "uid": "uid-1", "generation": 1},
        "spec": {
            "model": {"uri": "file:///base"},
            "prompts": {"uri": "file:///p.jsonl"},
            "storage": {"uri": "file:///store"},
            "rounds": 1,
            "preflight": {"enabled": False},
            "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
            "training": {"strategy": "fsdp"},
            "pods": {"train": {"nodes": nodes, "gpus": 8}},
        },
    }


def _run(cluster: FakeCluster, passes: int = 12) -> None:
    rec = Reconciler(cluster, OperatorDefaults(), post_event=lambda *_: None)
    for _ in range(passes):
        asyncio.run(rec.reconcile("default", "big"))
        settle(cluster)


def test_a_multinode_train_stage_gets_its_headless_service_owned_by_the_taojob() -> None:
    cluster = FakeCluster()
    cluster.objects[("taojobs", "default", "big")] = _taojob(nodes=2)
    _run(cluster)
    train = cluster.jobs()["big-r1-train"]
    assert (train["spec"]["completionMode"], train["spec"]["completions"]) == ("Indexed", 2)
    service = cluster.objects[("services", "default", "big-r1-train")]
    assert service["spec"]["clusterIP"] == "None"
    (owner,) = service["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("TAOJob", "uid-1", True)
    assert train["spec"]["template"]["spec"]["subdomain"] == "big-r1-train"


def test_one_node_creates_no_service() -> None:
    cluster = FakeCluster()
    cluster.objects[("taojobs", "default", "big")] = _taojob(nodes=1)
    _run(cluster)
    assert "big-r1-train" in cluster.jobs()
    assert ("services", "default", "big-r1-train") not in cluster.objects  # (big-serve is serving's)


def test_a_foreign_service_of_that_name_stops_the_stage_before_its_job() -> None:
    cluster = FakeCluster()
    cluster.objects[("taojobs", "default", "big")] = _taojob(nodes=2)
    foreign = {"kind": "Service", "metadata": {"name": "big-r1-train", "namespace": "default"}, "spec": {}}
    cluster.put("services", foreign)
    _run(cluster)
    assert "big-r1-train" not in cluster.jobs()  # never a Job whose pods would meet at someone else's Service
    status = cluster.objects[("taojobs", "default", "big")]["status"]
    assert "big-r1-train" in str(status)

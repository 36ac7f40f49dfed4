"""The operator-side allow-list: the pure check (tao_operator.allowlist) and, against the in-memory API server,
that a refused TAOJob creates nothing and runs once fixed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fake_cluster import FakeCluster, settle

from tao_operator.allowlist import refusals
from tao_operator.api import parse_taojob
from tao_operator.builders import OperatorDefaults
from tao_operator.reconciler import Reconciler

ALLOW = OperatorDefaults(
    trainer_image="reg.example/tao/trainer:1",
    serving_image="vllm/vllm-openai:v0.33.0",
    allowed_image_prefixes="reg.example/ml/, mirror.example/",
    allowed_service_accounts="tao-runner,tao-serving",
)


def body(**spec: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model": {"uri": "file:///base"},
        "prompts": {"uri": "file:///p.jsonl"},
        "storage": {"uri": "file:///store"},
        "rounds": 1,
        "preflight": {"enabled": False},
        "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
    }
    doc.update(spec)
    return {
        "apiVersion": "tao.dev/v1alpha1",
        "kind": "TAOJob",
        "metadata": {"name": "arith", "namespace": "default", "uid": "uid-1", "generation": 1},
        "spec": doc,
    }


def check(defaults: OperatorDefaults = ALLOW, **spec: Any) -> list[str]:
    return refusals(parse_taojob(body(**spec), "test"), defaults)


def test_an_empty_allow_list_allows_anything() -> None:
    pods = {"default": {"image": "evil.example/x", "serviceAccountName": "cluster-admin-ish"}}
    assert check(OperatorDefaults(), pods=pods, serving={"image": "evil.example/vllm"}) == []


def test_nothing_requested_is_allowed() -> None:
    assert check() == []


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"pods": {"default": {"image": "reg.example/ml/trainer:2"}}}, id="default-image"),
        pytest.param({"pods": {"train": {"image": "mirror.example/trainer@sha256:ab"}}}, id="stage-image"),
        pytest.param({"serving": {"image": "reg.example/ml/vllm:1"}}, id="serving-image"),
        pytest.param(
            {"pods": {"train": {"image": "reg.example/tao/trainer:1"}}}, id="operator-default-image"
        ),
        pytest.param({"serving": {"image": "vllm/vllm-openai:v0.33.0"}}, id="operator-serving-image"),
        pytest.param({"pods": {"default": {"serviceAccountName": "tao-runner"}}}, id="service-account"),
        pytest.param({"serving": {"pod": {"serviceAccountName": "tao-serving"}}}, id="serving-account"),
    ],
)
def test_allowed_requests(spec: dict[str, Any]) -> None:
    assert check(**spec) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"pods": {"default": {"image": "evil.example/x:1"}}}, "spec.pods.default.image"),
        ({"pods": {"evaluate": {"image": "reg.example/mlx/trainer"}}}, "spec.pods.evaluate.image"),
        ({"pods": {"watch": {"image": "reg.example/tao/trainer:2"}}}, "spec.pods.watch.image"),
        ({"serving": {"image": "vllm/vllm-openai:latest"}}, "spec.serving.image"),
        ({"serving": {"pod": {"image": "evil.example/vllm"}}}, "spec.serving.pod.image"),
        ({"pods": {"train": {"serviceAccountName": "default"}}}, "spec.pods.train.serviceAccountName"),
        ({"serving": {"pod": {"serviceAccountName": "admin"}}}, "spec.serving.pod.serviceAccountName"),
    ],
)
def test_refused_requests_name_the_field(spec: dict[str, Any], field: str) -> None:
    (message,) = check(**spec)
    assert message.startswith(f"{field} ")


def test_every_refusal_is_listed() -> None:
    pods = {"default": {"image": "a/b", "serviceAccountName": "x"}, "score": {"image": "c/d"}}
    assert len(check(pods=pods, serving={"image": "e/f"})) == 4


def test_the_allow_list_reads_comma_separated_environment_values() -> None:
    d = OperatorDefaults.model_validate(
        {"allowed_image_prefixes": " a/ ,,b: ", "allowed_service_accounts": ""}
    )
    assert d.allowed_image_prefixes == ("a/", "b:") and d.allowed_service_accounts == ()


def test_a_refused_taojob_creates_nothing_and_runs_once_fixed() -> None:
    cluster = FakeCluster()
    doc = body(pods={"train": {"image": "evil.example/x:1", "serviceAccountName": "admin"}})
    cluster.objects[("taojobs", "default", "arith")] = doc
    events: list[tuple[str, str, str]] = []
    rec = Reconciler(
        cluster, ALLOW, post_event=lambda _b, kind, reason, msg: events.append((kind, reason, msg))
    )
    for _ in range(3):
        asyncio.run(rec.reconcile("default", "arith"))
        settle(cluster)
    assert set(cluster.objects) == {("taojobs", "default", "arith")}, "a refused TAOJob created something"
    status = doc["status"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "NotAllowed"
    assert "spec.pods.train.image 'evil.example/x:1'" in degraded["message"]
    assert "spec.pods.train.serviceAccountName 'admin'" in degraded["message"]
    assert status["phase"] == "Pending" and not status.get("specDigest")
    assert ("Warning", "NotAllowed") in {(k, r) for k, r, _ in events}
    # Fixing the TAOJob is not a refused edit of a started run: the run starts.
    doc["spec"]["pods"] = {"train": {"image": "reg.example/ml/trainer:2", "serviceAccountName": "tao-runner"}}
    doc["metadata"]["generation"] = 2
    asyncio.run(rec.reconcile("default", "arith"))
    assert cluster.jobs(), "the fixed TAOJob started no stage"
    degraded = next(c for c in doc["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"

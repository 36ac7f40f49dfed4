"""The manifest builders: pure functions from a TAOJob (and an action) to Kubernetes objects.

Every manifest they can emit is validated offline against the real Kubernetes schemas (kubernetes-validate,
strict mode: unknown fields are errors), so a typo or a misplaced field fails here, not on a cluster.
A golden file shows a reviewer the exact shape of a representative stage Job and serving Deployment;
regenerate with `TAO_UPDATE_GOLDEN=1 pytest tests/unit/test_builders.py`.
"""

from __future__ import annotations

import doctest
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from tao_operator.api import PodSettings, SpecError, TAOJob, parse_taojob
from tao_operator.builders import (
    OperatorDefaults,
    child_labels,
    child_name,
    effective_pod_settings,
    owner_reference,
    serving_deployment,
    serving_service,
    serving_url,
    stage_configmap,
    stage_job,
)
from tao_trainer.contract import StageConfig
from tao_trainer.spec import STAGES

GOLDEN = Path(__file__).parent / "golden"
UID = "0b8f6a52-7f3c-4d0e-9a55-2d6c1f0e9b11"
SECRET_NAME = "tao-storage-creds"
DEFAULTS = OperatorDefaults()
# The version the product targets, and the newest the validator ships (the set collapses if they agree).
K8S_VERSIONS = sorted({"1.33.0", latest_version()})
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

# Every PodSettings field set (test_full_settings_set_every_field keeps this honest as api.py grows).
FULL_SETTINGS: dict[str, Any] = {
    "image": "registry.example.com/tao/trainer:custom",
    "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
    "gpus": 2,
    "nodeSelector": {"node.kubernetes.io/instance-type": "g5.12xlarge"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
                        ]
                    }
                ]
            }
        }
    },
    "priorityClassName": "batch-low",
    "labels": {"kueue.x-k8s.io/queue-name": "team-a"},
    "annotations": {"example.com/owner": "ml-team"},
    "imagePullSecrets": ["regcred"],
    "serviceAccountName": "tao-runner",
    "env": [
        {"name": "EXTRA", "value": "1"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ],
    "backoffLimit": 5,
    "activeDeadlineSeconds": 7200,
}


def taojob(name: str = "demo", namespace: str = "ml", uid: str | None = UID, **spec: Any) -> TAOJob:
    body: dict[str, Any] = {
        "model": {"uri": "s3://models/base"},
        "prompts": {"uri": "s3://data/prompts.jsonl"},
        "storage": {"uri": "s3://runs/tao"},
        "scoring": {"scorers": [{"type": "regex", "pattern": r".+"}]},
    }
    body.update(spec)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if uid is not None:
        metadata["uid"] = uid
    return parse_taojob(
        {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": metadata, "spec": body}
    )


def config(job: TAOJob, stage: str, round_: int = 1, model_uri: str = "s3://models/base") -> StageConfig:
    run_uri = f"{job.spec.storage.uri}/{job.metadata.namespace}/{job.metadata.name}/{job.metadata.uid}"
    return StageConfig(stage=stage, round=round_, run_uri=run_uri, model_uri=model_uri, spec=job.spec)


def build(job: TAOJob, stage: str, round_: int = 1, defaults: OperatorDefaults = DEFAULTS) -> dict[str, Any]:
    return stage_job(job, config(job, stage, round_), defaults)


def pod(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]


def container(manifest: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = pod(manifest)["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


# --------------------------------------------------------------------------------------------- every manifest validates


def all_manifests() -> list[tuple[str, dict[str, Any]]]:
    """Everything the builders can emit, in each shape that matters."""
    out: list[tuple[str, dict[str, Any]]] = []
    bare = taojob()
    full_default = taojob(pods={"default": FULL_SETTINGS}, credentials={"secretRef": {"name": SECRET_NAME}})
    ttl = OperatorDefaults(ttl_seconds_after_finished=86400)
    for stage in STAGES:
        out.append((f"job-{stage}-bare", build(bare, stage)))
        out.append((f"configmap-{stage}", stage_configmap(bare, config(bare, stage))))
        out.append((f"job-{stage}-full-default", build(full_default, stage, defaults=ttl)))
        out.append(
            (f"job-{stage}-full-stage", build(taojob(pods={stage: FULL_SETTINGS}, suspend=True), stage, 7))
        )
        for field, value in FULL_SETTINGS.items():
            out.append((f"job-{stage}-only-{field}", build(taojob(pods={stage: {field: value}}), stage)))
        out.append(
            (f"job-{stage}-gpus4", build(taojob(pods={stage: {"gpus": 4}}, generation={"shards": 8}), stage))
        )
    serving_full = {
        "replicas": 3,
        "port": 8080,
        "servedModelName": "tuned",
        "image": "vllm/vllm-openai:v0.11.1",
        "args": ["--max-model-len", "4096"],
        "pod": FULL_SETTINGS,
    }
    storage_full = {
        "uri": "s3://runs/tao",
        "endpointUrl": "http://minio:9000",
        "region": "eu-1",
        "pathStyle": True,
    }
    full = taojob(
        serving=serving_full, storage=storage_full, credentials={"secretRef": {"name": SECRET_NAME}}
    )
    out.append(("deployment-bare", serving_deployment(bare, "s3://models/base", 0, DEFAULTS)))
    out.append(("deployment-full", serving_deployment(full, "s3://runs/tao/r1/model", 1, DEFAULTS)))
    for field, value in FULL_SETTINGS.items():
        one = taojob(serving={"pod": {field: value}})
        out.append((f"deployment-only-{field}", serving_deployment(one, "s3://m", 2, DEFAULTS)))
    out.append(("service-bare", serving_service(bare)))
    out.append(("service-full", serving_service(full)))
    captured = taojob(
        serving={"capture": {"enabled": True, "redact": None, "captureResponses": True}},
        prompts={"uri": "s3://data/prompts/"},
        credentials={"secretRef": {"name": SECRET_NAME}},
    )
    out.append(("deployment-capture", serving_deployment(captured, "s3://m", 1, DEFAULTS)))
    for stage in ("preflight", "watch"):
        out.append((f"job-{stage}", build(taojob(continuous={"minNewPrompts": 5}), stage, 2)))
    return out


MANIFESTS = all_manifests()


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("case", "manifest"), MANIFESTS, ids=[c for c, _ in MANIFESTS])
def test_manifest_is_valid_kubernetes(case: str, manifest: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize(("case", "manifest"), MANIFESTS, ids=[c for c, _ in MANIFESTS])
def test_manifest_shares_no_objects(case: str, manifest: dict[str, Any]) -> None:
    """A dict or list reached twice would let a caller's edit (kopf.adopt adds labels) change both places."""
    seen: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict | list):
            assert id(node) not in seen, f"{case}: an object appears twice"
            seen.add(id(node))
            for child in node.values() if isinstance(node, dict) else node:
                walk(child)

    walk(manifest)


def test_the_validator_does_reject_a_misplaced_field() -> None:
    """Guards the test above: strict mode must fail on an unknown field, or it proves nothing."""
    broken = build(taojob(), "train")
    container(broken)["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[0], strict=True)


def test_full_settings_set_every_field() -> None:
    assert PodSettings.model_validate(FULL_SETTINGS).model_fields_set == set(PodSettings.model_fields)


# --------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("length", [1, 20, 48, 57, 63, 64, 100, 253])
@pytest.mark.parametrize("round_", [1, 99, 1000])
@pytest.mark.parametrize("stage", STAGES)
def test_child_names_are_dns_labels_within_63(length: int, round_: int, stage: str) -> None:
    job_name = ("a1-" * 100)[:length].rstrip("-")
    name = child_name(job_name, round_, stage)
    assert DNS_LABEL.match(name), name
    assert len(name) <= 63
    assert name.endswith(f"-r{round_}-{stage}")
    assert name == child_name(job_name, round_, stage)  # deterministic
    if stage in ("generate", "score"):
        # Pods of an Indexed Job get the hostname "<job>-<index>", itself a DNS label.
        assert len(f"{name}-99999") <= 63


def test_short_child_names_follow_the_convention() -> None:
    assert child_name("demo", 3, "generate") == "demo-r3-generate"
    assert build(taojob(), "score", 2)["metadata"]["name"] == "demo-r2-score"


def test_child_names_are_distinct_across_rounds_stages_and_long_names() -> None:
    names = {child_name("demo", r, s) for r in range(1, 51) for s in STAGES}
    assert len(names) == 50 * len(STAGES)
    prefix = "x" * 60
    assert child_name(f"{prefix}-one", 1, "train") != child_name(f"{prefix}-two", 1, "train")


def test_longest_allowed_taojob_name_gives_valid_children() -> None:
    job = taojob(name="j" * 48, rounds=1000, generation={"shards": 1000})
    for stage in STAGES:
        manifest = build(job, stage, 1000)
        assert len(manifest["metadata"]["name"]) <= 63
        assert len(stage_configmap(job, config(job, stage, 1000))["metadata"]["name"]) <= 253
        assert all(len(v) <= 63 for v in manifest["metadata"]["labels"].values())
    assert len(serving_deployment(job, "s3://m", 1000, DEFAULTS)["metadata"]["name"]) <= 63


def test_serving_names_are_dns_1035_even_for_a_digit_first_taojob() -> None:
    for name in ("demo", "7b-tuner"):
        svc = serving_service(taojob(name=name))["metadata"]["name"]
        assert DNS_1035.match(svc) and len(svc) <= 63, svc
    assert serving_service(taojob())["metadata"]["name"] == "demo-serve"


def test_configmap_is_named_after_its_job_and_mounted_by_it() -> None:
    job = taojob()
    manifest = build(job, "prepare")
    cm = stage_configmap(job, config(job, "prepare"))
    assert cm["metadata"]["name"] == "demo-r1-prepare-config"
    volumes = {v["name"]: v for v in pod(manifest)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]


# --------------------------------------------------------------------------------------------- labels and ownership


def test_labels_name_the_job_round_and_stage() -> None:
    assert child_labels(taojob(), 2, "train") == {
        "tao.dev/job": "demo",
        "tao.dev/round": "2",
        "tao.dev/stage": "train",
        "app.kubernetes.io/name": "tao-operator",
        "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "train",
        "app.kubernetes.io/managed-by": "tao-operator",
    }


def test_every_child_is_owned_by_its_taojob_uid() -> None:
    expected = {
        "apiVersion": "tao.dev/v1alpha1",
        "kind": "TAOJob",
        "name": "demo",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert owner_reference(taojob()) == expected
    for case, manifest in MANIFESTS:
        assert manifest["metadata"]["ownerReferences"] == [expected], case
        assert manifest["metadata"]["namespace"] == "ml", case


def test_a_taojob_without_uid_cannot_own_children() -> None:
    with pytest.raises(ValueError, match="uid"):
        build(taojob(uid=None), "prepare")


def test_extra_labels_land_on_job_and_pod_but_never_replace_ours() -> None:
    labels = {"kueue.x-k8s.io/queue-name": "team-a", "tao.dev/job": "spoofed"}
    manifest = build(taojob(pods={"default": {"labels": labels}}), "train")
    for where in (manifest["metadata"], manifest["spec"]["template"]["metadata"]):
        assert where["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        assert where["labels"]["tao.dev/job"] == "demo"


# --------------------------------------------------------------------------------------------- pod settings


def test_stage_settings_merge_over_the_default_field_by_field() -> None:
    job = taojob(
        pods={
            "default": {
                "image": "img:default",
                "gpus": 1,
                "nodeSelector": {"pool": "gpu", "zone": "a"},
                "labels": {"team": "ml", "tier": "batch"},
                "annotations": {"a": "1"},
                "backoffLimit": 4,
            },
            "train": {
                "gpus": 8,
                "nodeSelector": {"pool": "big"},
                "labels": {"tier": "train"},
                "annotations": {"b": "2"},
            },
            "prepare": {"gpus": 0},
        }
    )
    train = effective_pod_settings(job, "train")
    assert train.image == "img:default"  # unset in the stage: the default's
    assert train.gpus == 8
    assert train.backoff_limit == 4
    assert train.node_selector == {"pool": "big"}  # replaced whole: a stage can drop a default constraint
    assert train.labels == {"team": "ml", "tier": "train"}  # merged, stage wins
    assert train.annotations == {"a": "1", "b": "2"}
    assert effective_pod_settings(job, "prepare").gpus == 0  # an explicit 0 overrides the default
    assert effective_pod_settings(job, "score") == job.spec.pods.default
    with pytest.raises(ValueError, match="unknown stage"):
        effective_pod_settings(job, "serve")


def _field_checks() -> dict[str, Callable[[dict[str, Any]], Any]]:
    """Where each PodSettings field lands in a stage Job; each returns the value found there."""
    return {
        "image": lambda m: container(m)["image"],
        "resources": lambda m: container(m)["resources"]["requests"]["cpu"],
        "gpus": lambda m: container(m)["resources"]["limits"]["nvidia.com/gpu"],
        "nodeSelector": lambda m: pod(m)["nodeSelector"],
        "tolerations": lambda m: pod(m)["tolerations"],
        "affinity": lambda m: pod(m)["affinity"],
        "priorityClassName": lambda m: pod(m)["priorityClassName"],
        "labels": lambda m: m["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"],
        "annotations": lambda m: m["spec"]["template"]["metadata"]["annotations"],
        "imagePullSecrets": lambda m: pod(m)["imagePullSecrets"],
        "serviceAccountName": lambda m: pod(m)["serviceAccountName"],
        "env": lambda m: container(m)["env"][-2:],
        "backoffLimit": lambda m: m["spec"]["backoffLimit"],
        "activeDeadlineSeconds": lambda m: m["spec"]["activeDeadlineSeconds"],
    }


_EXPECTED = {
    "resources": "2",
    "gpus": "2",
    "labels": "team-a",
    "imagePullSecrets": [{"name": "regcred"}],
}


@pytest.mark.parametrize("field", list(FULL_SETTINGS))
def test_each_pod_setting_lands_where_kubernetes_reads_it(field: str) -> None:
    check = _field_checks()[field]
    assert check(
        build(taojob(pods={"evaluate": {field: FULL_SETTINGS[field]}}), "evaluate")
    ) == _EXPECTED.get(field, FULL_SETTINGS[field])
    # Unset, it leaves no trace (or the operator's default).
    bare = build(taojob(), "evaluate")
    if field == "image":
        assert check(bare) == DEFAULTS.trainer_image
    elif field == "backoffLimit":
        assert check(bare) == DEFAULTS.backoff_limit
    elif field == "env":
        assert [e["name"] for e in container(bare)["env"]] == [
            "TAO_RESULT_PATH",
            "HOME",
            "HF_HOME",
            "TAO_CACHE_DIR",
            "TOKENIZERS_PARALLELISM",
        ]
    else:
        with pytest.raises(KeyError):
            check(bare)


def test_field_checks_cover_every_pod_setting() -> None:
    assert set(_field_checks()) == set(FULL_SETTINGS)


def test_user_env_follows_ours_and_replaces_a_default_but_not_the_result_path() -> None:
    user = [
        {"name": "HOME", "value": "/work"},
        {"name": "TAO_RESULT_PATH", "value": "/x"},
        {"name": "A", "value": "b"},
    ]
    env = container(build(taojob(pods={"default": {"env": user}}), "score"))["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))  # no duplicate names
    assert env_of({"env": env})["HOME"] == "/work"
    assert env_of({"env": env})["TAO_RESULT_PATH"] == "/dev/termination-log"
    assert names[-2:] == ["HOME", "A"]


# --------------------------------------------------------------------------------------------- stage Jobs


@pytest.mark.parametrize("stage", STAGES)
def test_generate_and_score_are_indexed_over_shards(stage: str) -> None:
    spec = build(taojob(generation={"shards": 7}), stage)["spec"]
    if stage in ("generate", "score"):
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == spec["parallelism"] == 7
    else:
        assert "completionMode" not in spec
        assert spec["completions"] == spec["parallelism"] == 1


def test_an_indexed_stage_refuses_an_explicit_shard_list() -> None:
    job = taojob(generation={"shards": 4})
    cfg = config(job, "generate").model_copy(update={"shards": [0, 1]})
    with pytest.raises(ValueError, match="shards"):
        stage_job(job, cfg, DEFAULTS)


@pytest.mark.parametrize("suspend", [True, False])
def test_suspend_propagates(suspend: bool) -> None:
    assert build(taojob(suspend=suspend), "generate")["spec"]["suspend"] is suspend


@pytest.mark.parametrize("stage", STAGES)
def test_the_pod_runs_the_stage_and_reports_through_the_termination_log(stage: str) -> None:
    manifest = build(taojob(), stage)
    c = container(manifest)
    assert pod(manifest)["restartPolicy"] == "Never"
    assert c["name"] == "stage"
    assert c["command"] == ["tao-stage", stage, "--config", "/etc/tao/config.json"]
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "File"
    assert env_of(c) == {
        "TAO_RESULT_PATH": "/dev/termination-log",
        "HOME": "/tmp",
        "HF_HOME": "/tmp/hf",
        "TAO_CACHE_DIR": "/tmp/cache",
        "TOKENIZERS_PARALLELISM": "false",
    }
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/tao"]["readOnly"] is True
    assert set(mounts) == {"/etc/tao", "/tmp"}
    assert "envFrom" not in c
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 2
    assert "ttlSecondsAfterFinished" not in spec  # never TTL-deleted unless the operator is told to
    assert "activeDeadlineSeconds" not in spec


@pytest.mark.parametrize(
    ("cache", "volume"),
    [
        ({"claimName": "tao-models"}, {"persistentVolumeClaim": {"claimName": "tao-models"}}),
        ({"hostPath": "/var/lib/tao"}, {"hostPath": {"path": "/var/lib/tao", "type": "DirectoryOrCreate"}}),
    ],
)
@pytest.mark.parametrize("stage", STAGES)
def test_a_cache_volume_holds_every_stages_downloads(
    stage: str, cache: dict[str, str], volume: dict[str, Any]
) -> None:
    """spec.storage.cache: every stage pod mounts the volume and keeps model (and hub) downloads there."""
    manifest = build(taojob(storage={"uri": "s3://runs/tao", "cache": cache}), stage)
    c = container(manifest)
    assert env_of(c)["TAO_CACHE_DIR"] == "/var/cache/tao"
    assert env_of(c)["HF_HUB_CACHE"] == "/var/cache/tao/hf"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod(manifest)["volumes"]}
    assert volumes[mounts["/var/cache/tao"]] == {"name": "model-cache", **volume}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize(
    "cache",
    [{}, {"claimName": "a", "hostPath": "/x"}, {"hostPath": "relative/dir"}, {"claimName": "Bad_Name"}],
)
def test_a_cache_volume_names_one_volume(cache: dict[str, str]) -> None:
    with pytest.raises(SpecError, match="storage.cache|claimName|hostPath"):
        taojob(storage={"uri": "s3://runs/tao", "cache": cache})


def test_ttl_only_when_the_operator_sets_it() -> None:
    spec = build(taojob(), "train", defaults=OperatorDefaults(ttl_seconds_after_finished=600))["spec"]
    assert spec["ttlSecondsAfterFinished"] == 600


def test_gpus_go_to_requests_and_limits_without_losing_other_resources() -> None:
    job = taojob(
        pods={"train": {"gpus": 1, "resources": {"requests": {"cpu": "4"}, "limits": {"memory": "32Gi"}}}}
    )
    resources = container(build(job, "train"))["resources"]
    assert resources == {
        "requests": {"cpu": "4", "nvidia.com/gpu": "1"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"},
    }
    assert "resources" not in container(build(taojob(pods={"train": {"gpus": 0}}), "train"))


def test_multi_gpu_training_runs_torchrun_with_shared_memory() -> None:
    manifest = build(taojob(pods={"train": {"gpus": 4}}), "train")
    c = container(manifest)
    assert c["command"] == [
        "torchrun",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "tao_trainer.cli",
        "train",
        "--config",
        "/etc/tao/config.json",
    ]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod(manifest)["volumes"]
    one = build(taojob(pods={"train": {"gpus": 1}}), "train")
    assert container(one)["command"][0] == "tao-stage"
    assert all(v["name"] != "dshm" for v in pod(one)["volumes"])
    # Only train is split across GPUs; other stages keep their command.
    assert container(build(taojob(pods={"generate": {"gpus": 2}}), "generate"))["command"][0] == "tao-stage"


@pytest.mark.parametrize("case", [c for c, _ in MANIFESTS if not c.startswith(("configmap", "service"))])
def test_every_pod_is_hardened(case: str) -> None:
    manifest = dict(MANIFESTS)[case]
    spec = pod(manifest)
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        # A read-only root needs somewhere to write: HOME and caches live on the /tmp emptyDir.
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])


def test_secret_is_referenced_by_name_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # Values the operator process might hold must not reach any manifest: the builders never read them.
    secret_values = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEYID0001",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtn/EXAMPLE/s3cr3t",
    }
    for key, value in secret_values.items():
        monkeypatch.setenv(key, value)
    job = taojob(credentials={"secretRef": {"name": SECRET_NAME}})
    emitted = [build(job, s) for s in STAGES] + [stage_configmap(job, config(job, s)) for s in STAGES]
    emitted += [serving_deployment(job, "s3://m", 1, DEFAULTS), serving_service(job)]
    for manifest in emitted:
        text = json.dumps(manifest)
        for key, value in secret_values.items():
            assert value not in text and key not in text
        assert "secretKeyRef" not in text
    for manifest in emitted[: len(STAGES)]:
        assert container(manifest)["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]
    init = pod(emitted[-2])["initContainers"][0]
    assert init["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]
    assert "envFrom" not in container(emitted[-2], "vllm")  # the server reads local files only
    # Nor does the name leak into what a stage reads.
    for cm in emitted[len(STAGES) : 2 * len(STAGES)]:
        assert SECRET_NAME not in cm["data"]["config.json"]


def test_capture_puts_the_proxy_between_the_service_and_vllm() -> None:
    job = taojob(
        serving={"capture": {"enabled": True, "batchSize": 50}},
        prompts={"uri": "s3://data/prompts/"},
        credentials={"secretRef": {"name": SECRET_NAME}},
    )
    dep = serving_deployment(job, "s3://m", 1, DEFAULTS)
    vllm, proxy = pod(dep)["containers"]
    assert (vllm["name"], proxy["name"]) == ("vllm", "capture")
    # The Service targets `http`, which is now the proxy's port; vLLM's probes hit vLLM itself.
    assert serving_service(job)["spec"]["ports"][0]["targetPort"] == "http"
    assert proxy["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert vllm["ports"][0]["name"] == "server" and vllm["readinessProbe"]["httpGet"]["port"] == "server"
    args = proxy["args"]
    assert args[:3] == ["capture", "--upstream", "http://127.0.0.1:8000"]
    assert args[args.index("--prompts-uri") + 1] == "s3://data/prompts/captured/"
    assert args[args.index("--batch-size") + 1] == "50"
    assert args[args.index("--redact") + 1] == "tao_trainer.capture:redact_basic"  # PII masked by default
    assert proxy["envFrom"] == [{"secretRef": {"name": SECRET_NAME}}]  # it writes to storage
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    # Without capture, nothing changes.
    assert [c["name"] for c in pod(serving_deployment(taojob(), "s3://m", 1, DEFAULTS))["containers"]] == [
        "vllm"
    ]


def test_capture_needs_a_place_beside_the_prompts() -> None:
    with pytest.raises(SpecError, match=r"serving.capture.uri is required"):
        taojob(serving={"capture": {"enabled": True}})  # prompts.uri is one file
    job = taojob(serving={"capture": {"enabled": True, "uri": "s3://data/captured/"}})
    assert job.spec.capture_uri() == "s3://data/captured/"


JUDGE = {
    "type": "judge",
    "rubric": "Is the answer correct?",
    "endpoint": {
        "url": "https://api.example.com/v1",
        "model": "judge-large",
        "apiKeyEnv": "JUDGE_API_KEY",
        "apiKeySecretRef": {"name": "judge-creds", "key": "token"},
    },
}


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_a_judges_api_key_reaches_only_the_stages_that_score_as_a_secret_reference(method: str) -> None:
    job = taojob(scoring={"scorers": [JUDGE]}, training={"method": method})
    scoring = {"preflight", "score", "evaluate"} | ({"train"} if method == "grpo" else set())
    for stage in ("preflight", *STAGES):
        env = env_of(container(build(job, stage)))
        if stage in scoring:
            assert env["JUDGE_API_KEY"] == {"secretKeyRef": {"name": "judge-creds", "key": "token"}}, stage
        else:
            assert "JUDGE_API_KEY" not in env, stage
        kubernetes_validate.validate(build(job, stage), K8S_VERSIONS[0], strict=True)


def test_a_user_variable_of_the_same_name_wins_over_the_judges_secret_reference() -> None:
    job = taojob(
        scoring={"scorers": [JUDGE]}, pods={"default": {"env": [{"name": "JUDGE_API_KEY", "value": "x"}]}}
    )
    entries = [e for e in container(build(job, "score"))["env"] if e["name"] == "JUDGE_API_KEY"]
    assert entries == [{"name": "JUDGE_API_KEY", "value": "x"}]


TEACHER_ENDPOINT = {
    "url": "https://api.example.com/v1",
    "model": "teacher-large",
    "apiKeyEnv": "TEACHER_API_KEY",
    "apiKeySecretRef": {"name": "teacher-creds", "key": "token"},
}
HUB = {"repo": "acme/bot", "tokenEnv": "HUB_WRITE", "tokenSecretRef": {"name": "hub", "key": "token"}}


@pytest.mark.parametrize(
    ("spec", "variable", "secret", "only_stage"),
    [
        (
            {"generation": {"teacher": {"endpoint": TEACHER_ENDPOINT}}},
            "TEACHER_API_KEY",
            "teacher-creds",
            "generate",
        ),
        ({"export": {"uri": "s3://models/bot", "hub": HUB}}, "HUB_WRITE", "hub", "evaluate"),
        (
            {"generation": {"modelEndpoint": {"endpoint": TEACHER_ENDPOINT | {"model": "bot"}}}},
            "TEACHER_API_KEY",
            "teacher-creds",
            "generate",
        ),
    ],
    ids=["teacher-key", "hub-export-token", "model-endpoint-key"],
)
def test_a_secret_reaches_only_the_stage_that_uses_it_as_a_secret_reference(
    spec: dict[str, Any], variable: str, secret: str, only_stage: str
) -> None:
    job = taojob(**spec)
    for stage in ("preflight", *STAGES):
        env = env_of(container(build(job, stage)))
        if stage == only_stage:
            assert env[variable] == {"secretKeyRef": {"name": secret, "key": "token"}}
        else:
            assert variable not in env, stage
        kubernetes_validate.validate(build(job, stage), K8S_VERSIONS[0], strict=True)


def test_a_hub_export_without_a_secret_reference_adds_no_variable() -> None:
    plain = taojob(export={"uri": "s3://models/bot", "hub": {"repo": "acme/bot"}})  # token from pods.env
    assert "TAO_EXPORT_HUB_TOKEN" not in env_of(container(build(plain, "evaluate")))


def test_configmap_holds_the_stage_config_the_pod_parses() -> None:
    job = taojob(credentials={"secretRef": {"name": SECRET_NAME}}, pods={"default": FULL_SETTINGS})
    cfg = config(job, "score", 3, "s3://runs/tao/round-002/train/model")
    cm = stage_configmap(job, cfg)
    assert set(cm["data"]) == {"config.json"}
    parsed = StageConfig.model_validate_json(cm["data"]["config.json"])  # what `tao-stage` does
    assert parsed.model_dump() == cfg.model_dump()
    assert cm["metadata"]["labels"]["tao.dev/round"] == "3"


def test_builders_are_pure() -> None:
    job = taojob(pods={"default": FULL_SETTINGS}, serving={"pod": FULL_SETTINGS})
    before = job.model_dump()
    first = build(job, "train")
    # Mutating what was returned (as kopf.adopt does) must not reach the TAOJob or the next build.
    pod(first)["tolerations"].append({"key": "x"})
    container(first)["resources"]["requests"]["cpu"] = "99"
    first["metadata"]["labels"]["k"] = "v"
    assert job.model_dump() == before
    assert build(job, "train") == build(
        taojob(pods={"default": FULL_SETTINGS}, serving={"pod": FULL_SETTINGS}), "train"
    )
    dep = serving_deployment(job, "s3://m", 1, DEFAULTS)
    pod(dep)["tolerations"].clear()
    assert job.model_dump() == before


# --------------------------------------------------------------------------------------------- serving


def test_deployment_rolls_without_losing_capacity_and_probes_health() -> None:
    job = taojob(serving={"replicas": 2, "port": 8080, "args": ["--dtype", "bfloat16"]})
    dep = serving_deployment(job, "s3://runs/tao/round-001/train/model", 1, DEFAULTS)
    assert dep["metadata"]["name"] == "demo-serve"
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    server = container(dep, "vllm")
    assert server["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60  # room to load a large model
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert server["image"] == DEFAULTS.serving_image
    assert server["command"] == ["vllm", "serve"]
    assert server["args"] == [
        "/models/model",
        "--served-model-name",
        "demo",
        "--port",
        "8080",
        "--dtype",
        "bfloat16",
    ]
    assert {"mountPath": "/models", "name": "models", "readOnly": True} in server["volumeMounts"]
    assert dep["metadata"]["labels"]["tao.dev/round"] == "1"
    assert dep["metadata"]["labels"]["app.kubernetes.io/component"] == "serving"


def test_the_model_is_downloaded_by_an_init_container() -> None:
    storage = {
        "uri": "s3://runs/tao",
        "endpointUrl": "http://minio:9000",
        "region": "eu-1",
        "pathStyle": True,
    }
    job = taojob(storage=storage, pods={"default": {"image": "mirror.example.com/trainer:1"}})
    dep = serving_deployment(job, "s3://runs/tao/round-004/train/model", 4, DEFAULTS)
    (init,) = pod(dep)["initContainers"]
    assert init["image"] == "mirror.example.com/trainer:1"
    assert init["command"] == [
        "tao-stage",
        "download",
        "--uri",
        "s3://runs/tao/round-004/train/model",
        "--to",
        "/models/model",
    ]
    env = env_of(init)
    assert env["TAO_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["TAO_S3_REGION"] == "eu-1"
    assert env["TAO_S3_PATH_STYLE"] == "1"
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    bare_init = pod(serving_deployment(taojob(), "s3://m", 1, DEFAULTS))["initContainers"][0]
    assert bare_init["image"] == DEFAULTS.trainer_image
    assert not any(k.startswith("TAO_S3_") for k in env_of(bare_init))


@pytest.mark.parametrize("case", [c for c, _ in MANIFESTS if not c.startswith(("configmap", "service"))])
def test_every_empty_dir_has_a_size_limit(case: str) -> None:
    volumes = [v for v in pod(dict(MANIFESTS)[case])["volumes"] if "emptyDir" in v]
    assert volumes
    for v in volumes:
        assert v["emptyDir"]["sizeLimit"], v


def test_size_limits_come_from_the_operator_defaults() -> None:
    limits = OperatorDefaults(tmp_size_limit="5Gi", models_size_limit="300Gi", shm_size_limit="2Gi")
    job = taojob(pods={"train": {"gpus": 2}})
    train = {
        v["name"]: v["emptyDir"]
        for v in pod(build(job, "train", defaults=limits))["volumes"]
        if "emptyDir" in v
    }
    assert train == {"tmp": {"sizeLimit": "5Gi"}, "dshm": {"medium": "Memory", "sizeLimit": "2Gi"}}
    dep = serving_deployment(job, "s3://m", 1, limits)
    serving = {v["name"]: v["emptyDir"] for v in pod(dep)["volumes"]}
    assert serving == {
        "models": {"sizeLimit": "300Gi"},
        "tmp": {"sizeLimit": "5Gi"},
        "dshm": {"medium": "Memory", "sizeLimit": "2Gi"},
    }
    with pytest.raises(ValueError):
        OperatorDefaults(tmp_size_limit="lots")


def test_the_base_model_is_downloaded_at_its_revision() -> None:
    job = taojob(model={"uri": "hf://org/base", "revision": "abc123"})
    base = pod(serving_deployment(job, "hf://org/base", 0, DEFAULTS))["initContainers"][0]["command"]
    assert base == [
        "tao-stage",
        "download",
        "--uri",
        "hf://org/base",
        "--to",
        "/models/model",
        "--revision",
        "abc123",
    ]
    # A round's model in storage has no hub revision.
    trained = pod(serving_deployment(job, "s3://runs/tao/round-001/train/model", 1, DEFAULTS))
    assert "--revision" not in trained["initContainers"][0]["command"]
    unpinned = pod(serving_deployment(taojob(model={"uri": "hf://org/base"}), "hf://org/base", 0, DEFAULTS))
    assert "--revision" not in unpinned["initContainers"][0]["command"]


def test_served_model_name_and_images_can_be_set() -> None:
    job = taojob(serving={"servedModelName": "tuned", "image": "vllm/vllm-openai:v9", "pod": {"gpus": 2}})
    dep = serving_deployment(job, "s3://m", 1, DEFAULTS)
    server = container(dep, "vllm")
    assert server["args"][:3] == ["/models/model", "--served-model-name", "tuned"]
    assert server["image"] == "vllm/vllm-openai:v9"
    assert server["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in json.dumps(pod(dep)["initContainers"])  # the download needs no GPU


def test_service_selects_the_deployment_pods_across_rollouts() -> None:
    job = taojob(serving={"port": 9000, "pod": {"labels": {"team": "ml"}}})
    svc = serving_service(job)
    first = serving_deployment(job, "s3://runs/tao/round-001/train/model", 1, DEFAULTS)
    second = serving_deployment(job, "s3://runs/tao/round-002/train/model", 2, DEFAULTS)
    for dep in (first, second):
        template_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= template_labels.items()
        assert dep["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    assert "tao.dev/round" not in svc["spec"]["selector"]
    assert svc["spec"]["selector"] == first["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}]


def test_a_new_model_rolls_the_pods_and_keeps_the_selector() -> None:
    job = taojob()
    old = serving_deployment(job, "s3://runs/tao/round-001/train/model", 1, DEFAULTS)
    new = serving_deployment(job, "s3://runs/tao/round-003/train/model", 1, DEFAULTS)
    assert old["spec"]["template"] != new["spec"]["template"]
    assert (
        new["spec"]["template"]["metadata"]["annotations"]["tao.dev/model-uri"]
        == "s3://runs/tao/round-003/train/model"
    )
    assert old["spec"]["selector"] == new["spec"]["selector"]
    # Same inputs, same manifest: re-applying an unchanged champion does not roll anything.
    assert serving_deployment(job, "s3://m", 1, DEFAULTS) == serving_deployment(job, "s3://m", 1, DEFAULTS)


def test_serving_url() -> None:
    assert serving_url(taojob(serving={"port": 8080})) == "http://demo-serve.ml.svc.cluster.local:8080/v1"


# --------------------------------------------------------------------------------------------- golden


def _golden(name: str, manifest: dict[str, Any]) -> None:
    path = GOLDEN / name
    text = yaml.safe_dump(manifest, sort_keys=False, width=120)
    if os.environ.get("TAO_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with TAO_UPDATE_GOLDEN=1 to write it"
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} changed: review, then run with TAO_UPDATE_GOLDEN=1"
    )


def _representative() -> TAOJob:
    return taojob(
        name="arith",
        generation={"shards": 4},
        credentials={"secretRef": {"name": SECRET_NAME}},
        pods={
            "default": {
                "labels": {"kueue.x-k8s.io/queue-name": "team-a"},
                "serviceAccountName": "tao-runner",
            },
            "generate": {
                "gpus": 1,
                "resources": {"requests": {"cpu": "4", "memory": "24Gi"}, "limits": {"memory": "24Gi"}},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "activeDeadlineSeconds": 3600,
            },
        },
        serving={"replicas": 2, "pod": {"gpus": 1}},
    )


def test_golden_stage_job() -> None:
    job = _representative()
    _golden("stage_job_generate.yaml", stage_job(job, config(job, "generate", 2), DEFAULTS))


def test_golden_serving_deployment() -> None:
    job = _representative()
    _golden(
        "serving_deployment.yaml",
        serving_deployment(job, "s3://runs/tao/ml/arith/uid/round-002/train/model", 2, DEFAULTS),
    )


def test_doctests() -> None:
    from tao_operator.builders import common, serving, stage_jobs

    results = [doctest.testmod(module) for module in (common, stage_jobs, serving)]
    assert sum(r.failed for r in results) == 0 and sum(r.attempted for r in results) > 0


def test_golden_files_are_the_only_ones_expected() -> None:
    # A renamed golden test must not leave a stale file behind for reviewers to misread.
    assert sorted(p.name for p in GOLDEN.glob("*.yaml")) == [
        "serving_deployment.yaml",
        "stage_job_generate.yaml",
    ]


def test_serving_inherits_the_default_identity_and_pull_secrets_unless_it_sets_its_own() -> None:
    job = taojob(pods={"default": {"serviceAccountName": "tao-s3", "imagePullSecrets": ["regcred"]}})
    dep = serving_deployment(job, "s3://m/r1", 1, DEFAULTS)
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "tao-s3"
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    own = taojob(
        pods={"default": {"serviceAccountName": "tao-s3"}}, serving={"pod": {"serviceAccountName": "serve"}}
    )
    assert (
        serving_deployment(own, "s3://m/r1", 1, DEFAULTS)["spec"]["template"]["spec"]["serviceAccountName"]
        == "serve"
    )


def test_the_watch_pod_never_holds_the_default_gpus_while_it_waits_for_prompts() -> None:
    job = taojob(
        pods={"default": {"gpus": 2, "activeDeadlineSeconds": 3600}}, continuous={"minNewPrompts": 5}
    )
    assert "resources" not in container(build(job, "watch", 2))
    assert "activeDeadlineSeconds" not in build(job, "watch", 2)["spec"]
    assert container(build(job, "prepare", 2))["resources"]["limits"]["nvidia.com/gpu"] == "2"
    job = taojob(pods={"default": {"gpus": 2}, "watch": {"gpus": 1}}, continuous={"minNewPrompts": 5})
    assert container(build(job, "watch", 2))["resources"]["limits"]["nvidia.com/gpu"] == "1"

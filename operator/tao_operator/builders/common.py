"""What every child shares: names, labels, owner references, pod settings and the hardened security contexts."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tao_operator.api import (
    API_VERSION,
    KIND,
    LABEL_JOB,
    LABEL_ROUND,
    LABEL_STAGE,
    PodSettings,
    TAOJob,
)
from tao_trainer.spec import ALL_STAGES

Manifest = dict[str, Any]

# A DNS-1123 label: names of Jobs (their pods carry the name in a label) and Services.
DNS_LABEL_MAX = 63
# The job controller names each pod of an Indexed Job's hostname "<job>-<index>", which must itself be a
# DNS label; Kubernetes allows up to 100000 completions, so leave room for "-99999".
INDEXED_NAME_MAX = DNS_LABEL_MAX - len("-99999")
# Stages that fan out over prompt shards: one pod per shard, the shard taken from JOB_COMPLETION_INDEX.
INDEXED_STAGES = frozenset({"generate", "score"})

GPU_RESOURCE = "nvidia.com/gpu"
CONFIG_DIR = "/etc/tao"
CONFIG_PATH = f"{CONFIG_DIR}/config.json"
RESULT_PATH = "/dev/termination-log"
MODELS_DIR = "/models"
SERVED_MODEL_DIR = f"{MODELS_DIR}/model"
SERVING_PORT_NAME = "http"
CAPTURED_SERVER_PORT_NAME = "server"  # vLLM's port when the capture proxy takes `http`
CAPTURE_HEALTH_PATH = "/capture/health"
HEALTH_PATH = "/health"
UID = 1000

COMPONENT_SERVING = "serving"
# A Kubernetes quantity without a sign (sizeLimit of an emptyDir).
QUANTITY_PATTERN = r"^(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$"


class OperatorDefaults(BaseModel):
    """The operator's own settings (from its environment / Helm values): what a TAOJob leaves unset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trainer_image: str = "ghcr.io/tao-operator/trainer:0.1.0"
    serving_image: str = "vllm/vllm-openai:v0.33.0"
    image_pull_policy: str = "IfNotPresent"
    serving_image_pull_policy: str | None = None  # default: image_pull_policy
    # Never TTL-delete by default: a deleted child of a finished round must not look like "never ran"
    # (kubeflow/trainer#3737); the TAOJob's deletion garbage-collects its children anyway.
    ttl_seconds_after_finished: int | None = None
    backoff_limit: int = 2
    # sizeLimit of every emptyDir (Kubernetes quantities): past it the kubelet evicts the pod, so one job cannot
    # fill a node's disk (or, for the memory-backed /dev/shm, its memory). /tmp holds homes, caches and hub
    # downloads of the stage and serving pods; models holds the served model; shm is /dev/shm.
    tmp_size_limit: str = Field(default="64Gi", pattern=QUANTITY_PATTERN)
    models_size_limit: str = Field(default="200Gi", pattern=QUANTITY_PATTERN)
    shm_size_limit: str = Field(default="16Gi", pattern=QUANTITY_PATTERN)
    # The optional allow-list (tao_operator.allowlist): image prefixes and service accounts a TAOJob may ask
    # for; empty allows any. The operator's own defaults are always allowed.
    allowed_image_prefixes: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()

    @field_validator("allowed_image_prefixes", "allowed_service_accounts", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # From the environment (TAO_ALLOWED_IMAGE_PREFIXES=a,b): a comma-separated list; blanks dropped.
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value


def child_name(job_name: str, round_: int, stage: str, attempt: int = 1) -> str:
    """`<taojob>-r<round>-<stage>` (`-a<attempt>` from the second attempt on), shortened with a hash of the job
    name when it would be too long.

    The limit is a DNS label (63), less room for the pod index on Indexed stages (see INDEXED_NAME_MAX).
    The hash is of the whole job name, so two long names sharing a prefix still get distinct children.

    >>> child_name("demo", 3, "generate"), child_name("demo", 3, "generate", 2)
    ('demo-r3-generate', 'demo-r3-generate-a2')
    >>> name = child_name("a" * 60, 1, "train")
    >>> len(name) <= 63, name.endswith("-r1-train")
    (True, True)
    """
    suffix = f"-r{round_}-{stage}" + (f"-a{attempt}" if attempt > 1 else "")
    # train may be Indexed too (pods.train.nodes): its pods' hostnames are `<job>-<node>`.
    limit = INDEXED_NAME_MAX if stage in INDEXED_STAGES or stage == "train" else DNS_LABEL_MAX
    name = f"{job_name}{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(job_name.encode("utf-8")).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    if keep < 1:
        raise ValueError(f"no room for a child name of {job_name!r} for round {round_}, stage {stage!r}")
    # The cut may end on "-"; a label must end alphanumeric, and the digest follows anyway.
    return f"{job_name[:keep].rstrip('-')}-{digest}{suffix}"


def serving_name(job: TAOJob) -> str:
    """`<taojob>-serve`, the Deployment and Service of the champion.

    A Service name must be a DNS-1035 label (starting with a letter) while TAOJob names may start with a
    digit, so such names get a `tao-` prefix rather than a Service the API server would reject.
    """
    name = f"{job.metadata.name}-serve"
    return name if name[0].isalpha() else f"tao-{name}"


def child_labels(
    job: TAOJob, round_: int | None = None, stage: str | None = None, *, component: str | None = None
) -> dict[str, str]:
    """The labels every child carries; `component` defaults to the stage (the serving objects pass "serving")."""
    labels = {
        LABEL_JOB: job.metadata.name,
        "app.kubernetes.io/name": "tao-operator",
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/managed-by": "tao-operator",
    }
    if round_ is not None:
        labels[LABEL_ROUND] = str(round_)
    if stage is not None:
        labels[LABEL_STAGE] = stage
    if comp := component or stage:
        labels["app.kubernetes.io/component"] = comp
    return labels


def owner_reference(job: TAOJob) -> dict[str, Any]:
    """The TAOJob as controller of a child, so deleting the TAOJob garbage-collects it."""
    if not job.metadata.uid:
        # A reference without the uid would be rejected by the API server; fail here, with the reason.
        raise ValueError(
            f"TAOJob {job.metadata.namespace}/{job.metadata.name} has no metadata.uid to own children"
        )
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": job.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_metadata(job: TAOJob, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


def with_extra_labels(ours: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
    # Ours win: the operator finds its children by these labels, a user label must not hide one.
    return {**(extra or {}), **ours}


# Dict-valued settings that are merged key by key; every other field is replaced whole, so that a stage can
# drop, say, a default toleration or nodeSelector entry (a merge could only ever add to those).
_MERGED_FIELDS = ("labels", "annotations")


def effective_pod_settings(job: TAOJob, stage: str) -> PodSettings:
    """The stage's settings over `spec.pods.default`, field by field (labels/annotations merged, stage wins)."""
    if stage not in ALL_STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(ALL_STAGES)}")
    base: PodSettings = job.spec.pods.default
    if stage == "watch":
        # The watch idles between rounds, possibly for days: it never holds the default's GPUs, nor inherits a
        # time limit meant for working stages.
        base = base.model_copy(update={"gpus": None, "active_deadline_seconds": None})
    # The preflight generates (then scores) a sample as round 1 will: it needs the generate stage's GPUs.
    over: PodSettings = getattr(job.spec.pods, "generate" if stage == "preflight" else stage)
    merged: dict[str, Any] = {}
    for field in PodSettings.model_fields:
        b, o = getattr(base, field), getattr(over, field)
        if field in _MERGED_FIELDS and b is not None and o is not None:
            merged[field] = {**b, **o}
        else:
            merged[field] = o if o is not None else b
    # Deep copies: a manifest built from these must never alias (and let a caller mutate) the TAOJob model.
    return PodSettings.model_validate(copy.deepcopy(merged))


def container_resources(settings: PodSettings, with_gpus: bool = True) -> dict[str, Any]:
    resources: dict[str, Any] = copy.deepcopy(settings.resources or {})
    if with_gpus and settings.gpus:
        # Extended resources cannot be overcommitted: Kubernetes wants requests == limits.
        for kind in ("requests", "limits"):
            resources[kind] = {**(resources.get(kind) or {}), GPU_RESOURCE: str(settings.gpus)}
    return resources


def env_vars(
    base: list[tuple[str, str]], user: list[dict[str, Any]] | None, fixed: frozenset[str]
) -> list[dict[str, Any]]:
    """Our variables, then the user's; a user variable replaces ours of the same name, except `fixed` ones.

    Dropping the shadowed entry (rather than listing both) keeps the manifest free of duplicate names,
    which the API server warns about and tools disagree on.
    """
    user_env = [e for e in copy.deepcopy(user or []) if e.get("name") not in fixed]
    overridden = {e.get("name") for e in user_env}
    return [{"name": n, "value": v} for n, v in base if n not in overridden] + user_env


def secret_env_from(job: TAOJob) -> list[dict[str, Any]]:
    # The Secret is referenced by name only: its values never pass through the operator or the manifest.
    ref = job.spec.credentials.secret_ref
    return [{"secretRef": {"name": ref.name}}] if ref is not None else []


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_placement(settings: PodSettings) -> dict[str, Any]:
    """The pod-level settings that are copied as given when set."""
    out: dict[str, Any] = {}
    if settings.service_account_name:
        out["serviceAccountName"] = settings.service_account_name
    if settings.node_selector:
        out["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        out["tolerations"] = copy.deepcopy(settings.tolerations)
    if settings.affinity:
        out["affinity"] = copy.deepcopy(settings.affinity)
    if settings.priority_class_name:
        out["priorityClassName"] = settings.priority_class_name
    if settings.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    return out


def dshm_volume(defaults: OperatorDefaults) -> dict[str, Any]:
    # The container runtime's /dev/shm is 64 MiB; NCCL (multi-GPU training) and vLLM's worker processes
    # exchange tensors through shared memory and fail or crawl with that. Memory-backed: counts against the
    # pod's memory limit, only for what is used; the sizeLimit is also the tmpfs's size.
    return {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": defaults.shm_size_limit}}


def tmp_volume(defaults: OperatorDefaults) -> dict[str, Any]:
    # The root filesystem is read-only: homes, caches and hub downloads go here, up to the limit.
    return {"name": "tmp", "emptyDir": {"sizeLimit": defaults.tmp_size_limit}}

"""Pure builders: a TAOJob and an action in, the Kubernetes manifests that carry it out as plain dicts.

No I/O and no Kubernetes client here: `handlers.py` creates what these return, and the unit tests validate
every manifest offline against the real Kubernetes schemas (kubernetes-validate, strict mode).

Every child is owned by its TAOJob (garbage-collected with it), carries the same label set (so the operator
and `kubectl` select them the same way), and runs hardened: non-root, read-only root filesystem, no
privilege escalation, no capabilities, no API token (stage pods never talk to the Kubernetes API).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict

from tao_operator.api import API_VERSION, KIND, PodSettings, TAOJob
from tao_trainer.contract import StageConfig
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

LABEL_JOB = "tao.dev/job"
LABEL_ROUND = "tao.dev/round"
LABEL_STAGE = "tao.dev/stage"
ANNOTATION_MODEL_URI = "tao.dev/model-uri"
COMPONENT_SERVING = "serving"


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


# --------------------------------------------------------------------------------------------- names and labels


def child_name(job_name: str, round_: int, stage: str) -> str:
    """`<taojob>-r<round>-<stage>`, shortened with a hash of the job name when it would be too long.

    The limit is a DNS label (63), less room for the pod index on Indexed stages (see INDEXED_NAME_MAX).
    The hash is of the whole job name, so two long names sharing a prefix still get distinct children.

    >>> child_name("demo", 3, "generate")
    'demo-r3-generate'
    >>> name = child_name("a" * 60, 1, "train")
    >>> len(name) <= 63, name.endswith("-r1-train")
    (True, True)
    """
    suffix = f"-r{round_}-{stage}"
    limit = INDEXED_NAME_MAX if stage in INDEXED_STAGES else DNS_LABEL_MAX
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


def _metadata(job: TAOJob, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(job)],
    }


def _with_extra_labels(ours: dict[str, str], extra: dict[str, str] | None) -> dict[str, str]:
    # Ours win: the operator finds its children by these labels, a user label must not hide one.
    return {**(extra or {}), **ours}


# --------------------------------------------------------------------------------------------- pod settings

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


def _resources(settings: PodSettings, with_gpus: bool = True) -> dict[str, Any]:
    resources: dict[str, Any] = copy.deepcopy(settings.resources or {})
    if with_gpus and settings.gpus:
        # Extended resources cannot be overcommitted: Kubernetes wants requests == limits.
        for kind in ("requests", "limits"):
            resources[kind] = {**(resources.get(kind) or {}), GPU_RESOURCE: str(settings.gpus)}
    return resources


def _env(
    base: list[tuple[str, str]], user: list[dict[str, Any]] | None, fixed: frozenset[str]
) -> list[dict[str, Any]]:
    """Our variables, then the user's; a user variable replaces ours of the same name, except `fixed` ones.

    Dropping the shadowed entry (rather than listing both) keeps the manifest free of duplicate names,
    which the API server warns about and tools disagree on.
    """
    user_env = [e for e in copy.deepcopy(user or []) if e.get("name") not in fixed]
    overridden = {e.get("name") for e in user_env}
    return [{"name": n, "value": v} for n, v in base if n not in overridden] + user_env


def _env_from(job: TAOJob) -> list[dict[str, Any]]:
    # The Secret is referenced by name only: its values never pass through the operator or the manifest.
    ref = job.spec.credentials.secret_ref
    return [{"secretRef": {"name": ref.name}}] if ref is not None else []


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "fsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _pod_placement(settings: PodSettings) -> dict[str, Any]:
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


def _dshm_volume() -> dict[str, Any]:
    # The container runtime's /dev/shm is 64 MiB; NCCL (multi-GPU training) and vLLM's worker processes
    # exchange tensors through shared memory and fail or crawl with that. Memory-backed: counts against the
    # pod's memory limit, only for what is used.
    return {"name": "dshm", "emptyDir": {"medium": "Memory"}}


# --------------------------------------------------------------------------------------------- stage Jobs


def stage_configmap(job: TAOJob, config: StageConfig) -> Manifest:
    """The StageConfig a stage pod reads at /etc/tao/config.json."""
    name = child_name(job.metadata.name, config.round, config.stage)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, f"{name}-config", child_labels(job, config.round, config.stage)),
        # `spec` is declared as LoopSpec, so only the loop's fields are written (no pods, credentials,
        # serving): exactly what `tao-stage` parses, and nothing cluster-specific in the stage's input.
        "data": {"config.json": config.model_dump_json(by_alias=True)},
    }


def _stage_command(stage: str, gpus: int) -> list[str]:
    if stage == "train" and gpus > 1:
        # One training process per GPU (DDP through accelerate/TRL), rendezvous on the pod itself
        # (--standalone). The train stage must then save the model and write the result from rank 0 only.
        return [
            "torchrun",
            "--standalone",
            f"--nproc_per_node={gpus}",
            "-m",
            "tao_trainer.cli",
            "train",
            "--config",
            CONFIG_PATH,
        ]
    return ["tao-stage", stage, "--config", CONFIG_PATH]


def scorer_key_env(job: TAOJob, stage: str, taken: set[Any]) -> list[dict[str, Any]]:
    """Judges' API keys (`endpoint.apiKeySecretRef`) as `secretKeyRef` variables, on the stages that score.

    The key stays in its Secret: the manifest names the Secret and key only. Variables the user set in
    `pods` win (they are in `taken`), and prepare, generate and non-GRPO training never see a key.
    """
    scoring = {"preflight", "score", "evaluate"} | (
        {"train"} if job.spec.training.method == "grpo" else set()
    )
    if stage not in scoring:
        return []
    out: list[dict[str, Any]] = []
    seen = set(taken)
    for scorer in [*job.spec.scoring.scorers, *(job.spec.evaluation.scorers or [])]:
        endpoint = getattr(scorer, "endpoint", None)
        if endpoint is None or endpoint.api_key_secret_ref is None or endpoint.api_key_env in seen:
            continue
        seen.add(endpoint.api_key_env)
        ref = endpoint.api_key_secret_ref
        out.append(
            {"name": endpoint.api_key_env, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    return out


def stage_job(job: TAOJob, config: StageConfig, defaults: OperatorDefaults) -> Manifest:
    """The batch/v1 Job running one stage of one round (Indexed over shards for generate and score)."""
    stage, round_ = config.stage, config.round
    name = child_name(job.metadata.name, round_, stage)
    settings = effective_pod_settings(job, stage)
    gpus = settings.gpus or 0
    labels = _with_extra_labels(child_labels(job, round_, stage), settings.labels)

    env = _env(
        [
            # The stage writes its StageResult here; the kubelet copies it into the pod's termination message.
            ("TAO_RESULT_PATH", RESULT_PATH),
            # The root filesystem is read-only: every home, cache and model download goes to the /tmp emptyDir.
            ("HOME", "/tmp"),
            ("HF_HOME", "/tmp/hf"),
            ("TAO_CACHE_DIR", "/tmp/cache"),
            ("TOKENIZERS_PARALLELISM", "false"),
        ],
        settings.env,
        # The operator reads the result from the termination message: that path is not the user's to move.
        fixed=frozenset({"TAO_RESULT_PATH"}),
    )
    env += scorer_key_env(job, stage, {e.get("name") for e in env})
    container: dict[str, Any] = {
        "name": "stage",
        "image": settings.image or defaults.trainer_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": _stage_command(stage, gpus),
        "env": env,
    }
    if env_from := _env_from(job):
        container["envFrom"] = env_from
    if resources := _resources(settings):
        container["resources"] = resources
    volume_mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if gpus > 1:
        volume_mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append(_dshm_volume())
    container |= {
        "volumeMounts": volume_mounts,
        "terminationMessagePath": RESULT_PATH,
        # File, not FallbackToLogsOnError: a log tail is not a StageResult, and a stage that dies without
        # writing one must read as "no result" to the operator, not as garbage JSON.
        "terminationMessagePolicy": "File",
        "securityContext": _container_security_context(),
    }

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Stage pods never call the Kubernetes API; no token means nothing to steal from a compromised pod.
        "automountServiceAccountToken": False,
        # Service links inject <SVC>_PORT-style variables for every Service in the namespace; nothing here
        # reads them, and names like VLLM_PORT collide with the libraries' own settings.
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        **_pod_placement(settings),
        "containers": [container],
        "volumes": volumes,
    }
    template_meta: dict[str, Any] = {"labels": dict(labels)}
    if settings.annotations:
        template_meta["annotations"] = dict(settings.annotations)

    spec: dict[str, Any] = {
        # Kueue's webhook also sets this on Jobs with a queue-name label: a suspended child is not drift.
        "suspend": job.spec.suspend,
        "backoffLimit": settings.backoff_limit
        if settings.backoff_limit is not None
        else defaults.backoff_limit,
        # A retry starts only once the failed pod is gone: never two pods writing the same shard or holding
        # the same GPU memory at once.
        "podReplacementPolicy": "Failed",
    }
    if stage in INDEXED_STAGES:
        if config.shards is not None:
            # Every pod would then process the same shards: the index would be ignored.
            raise ValueError(f"{stage} runs one pod per shard; its StageConfig must leave `shards` unset")
        shards = job.spec.generation.shards
        spec |= {"completionMode": "Indexed", "completions": shards, "parallelism": shards}
    else:
        spec |= {"completions": 1, "parallelism": 1}
    if settings.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    if defaults.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = defaults.ttl_seconds_after_finished
    spec["template"] = {"metadata": template_meta, "spec": pod_spec}

    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(job, name, labels),
        "spec": spec,
    }


# --------------------------------------------------------------------------------------------- serving


def _storage_env(job: TAOJob) -> list[tuple[str, str]]:
    # The download has no StageConfig to read the storage options from: pass them the way
    # tao_trainer.storage reads them from the environment.
    s = job.spec.storage
    env = []
    if s.endpoint_url:
        env.append(("TAO_S3_ENDPOINT_URL", s.endpoint_url))
    if s.region:
        env.append(("TAO_S3_REGION", s.region))
    if s.path_style:
        env.append(("TAO_S3_PATH_STYLE", "1"))
    return env


def _serving_selector(job: TAOJob) -> dict[str, str]:
    # No round label: a Deployment's selector is immutable, and the Service must follow every rollout.
    return child_labels(job, component=COMPONENT_SERVING)


def serving_deployment(job: TAOJob, model_uri: str, round_: int, defaults: OperatorDefaults) -> Manifest:
    """A vLLM OpenAI-compatible server on `model_uri` (round `round_`'s model; 0: the base model).

    An init container (the trainer image, which knows s3:// and the credentials) downloads the model into an
    emptyDir; vLLM then loads it from local disk, needing no storage credentials itself.
    """
    serving = job.spec.serving
    default = job.spec.pods.default
    # Identity and registry access are set once for all pods: the init container reads the same storage
    # (IRSA / workload identity) and pulls from the same registry as the stages.
    settings = serving.pod.model_copy(
        update={
            "service_account_name": serving.pod.service_account_name or default.service_account_name,
            "image_pull_secrets": serving.pod.image_pull_secrets or default.image_pull_secrets,
        }
    )
    name = serving_name(job)
    labels = _with_extra_labels(child_labels(job, round_, component=COMPONENT_SERVING), settings.labels)
    served_name = serving.served_model_name or job.metadata.name

    home_env = [("HOME", "/tmp"), ("HF_HOME", "/tmp/hf")]
    download: dict[str, Any] = {
        "name": "download",
        # The trainer image the stages use, so a mirrored registry set in spec.pods.default applies here too.
        "image": job.spec.pods.default.image or defaults.trainer_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["tao-stage", "download", "--uri", model_uri, "--to", SERVED_MODEL_DIR],
        "env": _env([*home_env, ("TAO_CACHE_DIR", "/tmp/cache"), *_storage_env(job)], None, frozenset()),
    }
    if env_from := _env_from(job):
        download["envFrom"] = env_from
    # The same requests as the server (without GPUs): namespaces with a ResourceQuota reject containers
    # without them, and the pod's footprint is max(init, app) anyway.
    if init_resources := _resources(settings, with_gpus=False):
        download["resources"] = init_resources
    download |= {
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        # A failed download shows its error in the pod status, not only in logs.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security_context(),
    }

    capture = serving.capture
    # With capture, the proxy owns the `http` port the Service targets, and vLLM's port gets another name.
    server_port_name = CAPTURED_SERVER_PORT_NAME if capture.enabled else SERVING_PORT_NAME

    def probe(**timing: int) -> dict[str, Any]:
        # A fresh dict each: shared sub-objects would let a caller's edit of one probe change all three.
        return {"httpGet": {"path": HEALTH_PATH, "port": server_port_name}, "timeoutSeconds": 5, **timing}

    server: dict[str, Any] = {
        "name": "vllm",
        "image": serving.image or settings.image or defaults.serving_image,
        "imagePullPolicy": defaults.serving_image_pull_policy or defaults.image_pull_policy,
        # An explicit command: the image's ENTRYPOINT is already `vllm serve` in some tags and not in others.
        # The model is positional: `--model` under `vllm serve` is deprecated and slated for removal.
        "command": ["vllm", "serve"],
        "args": [
            SERVED_MODEL_DIR,
            "--served-model-name",
            served_name,
            "--port",
            str(serving.port),
            *serving.args,
        ],
        "env": _env(
            [
                *home_env,
                # torch.compile's cache dir asks getpass.getuser(), which fails for a uid without a passwd entry.
                ("USER", "vllm"),
                # The model is local; never reach for the hub, and send no usage statistics.
                ("HF_HUB_OFFLINE", "1"),
                ("VLLM_NO_USAGE_STATS", "1"),
            ],
            settings.env,
            frozenset(),
        ),
        "ports": [{"name": server_port_name, "containerPort": serving.port, "protocol": "TCP"}],
        # Loading and compiling a large model takes minutes: allow up to 30 before the kubelet gives up;
        # liveness and readiness only start counting once startup has passed.
        "startupProbe": probe(periodSeconds=10, failureThreshold=180),
        "readinessProbe": probe(periodSeconds=5, failureThreshold=3),
        "livenessProbe": probe(periodSeconds=10, failureThreshold=6),
    }
    if resources := _resources(settings):
        server["resources"] = resources
    server |= {
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            # vLLM, torch and triton write caches under HOME=/tmp; the root filesystem stays read-only.
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security_context(),
    }

    annotations = {
        **(settings.annotations or {}),
        # `kubectl logs` picks the server, not the init container.
        "kubectl.kubernetes.io/default-container": "vllm",
        # A new model changes the pod template, so the Deployment rolls even if nothing else changed.
        ANNOTATION_MODEL_URI: model_uri,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # A Service named `vllm` in the namespace would otherwise inject VLLM_PORT=tcp://..., which vLLM reads
        # as its own setting and fails on.
        "enableServiceLinks": False,
        "securityContext": _pod_security_context(),
        **_pod_placement(settings),
        "initContainers": [download],
        "containers": [server, _capture_container(job, defaults)] if capture.enabled else [server],
        "volumes": [
            {"name": "models", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {}},
            _dshm_volume(),
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(job, name, labels),
        "spec": {
            "replicas": serving.replicas,
            "selector": {"matchLabels": _serving_selector(job)},
            # Never fewer ready servers than asked for during a rollout: the old model serves until the new
            # one is ready. (With GPUs this needs room for one extra pod.)
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            # Downloading and loading a large model can exceed the 10-minute default before the rollout is
            # reported as stuck (Progressing=False).
            "progressDeadlineSeconds": 3600,
            "template": {"metadata": {"labels": dict(labels), "annotations": annotations}, "spec": pod_spec},
        },
    }


def _capture_container(job: TAOJob, defaults: OperatorDefaults) -> dict[str, Any]:
    """The prompt-capture proxy: forwards every request to vLLM in the same pod and stores the prompts."""
    serving, capture = job.spec.serving, job.spec.serving.capture
    args = [
        "capture",
        "--upstream",
        f"http://127.0.0.1:{serving.port}",
        "--listen",
        f"0.0.0.0:{capture.port}",
        "--prompts-uri",
        job.spec.capture_uri(),
        "--batch-size",
        str(capture.batch_size),
        "--flush-seconds",
        str(capture.flush_seconds),
        "--max-buffer",
        str(capture.max_buffer),
    ]
    if capture.redact:
        args += ["--redact", capture.redact]
    if capture.capture_responses:
        args.append("--capture-responses")
    container: dict[str, Any] = {
        "name": "capture",
        "image": job.spec.pods.default.image or defaults.trainer_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": ["tao-stage"],
        "args": args,
        "env": _env(
            [("HOME", "/tmp"), ("TAO_CACHE_DIR", "/tmp/cache"), *_storage_env(job)], None, frozenset()
        ),
    }
    if env_from := _env_from(job):
        container["envFrom"] = env_from  # it writes to the prompts location
    return container | {
        "ports": [{"name": SERVING_PORT_NAME, "containerPort": capture.port, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": CAPTURE_HEALTH_PATH, "port": SERVING_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
        },
        # A proxy with a bounded buffer (maxBuffer prompts) needs little; set so that a ResourceQuota admits it.
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security_context(),
    }


def serving_service(job: TAOJob) -> Manifest:
    """A ClusterIP Service in front of the serving Deployment, across rollouts."""
    port = job.spec.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, serving_name(job), child_labels(job, component=COMPONENT_SERVING)),
        "spec": {
            "type": "ClusterIP",
            "selector": _serving_selector(job),
            "ports": [
                {"name": SERVING_PORT_NAME, "port": port, "targetPort": SERVING_PORT_NAME, "protocol": "TCP"}
            ],
        },
    }


def serving_url(job: TAOJob) -> str:
    """The OpenAI-compatible base URL inside the cluster."""
    return f"http://{serving_name(job)}.{job.metadata.namespace}.svc.cluster.local:{job.spec.serving.port}/v1"

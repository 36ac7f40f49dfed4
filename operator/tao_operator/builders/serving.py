"""Serving the champion: a vLLM Deployment (with the optional prompt-capture sidecar) and its Service."""

from __future__ import annotations

from typing import Any

from tao_operator.api import (
    ANNOTATION_ADAPTER_URI,
    ANNOTATION_MODEL_URI,
    TAOJob,
)
from tao_operator.builders.common import (
    CAPTURE_HEALTH_PATH,
    CAPTURED_SERVER_PORT_NAME,
    COMPONENT_SERVING,
    HEALTH_PATH,
    MODELS_DIR,
    SERVED_MODEL_DIR,
    SERVING_PORT_NAME,
    Manifest,
    OperatorDefaults,
    child_labels,
    container_resources,
    container_security_context,
    dshm_volume,
    env_vars,
    object_metadata,
    pod_placement,
    pod_security_context,
    secret_env_from,
    serving_name,
    tmp_volume,
    with_extra_labels,
)
from tao_trainer.gguf_models import is_gguf
from tao_trainer.spec.engine import vllm_max_lora_rank

# Where an adapter-serving pod keeps the LoRA adapters beside the base (SERVED_MODEL_DIR).
CHAMPION_ADAPTER_DIR = f"{MODELS_DIR}/adapters/champion"
PREVIOUS_ADAPTER_DIR = f"{MODELS_DIR}/adapters/previous"


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


def serves_adapter(job: TAOJob, round_: int) -> bool:
    """Round `round_`'s model is an unmerged LoRA adapter over `model.uri` (every adapter of a run records that
    original base; round 0 is the base itself)."""
    lora = job.spec.training.lora
    return round_ > 0 and lora is not None and not lora.merge


def _download_command(job: TAOJob, model_uri: str, to: str = SERVED_MODEL_DIR) -> list[str]:
    """`tao-stage download`, pinned to `model.revision` when the served model is the base model from the hub
    (a round's model in storage has no revision; a hub download without one takes whatever main is now)."""
    command = ["tao-stage", "download", "--uri", model_uri, "--to", to]
    model = job.spec.model
    if model.revision and model_uri == model.uri:
        command += ["--revision", model.revision]
    if is_gguf(model_uri):  # the base as a GGUF: the folder a stage converted (or convert it)
        command += ["--gguf-store", job.run_layout().converted_models, "--gguf-dtype", model.gguf_dtype]
    return command


def _serving_selector(job: TAOJob) -> dict[str, str]:
    # No round label: a Deployment's selector is immutable, and the Service must follow every rollout.
    return child_labels(job, component=COMPONENT_SERVING)


def _lora_args(job: TAOJob, served_name: str, previous: bool) -> list[str]:
    """vLLM's flags for an adapter champion: the adapter under the stable served name (and the champion it
    replaced under `<name>-previous`), at the smallest `--max-lora-rank` vLLM accepts for `lora.r`."""
    lora = job.spec.training.lora
    assert lora is not None
    modules = [f"{served_name}={CHAMPION_ADAPTER_DIR}"]
    if previous:
        modules.append(f"{served_name}-previous={PREVIOUS_ADAPTER_DIR}")
    # No --max-loras: vLLM's default (one adapter per batch) suits one champion; `<name>-previous` is asked for
    # only around a rollback. `tao serve` takes exactly these flags, so the Deployment's arguments run there too.
    return ["--enable-lora", "--max-lora-rank", str(vllm_max_lora_rank(lora.r)), "--lora-modules", *modules]


def serving_deployment(
    job: TAOJob, model_uri: str, round_: int, defaults: OperatorDefaults, previous_uri: str | None = None
) -> Manifest:
    """A vLLM OpenAI-compatible server on `model_uri` (round `round_`'s model; 0: the base model).

    An init container (the trainer image, which knows s3:// and the credentials) downloads the model into an
    emptyDir; vLLM then loads it from local disk, needing no storage credentials itself. An unmerged LoRA round
    (`serves_adapter`) is served as the base (`model.uri`, downloaded once) with the adapter as a LoRA module
    under the served name, and `previous_uri` (the champion it replaced) beside it as `<name>-previous`. A new
    adapter changes the pod template: the Deployment rolls (no runtime adapter loading; see docs/kubernetes.md).
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
    labels = with_extra_labels(child_labels(job, round_, component=COMPONENT_SERVING), settings.labels)
    served_name = serving.served_model_name or job.metadata.name

    home_env = [("HOME", "/tmp"), ("HF_HOME", "/tmp/hf")]
    adapter = serves_adapter(job, round_)
    previous = adapter and previous_uri is not None
    base_uri = job.spec.model.uri if adapter else model_uri

    def download(name: str, command: list[str]) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": name,
            # The trainer image the stages use, so a mirrored registry set in spec.pods.default applies here too.
            "image": job.spec.pods.default.image or defaults.trainer_image,
            "imagePullPolicy": defaults.image_pull_policy,
            "command": command,
            "env": env_vars(
                [*home_env, ("TAO_CACHE_DIR", "/tmp/cache"), *_storage_env(job)], None, frozenset()
            ),
        }
        if env_from := secret_env_from(job):
            container["envFrom"] = env_from
        # The same requests as the server (without GPUs): namespaces with a ResourceQuota reject containers
        # without them, and the pod's footprint is max(init, app) anyway.
        if init_resources := container_resources(settings, with_gpus=False):
            container["resources"] = init_resources
        return container | {
            "volumeMounts": [
                {"name": "models", "mountPath": MODELS_DIR},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
            # A failed download shows its error in the pod status, not only in logs.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": container_security_context(),
        }

    downloads = [download("download", _download_command(job, base_uri))]
    if adapter:
        downloads.append(
            download("download-adapter", _download_command(job, model_uri, CHAMPION_ADAPTER_DIR))
        )
    if previous and previous_uri is not None:
        downloads.append(
            download("download-previous-adapter", _download_command(job, previous_uri, PREVIOUS_ADAPTER_DIR))
        )

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
            # Clients keep asking for the served name: with an adapter, that name is the adapter's.
            f"{served_name}-base" if adapter else served_name,
            "--port",
            str(serving.port),
            *(_lora_args(job, served_name, previous) if adapter else []),
            *serving.args,
        ],
        "env": env_vars(
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
    if resources := container_resources(settings):
        server["resources"] = resources
    server |= {
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            # vLLM, torch and triton write caches under HOME=/tmp; the root filesystem stays read-only.
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }

    annotations = {
        **(settings.annotations or {}),
        # `kubectl logs` picks the server, not the init container.
        "kubectl.kubernetes.io/default-container": "vllm",
        # A new model (or adapter) changes the pod template, so the Deployment rolls even if nothing else changed.
        ANNOTATION_MODEL_URI: base_uri,
        **({ANNOTATION_ADAPTER_URI: model_uri} if adapter else {}),
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        # A Service named `vllm` in the namespace would otherwise inject VLLM_PORT=tcp://..., which vLLM reads
        # as its own setting and fails on.
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        **pod_placement(settings),
        "initContainers": downloads,
        "containers": [server, _capture_container(job, defaults)] if capture.enabled else [server],
        "volumes": [
            {"name": "models", "emptyDir": {"sizeLimit": defaults.models_size_limit}},
            tmp_volume(defaults),
            dshm_volume(defaults),
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(job, name, labels),
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
        "env": env_vars(
            [("HOME", "/tmp"), ("TAO_CACHE_DIR", "/tmp/cache"), *_storage_env(job)], None, frozenset()
        ),
    }
    if env_from := secret_env_from(job):
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
        "securityContext": container_security_context(),
    }


def serving_service(job: TAOJob) -> Manifest:
    """A ClusterIP Service in front of the serving Deployment, across rollouts."""
    port = job.spec.serving.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(job, serving_name(job), child_labels(job, component=COMPONENT_SERVING)),
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

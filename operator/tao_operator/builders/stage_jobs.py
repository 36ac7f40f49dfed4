"""A stage as a batch Job: its StageConfig in a ConfigMap, the pod that runs `tao-stage`, one pod per shard."""

from __future__ import annotations

from typing import Any

from tao_operator.api import (
    TAOJob,
)
from tao_operator.builders import multinode
from tao_operator.builders.common import (
    CONFIG_DIR,
    CONFIG_PATH,
    INDEXED_STAGES,
    RESULT_PATH,
    Manifest,
    OperatorDefaults,
    child_labels,
    child_name,
    container_resources,
    container_security_context,
    dshm_volume,
    effective_pod_settings,
    env_vars,
    object_metadata,
    pod_placement,
    pod_security_context,
    secret_env_from,
    tmp_volume,
    with_extra_labels,
)
from tao_trainer.contract import StageConfig
from tao_trainer.spec import CACHE_MOUNT


def stage_configmap(job: TAOJob, config: StageConfig, attempt: int = 1) -> Manifest:
    """The StageConfig a stage pod reads at /etc/tao/config.json."""
    name = child_name(job.metadata.name, config.round, config.stage, attempt)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(job, f"{name}-config", child_labels(job, config.round, config.stage)),
        # `spec` is declared as LoopSpec, so only the loop's fields are written (no pods, credentials,
        # serving): exactly what `tao-stage` parses, and nothing cluster-specific in the stage's input.
        "data": {"config.json": config.model_dump_json(by_alias=True)},
    }


def _stage_command(stage: str, gpus: int, launcher: bool) -> list[str]:
    if stage == "train" and gpus > 1 and not launcher:
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


def secret_key_env(job: TAOJob, stage: str, taken: set[Any]) -> list[dict[str, Any]]:
    """Keys held in Secrets as `secretKeyRef` variables, on the stages that use them: judges' API keys
    (`apiKeySecretRef`) on the stages that score, the teacher's and the model endpoint's on generate, the Hub
    export token (`export.hub.tokenSecretRef`) on evaluate.

    The key stays in its Secret: the manifest names the Secret and key only. Variables the user set in
    `pods` win (they are in `taken`), and every other stage never sees a key.
    """
    scoring = {"preflight", "score", "evaluate"} | (
        {"train"} if job.spec.training.method == "grpo" else set()
    )
    endpoints = []
    if stage in scoring:
        scorers = [*job.spec.scoring.scorers, *(job.spec.evaluation.scorers or [])]
        endpoints += [getattr(scorer, "endpoint", None) for scorer in scorers]
    if stage == "generate":
        endpoints += [
            served.endpoint
            for served in (job.spec.generation.teacher, job.spec.generation.model_endpoint)
            if served is not None
        ]
    refs = [(e.api_key_env, e.api_key_secret_ref) for e in endpoints if e is not None]
    hub = job.spec.export.hub if job.spec.export is not None else None
    if stage == "evaluate" and hub is not None:
        refs.append((hub.token_env, hub.token_secret_ref))
    out: list[dict[str, Any]] = []
    seen = set(taken)
    for env, ref in refs:
        if ref is None or env in seen:
            continue
        seen.add(env)
        out.append({"name": env, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return out


def cache_env(job: TAOJob) -> list[tuple[str, str]]:
    """Where a stage keeps downloads: the cache volume (`spec.storage.cache`) when there is one, shared by the
    round's pods, hub downloads included; else the pod's own /tmp emptyDir."""
    if job.spec.storage.cache is None:
        return [("TAO_CACHE_DIR", "/tmp/cache")]
    return [("TAO_CACHE_DIR", CACHE_MOUNT), ("HF_HUB_CACHE", f"{CACHE_MOUNT}/hf")]


def cache_volume(job: TAOJob) -> dict[str, Any] | None:
    """The cache volume, when `spec.storage.cache` names one."""
    cache = job.spec.storage.cache
    if cache is None:
        return None
    if cache.claim_name is not None:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
    return {"name": "model-cache", "hostPath": {"path": cache.host_path, "type": "DirectoryOrCreate"}}


def stage_job(job: TAOJob, config: StageConfig, defaults: OperatorDefaults, attempt: int = 1) -> Manifest:
    """The batch/v1 Job running one stage of one round (Indexed over shards for generate and score)."""
    stage, round_ = config.stage, config.round
    name = child_name(job.metadata.name, round_, stage, attempt)
    settings = effective_pod_settings(job, stage)
    gpus = settings.gpus or 0
    labels = with_extra_labels(child_labels(job, round_, stage), settings.labels)

    env = env_vars(
        [
            # The stage writes its StageResult here; the kubelet copies it into the pod's termination message.
            ("TAO_RESULT_PATH", RESULT_PATH),
            # The root filesystem is read-only: every home, cache and model download goes to the /tmp emptyDir.
            ("HOME", "/tmp"),
            ("HF_HOME", "/tmp/hf"),
            *cache_env(job),
            ("TOKENIZERS_PARALLELISM", "false"),
        ],
        settings.env,
        # The operator reads the result from the termination message: that path is not the user's to move.
        fixed=frozenset({"TAO_RESULT_PATH"}),
    )
    env += secret_key_env(job, stage, {e.get("name") for e in env})
    # Several nodes or a sharding strategy: `tao-stage train` starts accelerate's launcher over this topology.
    launcher = stage == "train" and multinode.uses_launcher(job)
    if launcher:
        env += multinode.topology_env(job, name, gpus)
    multi_node = stage == "train" and multinode.train_nodes(job) > 1
    container: dict[str, Any] = {
        "name": "stage",
        "image": settings.image or defaults.trainer_image,
        "imagePullPolicy": defaults.image_pull_policy,
        "command": _stage_command(stage, gpus, launcher),
        "env": env,
    }
    if env_from := secret_env_from(job):
        container["envFrom"] = env_from
    if resources := container_resources(settings):
        container["resources"] = resources
    volume_mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{name}-config"}},
        tmp_volume(defaults),
    ]
    if cache := cache_volume(job):
        volume_mounts.append({"name": cache["name"], "mountPath": CACHE_MOUNT})
        volumes.append(cache)
    if gpus > 1:
        volume_mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append(dshm_volume(defaults))
    container |= {
        "volumeMounts": volume_mounts,
        "terminationMessagePath": RESULT_PATH,
        # File, not FallbackToLogsOnError: a log tail is not a StageResult, and a stage that dies without
        # writing one must read as "no result" to the operator, not as garbage JSON.
        "terminationMessagePolicy": "File",
        "securityContext": container_security_context(),
    }

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # Stage pods never call the Kubernetes API; no token means nothing to steal from a compromised pod.
        "automountServiceAccountToken": False,
        # Service links inject <SVC>_PORT-style variables for every Service in the namespace; nothing here
        # reads them, and names like VLLM_PORT collide with the libraries' own settings.
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        **pod_placement(settings),
        "containers": [container],
        "volumes": volumes,
    } | (multinode.multinode_pod_spec(name) if multi_node else {})
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
        # A pod evicted by a node drain, preemption or a lost node is not the stage failing: it does not count
        # against backoffLimit, and the Job controller starts a replacement.
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
            ]
        },
    }
    if stage in INDEXED_STAGES:
        if config.shards is not None:
            # Every pod would then process the same shards: the index would be ignored.
            raise ValueError(f"{stage} runs one pod per shard; its StageConfig must leave `shards` unset")
        shards = job.spec.generation.shards
        spec |= {"completionMode": "Indexed", "completions": shards, "parallelism": shards}
    elif multi_node:
        spec |= multinode.multinode_job_spec(job, name)
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
        "metadata": object_metadata(job, name, labels),
        "spec": spec,
    }

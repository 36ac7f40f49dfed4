"""The train stage across several processes and machines: its topology on the pod, and for `pods.train.nodes`
above 1 an Indexed Job of that many pods with a headless Service, the pattern JobSet and Kubeflow Trainer use.

Each pod is one node: the Job's completion index is its node rank, and the Service (`subdomain` of every pod)
gives pod `<job>-0` the stable name `<job>-0.<service>` that torchrun's c10d rendezvous meets at. The pods run
`tao-stage train`, which starts accelerate's launcher (torchrun) over the topology these variables describe
(`tao_trainer.train_launch`: the same code builds the launcher's arguments on a laptop and in the cluster).
"""

from __future__ import annotations

import hashlib
from typing import Any

from tao_operator.api import ANNOTATION_COMPLETION_INDEX, TAOJob
from tao_operator.builders.common import DNS_LABEL_MAX, Manifest, child_labels, child_name, object_metadata
from tao_trainer.contract import StageConfig
from tao_trainer.train_launch import (
    ENV_NODE_RANK,
    ENV_NODES,
    ENV_PROCS_PER_NODE,
    ENV_RDZV_ENDPOINT,
    RDZV_PORT,
    rdzv_endpoint,
)

RDZV_PORT_NAME = "rdzv"
# The label the Job controller puts on its pods (Kubernetes 1.27+): the Service selects one Job's pods only.
LABEL_JOB_NAME = "batch.kubernetes.io/job-name"


def train_nodes(job: TAOJob) -> int:
    return job.spec.pods.train.nodes


def training_service_name(job_child: str) -> str:
    """The headless Service of a train Job: its own name when that is a DNS-1035 label (starts with a letter),
    else a `tao-` name derived from it.

    >>> training_service_name("demo-r1-train"), training_service_name("7demo-r1-train")
    ('demo-r1-train', 'tao-7demo-r1-train')
    """
    name = job_child if job_child[0].isalpha() else f"tao-{job_child}"
    if len(name) <= DNS_LABEL_MAX:
        return name
    return f"tao-{hashlib.sha256(job_child.encode()).hexdigest()[:16]}-train"


def uses_launcher(job: TAOJob) -> bool:
    """Whether the train pod starts its processes through the stage's launcher: several nodes, or a sharding
    strategy (whose accelerate config the stage writes). One node of ddp keeps `torchrun --standalone`."""
    return train_nodes(job) > 1 or job.spec.training.strategy != "ddp"


def topology_env(job: TAOJob, job_child: str, gpus: int) -> list[dict[str, Any]]:
    """The variables `tao-stage train` reads its topology from (`Topology.from_env`)."""
    nodes = train_nodes(job)
    env: list[dict[str, Any]] = [
        {"name": ENV_NODES, "value": str(nodes)},
        {"name": ENV_PROCS_PER_NODE, "value": str(max(gpus, 1))},
    ]
    if nodes > 1:
        env += [
            # The completion index as the node rank, from the pod's own annotation (the Job controller's).
            {
                "name": ENV_NODE_RANK,
                "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{ANNOTATION_COMPLETION_INDEX}']"}
                },
            },
            {"name": ENV_RDZV_ENDPOINT, "value": rdzv_endpoint(job_child, training_service_name(job_child))},
        ]
    return env


def multinode_job_spec(job: TAOJob, job_child: str) -> dict[str, Any]:
    """What a multi-node train Job adds to its spec: one pod per node, all at once, by index.

    Every pod must run for the rendezvous to complete, so parallelism is the node count (Kueue admits the
    whole Job or none of it).
    """
    nodes = train_nodes(job)
    longest_host = f"{job_child}-{nodes - 1}"
    if len(longest_host) > DNS_LABEL_MAX:
        raise ValueError(
            f"pod hostname {longest_host!r} is longer than {DNS_LABEL_MAX} characters: shorten the TAOJob's name"
        )
    return {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes}


def multinode_pod_spec(job_child: str) -> dict[str, Any]:
    """The pod's place under the headless Service: `<job>-<index>.<service>` resolves to it."""
    return {"subdomain": training_service_name(job_child)}


def training_service(job: TAOJob, config: StageConfig, attempt: int = 1) -> Manifest:
    """The headless Service of a multi-node train Job; owned by the TAOJob like every child.

    It publishes not-ready pods: the rendezvous happens before any readiness could be known.
    """
    child = child_name(job.metadata.name, config.round, config.stage, attempt)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(
            job, training_service_name(child), child_labels(job, config.round, config.stage)
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB_NAME: child},
            "ports": [
                {"name": RDZV_PORT_NAME, "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}
            ],
        },
    }


def stage_services(job: TAOJob, config: StageConfig, attempt: int = 1) -> list[Manifest]:
    """The Services a stage needs before its Job: the headless one of a multi-node train stage, else none."""
    if config.stage != "train" or train_nodes(job) <= 1:
        return []
    return [training_service(job, config, attempt)]

"""Multi-node training manifests: an Indexed train Job of `pods.train.nodes` pods under a headless Service,
validated strictly against the Kubernetes schemas, and the topology each pod reads back as the train stage does."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from unit.test_builders import DEFAULTS, K8S_VERSIONS, config, container, pod, taojob

from tao_operator.builders import stage_job, stage_services
from tao_operator.builders.multinode import LABEL_JOB_NAME, training_service_name
from tao_trainer.train_launch import (
    ENV_NODE_RANK,
    RDZV_PORT,
    Topology,
    accelerate_config,
    launcher_argv,
)


def _multinode(nodes: int = 3, gpus: int = 8, strategy: str = "fsdp", name: str = "demo") -> Any:
    return taojob(name=name, pods={"train": {"gpus": gpus, "nodes": nodes}}, training={"strategy": strategy})


def _env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifest)["env"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_multinode_job_and_service_are_valid_kubernetes(version: str) -> None:
    job = _multinode()
    cfg = config(job, "train")
    for manifest in [stage_job(job, cfg, DEFAULTS), *stage_services(job, cfg)]:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_each_node_is_one_indexed_pod_that_finds_node_0_through_the_headless_service() -> None:
    job = _multinode(nodes=3, gpus=8)
    cfg = config(job, "train")
    manifest = stage_job(job, cfg, DEFAULTS)
    (service,) = stage_services(job, cfg)
    name = manifest["metadata"]["name"]
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    assert pod(manifest)["subdomain"] == service["metadata"]["name"] == training_service_name(name)
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {LABEL_JOB_NAME: name}
    # Owned by the TAOJob (by uid) like every child, so it goes with it.
    (owner,) = service["metadata"]["ownerReferences"]
    assert owner["uid"] == job.metadata.uid and owner["controller"] is True

    assert container(manifest)["command"] == ["tao-stage", "train", "--config", "/etc/tao/config.json"]
    env = _env(manifest)
    assert env[ENV_NODE_RANK] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    # What the stage reads back, with the rank the Job controller gives pod 2, and the launcher it then runs.
    pod_env = {k: v for k, v in env.items() if isinstance(v, str)} | {ENV_NODE_RANK: "2"}
    topology = Topology.from_env(pod_env)
    assert topology == Topology(3, 8, 2, f"{name}-0.{service['metadata']['name']}:{RDZV_PORT}")
    argv = launcher_argv(topology, "/tmp/accelerate.json", ["train"])
    flags = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert flags["--num_machines"] == "3" and flags["--num_processes"] == "24"
    assert flags["--machine_rank"] == "2" and flags["--rdzv_backend"] == "c10d"
    assert flags["--main_process_ip"] == f"{name}-0.{service['metadata']['name']}"


def test_one_node_keeps_a_plain_job_and_no_service() -> None:
    job = taojob(pods={"train": {"gpus": 4}})
    cfg = config(job, "train")
    manifest = stage_job(job, cfg, DEFAULTS)
    assert manifest["spec"]["completions"] == 1 and "completionMode" not in manifest["spec"]
    assert "subdomain" not in pod(manifest) and stage_services(job, cfg) == []
    # A sharding strategy on one node goes through the launcher too (its accelerate config), without a rank.
    sharded = taojob(pods={"train": {"gpus": 4}}, training={"strategy": "deepspeed-zero3"})
    env = _env(stage_job(sharded, config(sharded, "train"), DEFAULTS))
    assert container(stage_job(sharded, config(sharded, "train"), DEFAULTS))["command"][0] == "tao-stage"
    assert Topology.from_env({k: v for k, v in env.items() if isinstance(v, str)}) == Topology(1, 4, 0, None)


def test_nodes_is_a_train_setting_only() -> None:
    with pytest.raises(Exception, match="nodes"):
        taojob(pods={"generate": {"nodes": 2}})
    with pytest.raises(Exception, match="nodes"):
        taojob(pods={"train": {"nodes": 0}})


def test_a_digit_first_or_long_name_still_gets_a_dns_1035_service() -> None:
    job = _multinode(name="7" + "a" * 40)
    (service,) = stage_services(job, config(job, "train"))
    assert service["metadata"]["name"][0].isalpha() and len(service["metadata"]["name"]) <= 63
    kubernetes_validate.validate(service, K8S_VERSIONS[-1], strict=True)


def test_the_longest_names_leave_room_for_every_node_hostname() -> None:
    job = _multinode(nodes=1024, name="a" * 48)
    manifest = stage_job(job, config(job, "train", 1000), DEFAULTS, attempt=6)
    assert len(f"{manifest['metadata']['name']}-1023") <= 63
    kubernetes_validate.validate(manifest, K8S_VERSIONS[-1], strict=True)


def test_the_accelerate_configs_load_with_accelerates_own_loader(tmp_path: Any) -> None:
    import json

    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    kinds = {
        "ddp": DistributedType.MULTI_GPU,
        "fsdp": DistributedType.FSDP,
        "deepspeed-zero3": DistributedType.DEEPSPEED,
    }
    for strategy, kind in kinds.items():
        path = tmp_path / f"{strategy}.json"
        path.write_text(json.dumps(accelerate_config(strategy, Topology(2, 8, 1, "h:1"), bf16=True)))
        loaded = load_config_from_file(str(path))
        assert loaded.distributed_type == kind
        assert (loaded.num_machines, loaded.num_processes, loaded.rdzv_backend) == (2, 16, "c10d")
        assert loaded.mixed_precision == "bf16"
    fsdp = load_config_from_file(str(tmp_path / "fsdp.json")).fsdp_config
    assert (
        fsdp["fsdp_sharding_strategy"] == "FULL_SHARD" and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    )
    zero = load_config_from_file(str(tmp_path / "deepspeed-zero3.json")).deepspeed_config
    assert zero["zero_stage"] == 3 and zero["deepspeed_multinode_launcher"] == "standard"

"""How a train stage spreads over processes and nodes: the topology, the accelerate config of a strategy, and
the launcher command line (accelerate's launcher, which runs PyTorch's torchrun with c10d rendezvous).

Pure and import-light: the operator's builders read the environment names and the rendezvous port from here,
so that the manifests and the stage agree on them by construction.

On Kubernetes a multi-node train stage is an Indexed Job with a headless Service: every pod runs `tao-stage
train`, which (being no launched worker itself) writes the accelerate config and starts the launcher with this
pod's node rank (its completion index) and node 0's stable DNS name as the rendezvous endpoint. The same
command line, with 127.0.0.1 as the endpoint, runs two "nodes" on one machine in the tests.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Set by the operator on train pods (builders/multinode.py); read here.
ENV_NODES = "TAO_TRAIN_NODES"
ENV_PROCS_PER_NODE = "TAO_TRAIN_PROCS_PER_NODE"
ENV_NODE_RANK = "TAO_TRAIN_NODE_RANK"
ENV_RDZV_ENDPOINT = "TAO_TRAIN_RDZV_ENDPOINT"
# torchrun's c10d rendezvous port on node 0 (torchrun's own default for --rdzv-endpoint without a port).
RDZV_PORT = 29400
# Set by torchrun in every process it starts: a launched worker never launches again.
WORKER_MARKER = "LOCAL_RANK"


@dataclass(frozen=True)
class Topology:
    """Where this train stage's processes run: `nodes` machines of `procs_per_node` processes (one per GPU)."""

    nodes: int = 1
    procs_per_node: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # host:port of node 0, for nodes > 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Topology:
        """The topology the operator gave this pod (a single process when nothing is set).

        >>> Topology.from_env({ENV_NODES: "2", ENV_PROCS_PER_NODE: "8", ENV_NODE_RANK: "1",
        ...                    ENV_RDZV_ENDPOINT: "j-0.j:29400"}).world_size
        16
        >>> Topology.from_env({})
        Topology(nodes=1, procs_per_node=1, node_rank=0, rdzv_endpoint=None)
        """
        topo = cls(
            nodes=int(env.get(ENV_NODES) or 1),
            procs_per_node=int(env.get(ENV_PROCS_PER_NODE) or 1),
            node_rank=int(env.get(ENV_NODE_RANK) or 0),
            rdzv_endpoint=env.get(ENV_RDZV_ENDPOINT) or None,
        )
        if topo.nodes < 1 or topo.procs_per_node < 1 or not 0 <= topo.node_rank < topo.nodes:
            raise ValueError(f"inconsistent training topology {topo}")
        if topo.nodes > 1 and topo.rdzv_endpoint is None:
            raise ValueError(f"{ENV_NODES}={topo.nodes} needs {ENV_RDZV_ENDPOINT} (node 0's host:port)")
        return topo

    def to_env(self) -> dict[str, str]:
        env = {
            ENV_NODES: str(self.nodes),
            ENV_PROCS_PER_NODE: str(self.procs_per_node),
            ENV_NODE_RANK: str(self.node_rank),
        }
        return env | ({ENV_RDZV_ENDPOINT: self.rdzv_endpoint} if self.rdzv_endpoint else {})


def rdzv_endpoint(job_name: str, service: str, port: int = RDZV_PORT) -> str:
    """Node 0's stable name: an Indexed Job's pod `<job>-0` under the headless Service `service`.

    >>> rdzv_endpoint("run-r1-train", "run-r1-train")
    'run-r1-train-0.run-r1-train:29400'
    """
    return f"{job_name}-0.{service}:{port}"


def needs_launcher(topology: Topology, strategy: str) -> bool:
    """More than one process, or a sharding strategy (FSDP and ZeRO-3 also run, offloading, on one GPU).

    >>> needs_launcher(Topology(), "ddp"), needs_launcher(Topology(procs_per_node=2), "ddp")
    (False, True)
    >>> needs_launcher(Topology(), "fsdp")
    True
    """
    return topology.world_size > 1 or strategy != "ddp"


def is_launched_worker(env: Mapping[str, str] | None = None) -> bool:
    return WORKER_MARKER in (os.environ if env is None else env)


def accelerate_config(
    strategy: str, topology: Topology, *, bf16: bool, gradient_accumulation_steps: int = 1
) -> dict[str, Any]:
    """accelerate's config file (ClusterConfig fields) for a strategy; the launcher's flags add the rank.

    FSDP saves FULL_STATE_DICT so that `trainer.save_model` writes an ordinary HF model (and checkpoints
    resume on the same topology); ZeRO-3 gathers 16-bit weights on save for the same reason, and uses the
    "standard" multi-node launcher, i.e. torchrun, as ddp and fsdp do (no pdsh or ssh between pods).

    >>> accelerate_config("fsdp", Topology(nodes=2, procs_per_node=8), bf16=True)["num_processes"]
    16
    >>> accelerate_config("deepspeed-zero3", Topology(), bf16=False)["deepspeed_config"]["zero_stage"]
    3
    """
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "MULTI_GPU",
        "mixed_precision": "bf16" if bf16 else "no",
        "use_cpu": False,
        "num_machines": topology.nodes,
        "num_processes": topology.world_size,
        "machine_rank": topology.node_rank,
        "rdzv_backend": "c10d",
        "same_network": False,
        "main_training_function": "main",
    }
    if strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_offload_params": False,
            # Each node reads the weights once (rank 0) and broadcasts them: no N copies in CPU memory.
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_sync_module_states": True,
            # LoRA freezes most parameters: FSDP1 then needs the original parameters.
            "fsdp_use_orig_params": True,
        }
    elif strategy == "deepspeed-zero3":
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {
            "zero_stage": 3,
            "zero3_init_flag": True,
            "zero3_save_16bit_model": True,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "gradient_clipping": 1.0,
            "deepspeed_multinode_launcher": "standard",
        }
    elif strategy != "ddp":
        raise ValueError(f"unknown training strategy {strategy!r}")
    return config


def launcher_argv(topology: Topology, config_file: str, stage_args: list[str]) -> list[str]:
    """`accelerate launch` over this topology, then `python -m tao_trainer.cli <stage_args>` in every worker.

    With more than one node, accelerate hands torchrun `--nnodes`, `--node-rank` and `--rdzv-endpoint` (c10d
    rendezvous at node 0); the workers join when every node's launcher has arrived.

    >>> argv = launcher_argv(Topology(2, 1, 1, "127.0.0.1:29400"), "/tmp/a.json", ["train", "--config", "c"])
    >>> " ".join(argv[1:])
    '-m accelerate.commands.launch --config_file /tmp/a.json --num_machines 2 --num_processes 2 --machine_rank 1 --rdzv_backend c10d --max_restarts 0 --main_process_ip 127.0.0.1 --main_process_port 29400 -m tao_trainer.cli train --config c'
    """
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        config_file,
        "--num_machines",
        str(topology.nodes),
        "--num_processes",
        str(topology.world_size),
        "--machine_rank",
        str(topology.node_rank),
        "--rdzv_backend",
        "c10d",
        # A failed worker fails the pod: the Job's retries (and the checkpoints) restart training, not torchrun.
        "--max_restarts",
        "0",
    ]
    if topology.rdzv_endpoint is not None:
        host, _, port = topology.rdzv_endpoint.rpartition(":")
        argv += ["--main_process_ip", host, "--main_process_port", port]
    return [*argv, "-m", "tao_trainer.cli", *stage_args]

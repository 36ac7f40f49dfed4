"""The train stage across processes and nodes: the launcher side (this pod's `tao-stage train`, which starts
the workers) and what the workers do differently from a single process (sharded saves).

The launcher writes the strategy's accelerate config and the StageConfig to a local folder, runs accelerate's
launcher (torchrun with c10d rendezvous over `Topology`) with `tao_trainer.cli train` in every worker, and
reports what rank 0 reported. The c10d rendezvous gives out ranks in the order the nodes arrive, so rank 0 may
run on any node; the others report rank 0's stored result without counts, so that the Job's per-node results
add up to one training run.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tao_trainer import models, storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.stages.common import log
from tao_trainer.train_launch import Topology, accelerate_config, launcher_argv

# Where the workers of one node keep the trainer's output (checkpoints): one folder shared by the node's ranks.
ENV_WORKDIR = "TAO_TRAIN_WORKDIR"
# How long a node without rank 0 waits for rank 0's result after its own workers finished (rank 0 may still be
# uploading the model).
RANK_ZERO_WAIT_SECONDS = 3600


def launch(cfg: StageConfig, topology: Topology) -> StageResult:
    """Run the training workers of this node and wait for them; the stage's result."""
    t = cfg.spec.training
    with tempfile.TemporaryDirectory(prefix="tao-launch-") as tmp:
        config_file = Path(tmp) / "accelerate.json"
        config = accelerate_config(
            t.strategy,
            topology,
            bf16=models.device() == "cuda",
            gradient_accumulation_steps=t.gradient_accumulation_steps,
        )
        config_file.write_text(json.dumps(config, indent=2))
        stage_file, result_file = Path(tmp) / "stage.json", Path(tmp) / "result.json"
        stage_file.write_text(cfg.model_dump_json(by_alias=True))
        argv = launcher_argv(
            topology, str(config_file), ["train", "--config", str(stage_file), "--result", str(result_file)]
        )
        workdir = Path(tmp) / "trainer-work"
        workdir.mkdir()
        log(
            f"train: {t.strategy} on {topology.nodes} node(s) x {topology.procs_per_node} process(es), "
            f"this is node {topology.node_rank}"
        )
        env = os.environ | {ENV_WORKDIR: str(workdir)}
        code = subprocess.run(argv, env=env, check=False).returncode
        worker = StageResult.model_validate_json(result_file.read_text()) if result_file.exists() else None
    if code != 0:
        why = worker.message if worker is not None and worker.message else "see the pod's log"
        raise RuntimeError(f"the training processes of node {topology.node_rank} failed (exit {code}): {why}")
    if worker is not None:
        return worker
    return rank_zero_result(cfg, topology)


def rank_zero_result(cfg: StageConfig, topology: Topology) -> StageResult:
    """Rank 0's result, for another node to report: the same outputs, no counts or metrics of its own."""
    done = f"{RunLayout(cfg.run_uri).train_dir(cfg.round)}/result.json"
    deadline = time.monotonic() + RANK_ZERO_WAIT_SECONDS
    while not storage.exists(done):
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {topology.node_rank}: rank 0 wrote no result to {done}")
        time.sleep(5)
    zero = StageResult.model_validate_json(storage.read_text(done))
    return StageResult(
        stage="train",
        round=cfg.round,
        outputs=zero.outputs,
        message=f"node {topology.node_rank} of {topology.nodes}: trained with the node of rank 0",
    )


def parameter_count(model_path: str | Path) -> int | None:
    """Parameters of an HF model folder, from its safetensors headers (no weights read); None if unknown."""
    total, found = 0, False
    for file in sorted(Path(model_path).glob("*.safetensors")):
        with open(file, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, entry in header.items():
            if name != "__metadata__":
                n = 1
                for dim in entry["shape"]:
                    n *= dim
                total += n
                found = True
    return total if found else None


def save_sharded(
    trainer: Any, local: Path, tokenizer: Any, lora: Any, model_path: str, base_uri: str | None
) -> bool:
    """Save a model trained under FSDP or ZeRO-3: every rank takes part in gathering the weights; rank 0
    writes them (and merges a LoRA adapter into a fresh copy of the base). True on the process that wrote."""
    trainer.save_model(str(local))  # collective: gathers the full state dict, written by the main process
    if not trainer.is_world_process_zero():
        return False
    if lora is not None and lora.merge:
        from peft import PeftModel

        adapter_dir = local.with_name(local.name + "-adapter")
        local.rename(adapter_dir)
        import torch
        from transformers import AutoModelForCausalLM

        # On the CPU: the sharded training copy still holds the GPUs.
        base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        models.save_model(merged, tokenizer, local)
        return True
    tokenizer.save_pretrained(local)
    if base_uri is not None:
        (local / models.ADAPTER_BASE_FILE).write_text(json.dumps({"uri": base_uri}))
    return True

"""The multi-node launch path on one machine: two `tao-stage train` processes stand for two nodes of an Indexed
Job, each given the topology the operator's manifests give a train pod (builders/multinode.py), with 127.0.0.1
as node 0's rendezvous address. They train one SFT run together over gloo (one world of two processes), and
only rank 0 writes the model and the result."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import stage.test_stages as stage_tests
from stage.test_stages import config, run_through

from tao_trainer import storage
from tao_trainer.layout import RunLayout
from tao_trainer.stages.train_checkpoints import checkpoints_prefix, complete_steps
from tao_trainer.train_launch import Topology

pytestmark = pytest.mark.filterwarnings("ignore")
workspace = stage_tests.workspace  # the fixture, shared with the other stage tests
BATCH = 24


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stage_process(cfg_path: Path, result: Path, topology: Topology) -> subprocess.Popen[bytes]:
    env = os.environ | topology.to_env() | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TAO_RESULT_PATH", None)
    with open(result.with_suffix(".log"), "wb") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tao_trainer.cli",
                "train",
                "--config",
                str(cfg_path),
                "--result",
                str(result),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Node 0's launcher hosts the rendezvous store; on one machine node 1 must not win the port first (on a
    cluster node 1 cannot: the endpoint's name is node 0's)."""
    while proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"node 0 exited with {proc.returncode} before listening")


def test_two_nodes_train_one_ddp_run_over_gloo_and_rank_0_alone_writes(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    training: dict[str, Any] = {
        "method": "sft",
        "learningRate": 1e-3,
        "batchSize": BATCH,
        "sft": {"minScore": 0.0},
        "strategy": "ddp",
        "checkpoints": {"everySteps": 1, "everyMinutes": None, "keep": 10},
    }
    run_through(workspace, "prepare", "generate", "score", training=training)
    cfg = config(workspace, "train", training=training)
    cfg_path = tmp_path / "train.json"
    cfg_path.write_text(cfg.model_dump_json(by_alias=True))

    port = _free_port()
    nodes = [
        Topology(nodes=2, procs_per_node=1, node_rank=k, rdzv_endpoint=f"127.0.0.1:{port}") for k in (0, 1)
    ]
    results = [tmp_path / f"result-{t.node_rank}.json" for t in nodes]
    procs = [_stage_process(cfg_path, results[0], nodes[0])]
    try:
        _wait_listening(port, procs[0])
        procs.append(_stage_process(cfg_path, results[1], nodes[1]))
        for p, result in zip(procs, results, strict=True):
            assert p.wait(timeout=600) == 0, result.with_suffix(".log").read_text()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    reports = [json.loads(r.read_text()) for r in results]
    assert all(r["ok"] for r in reports)
    # c10d hands out ranks in arrival order: rank 0 runs on either node, and its node reports the run.
    main, other = sorted(reports, key=lambda r: "processes" not in r["counts"])
    counts = main["counts"]
    assert counts["processes"] == 2  # one world across both "nodes", not two single-process runs
    # Each optimizer step took batchSize examples on each of the two processes.
    assert counts["steps"] == math.ceil(counts["examples"] / (BATCH * 2)) >= 2
    # The other node reports the same outputs and no counts of the run, only what its own process used (CPU
    # time, summed with rank 0's into the stage's use): the Job's results add up to one run.
    assert other["outputs"]["model"] == main["outputs"]["model"]
    assert set(other["counts"]) == {"cpuSeconds"} and other["counts"]["cpuSeconds"] > 0

    # A checkpoint after every step but the last, each with both nodes' parts (rank 1's RNG state is on its node)
    # and complete only once both were uploaded.
    prefix = checkpoints_prefix(RunLayout(cfg.run_uri).train_dir(1))
    assert complete_steps(prefix) == list(range(1, counts["steps"]))
    for step in complete_steps(prefix):
        files = [uri.rsplit("/checkpoint-", 1)[1] for uri in storage.list_uris(f"{prefix}/checkpoint-{step}")]
        assert {f"{step}/node-0/trainer_state.json", f"{step}/node-1/rng_state_1.pth"} <= set(files) or {
            f"{step}/node-1/trainer_state.json",
            f"{step}/node-0/rng_state_1.pth",
        } <= set(files)

    from transformers import AutoModelForCausalLM

    lay = RunLayout(cfg.run_uri)
    local = storage.local_dir(lay.model(1))
    assert AutoModelForCausalLM.from_pretrained(local).num_parameters() > 0

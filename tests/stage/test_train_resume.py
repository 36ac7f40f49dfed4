"""Checkpoints and resume of the train stage: a train process killed mid-training (SIGKILL, as a preempted or
evicted pod dies) leaves its newest complete checkpoint in the run's storage, and the re-run continues from it
instead of training the finished steps again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import stage.test_stages as stage_tests
from stage.test_stages import config, run_through

from tao_trainer import storage
from tao_trainer.cli import _runner
from tao_trainer.layout import RunLayout
from tao_trainer.stages.train_checkpoints import checkpoints_prefix, complete_steps

pytestmark = pytest.mark.filterwarnings("ignore")
workspace = stage_tests.workspace  # the fixture, shared with the other stage tests

TRAINING: dict[str, Any] = {
    "method": "sft",
    "learningRate": 1e-3,
    "batchSize": 1,
    "epochs": 2.0,
    "sft": {"minScore": 0.0},
    "checkpoints": {"everySteps": 10, "everyMinutes": None, "keep": 1},
}


def _kill_after_first_checkpoint(cfg_path: Path, prefix: str, log: Path) -> None:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TAO_RESULT_PATH", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tao_trainer.cli", "train", "--config", str(cfg_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        while proc.poll() is None and not complete_steps(prefix):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        "training ended before it could be killed:\n" + log.read_text()[-2000:]
    )


def test_a_killed_train_stage_resumes_from_its_newest_checkpoint(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    run_through(workspace, "prepare", "generate", "score", training=TRAINING)
    cfg = config(workspace, "train", training=TRAINING)
    cfg_path = tmp_path / "train.json"
    cfg_path.write_text(cfg.model_dump_json(by_alias=True))
    lay = RunLayout(cfg.run_uri)
    prefix = checkpoints_prefix(lay.train_dir(1))

    _kill_after_first_checkpoint(cfg_path, prefix, tmp_path / "killed.log")
    assert not storage.exists(f"{lay.train_dir(1)}/result.json")  # the killed run finished nothing
    saved = complete_steps(prefix)[-1]
    state = storage.read_json(f"{prefix}/checkpoint-{saved}/node-0/trainer_state.json")
    assert state["global_step"] == saved and saved % 10 == 0
    # A checkpoint whose upload never finished (no marker) is not resumed from, even if newer.
    storage.write_text(f"{prefix}/checkpoint-999999/node-0/trainer_state.json", "{torn")

    result = _runner("train")(cfg)
    counts = result.counts
    total = counts["examples"] * 2  # batch 1, 2 epochs
    assert counts["resumedFromStep"] == saved
    assert counts["steps"] == total and counts["stepsRun"] == total - saved  # no finished step trained again
    history = storage.read_json(f"{lay.train_dir(1)}/metrics.json")["logHistory"]
    assert history[-1]["step"] == total  # the restored state carries on to the end

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(storage.local_dir(lay.model(1)))
    assert model.num_parameters() > 0
    # Only the newest `keep` checkpoints stay in storage; none at the last step, where the model itself is saved.
    assert total % 10 != 0 and complete_steps(prefix) == [total // 10 * 10]


def test_clock_checkpoints_keep_the_newest_ones(workspace: dict[str, Path]) -> None:
    training = TRAINING | {"epochs": 0.1, "checkpoints": {"everyMinutes": 1e-6, "keep": 2}}
    run_through(workspace, "prepare", "generate", "score", training=training)
    cfg = config(workspace, "train", training=training)
    result = _runner("train")(cfg)
    steps = result.counts["steps"]
    prefix = checkpoints_prefix(RunLayout(cfg.run_uri).train_dir(1))
    # Due after every step but the last: the newest two remain, each whole (marker and files).
    assert complete_steps(prefix) == [steps - 2, steps - 1]
    for step in (steps - 2, steps - 1):
        state = json.loads(storage.read_text(f"{prefix}/checkpoint-{step}/node-0/trainer_state.json"))
        assert state["global_step"] == step

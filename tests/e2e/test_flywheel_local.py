"""`tao run --cycles` on a continuous TAOJob: round 2 waits for new prompts, then trains on them alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.filterwarnings("ignore")

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_prompts(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))


def test_two_cycles_second_waits_for_new_prompts_and_trains_on_them(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "prompts"
    data.mkdir()
    write_prompts(data / "day-1.jsonl", [f"{i}+1=" for i in range(24)])
    spec = {
        "model": {"uri": str(tiny_model)},
        "prompts": {"uri": "prompts/", "heldOutFraction": 0.25},
        "storage": {"uri": "runs"},
        "continuous": {"interval": "1s", "minNewPrompts": 8},
        "generation": {"candidates": 2, "maxNewTokens": 4, "batchSize": 16},
        "scoring": {"scorers": [{"type": "regex", "pattern": r"\d", "mode": "search"}]},
        "training": {"learningRate": 1e-3, "batchSize": 8, "sft": {"minScore": 0.0, "topK": 1}},
        "evaluation": {"maxPrompts": 4, "minImprovement": -10.0, "alarms": False},
        "preflight": {"enabled": False},
    }
    job = tmp_path / "taojob.yaml"
    job.write_text(
        yaml.safe_dump(
            {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "wheel"}, "spec": spec}
        )
    )
    run = tmp_path / "runs/default/wheel/local"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tao_operator.cli", "run", str(job), "--cycles", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run / "round-001/results/evaluate.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # The watch polls and finds too few new prompts (its first poll, read from the run's log, so that a
        # slow machine cannot start it after the new prompts arrive): round 2 must not start yet.
        log = run / "tao-run.log"
        while "watch: round 2: 0/8 new prompts" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert not (run / "round-002/prompts").exists() and proc.poll() is None
        write_prompts(data / "day-2.jsonl", [f"{i}+2=" for i in range(40)])  # served traffic arrives
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    watch = json.loads((run / "round-002/results/watch.json").read_text())
    assert watch["counts"]["newPrompts"] == 40 and watch["counts"]["polls"] >= 2
    round2 = {json.loads(line)["prompt"] for line in (run / "round-002/prompts/shard-00000.jsonl").open()}
    assert round2 and all(p.endswith("+2=") for p in round2)  # only the new prompts
    config = json.loads((run / "round-002/configs/train.json").read_text())
    assert config["modelUri"] == (run / "round-001/train/model").as_uri()  # round 1 promoted: the champion
    history = [json.loads(line) for line in (run / "history.jsonl").open()]
    assert [h["round"] for h in history] == [1, 2]
    assert "round 2/2: starting from" in out and "runs until interrupted" not in err

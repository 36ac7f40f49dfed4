"""`evaluation` and `scoring` edits apply from the next round not yet started, in both executors (issue 14).

Each round records those sections when its first stage starts and all its stages run on the record: a round's
candidates are scored, trained on and gated under one spec. On the emulated cluster the record is in
`status.rounds[].spec`; under `tao run` in `<run>/round-NNN/spec.json`. A retry after a failure (the user may
have fixed a scorer) records the round's sections again. Lowering `rounds` mid-round is
test_faults.py::test_lowering_rounds_suspends_the_running_job_of_a_dropped_round.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_cluster import FakeCluster, settle, stage_result
from taojob_rig import drive, setup, state, taojob

from tao_trainer.contract import StageResult

OLD = [{"type": "regex", "pattern": ".+"}]
NEW = [{"type": "regex", "pattern": "[0-9]+"}]


def stage_spec(cluster: FakeCluster, round_: int, stage: str) -> dict[str, Any]:
    """The spec a stage's pods were given (its ConfigMap)."""
    cm = cluster.objects[("configmaps", "default", f"arith-r{round_}-{stage}-config")]
    spec: dict[str, Any] = json.loads(cm["data"]["config.json"])["spec"]
    return spec


def scorers(spec: dict[str, Any]) -> list[str]:
    return [s["pattern"] for s in spec["scoring"]["scorers"]]


def test_a_scoring_edit_mid_round_applies_from_the_next_round() -> None:
    cluster, rec, _ = setup()
    asyncio.run(rec.reconcile("default", "arith"))  # round 1 starts: its prepare Job runs
    settle(cluster)
    asyncio.run(rec.reconcile("default", "arith"))  # round 1's generate
    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["scoring"] = {"scorers": NEW}
    doc["spec"]["evaluation"] = {"minImprovement": 0.5}
    doc["metadata"]["generation"] = 2
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"

    for stage in ("prepare", "generate", "score", "train", "evaluate"):
        assert scorers(stage_spec(cluster, 1, stage)) == [".+"], stage
        assert stage_spec(cluster, 1, stage)["evaluation"]["minImprovement"] != 0.5
        assert scorers(stage_spec(cluster, 2, stage)) == ["[0-9]+"], stage
        assert stage_spec(cluster, 2, stage)["evaluation"]["minImprovement"] == 0.5
    r1, r2 = state(cluster)["rounds"]
    assert r1["spec"]["digest"] != r2["spec"]["digest"]
    assert "values" not in r1["spec"] and "values" not in r2["spec"]  # kept only while a round runs
    assert state(cluster)["observedGeneration"] == 2


def test_a_running_round_keeps_its_record_across_operator_restarts() -> None:
    cluster, rec, _ = setup()
    asyncio.run(rec.reconcile("default", "arith"))
    settle(cluster)
    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["scoring"] = {"scorers": NEW}
    recorded = json.loads(state(cluster)["rounds"][0]["spec"]["values"])
    assert [s["pattern"] for s in recorded["scoring"]["scorers"]] == [".+"]
    _, fresh, _ = setup()  # a restarted operator: nothing in memory, the record is in status
    fresh.cluster = cluster
    for _ in range(4):
        asyncio.run(fresh.reconcile("default", "arith"))
        settle(cluster)
    assert scorers(stage_spec(cluster, 1, "score")) == [".+"]


def test_a_retry_runs_the_rest_of_the_round_on_the_edited_scorers() -> None:
    cluster, rec, _ = setup()

    def score_fails_with_the_old_scorer(job: dict[str, Any]) -> StageResult:
        labels = job["metadata"]["labels"]
        stage, round_ = labels["tao.dev/stage"], int(labels["tao.dev/round"])
        cm = cluster.objects[("configmaps", "default", f"{job['metadata']['name']}-config")]
        if stage == "score" and scorers(json.loads(cm["data"]["config.json"])["spec"]) == [".+"]:
            return StageResult(stage="score", round=round_, ok=False, message="scorer crashed")
        return stage_result("arith", stage, round_)

    assert asyncio.run(drive(cluster, rec, result_for=score_fails_with_the_old_scorer)) == "Failed"
    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["scoring"] = {"scorers": NEW}
    doc["metadata"]["annotations"] = {"tao.dev/retry": "1"}
    assert asyncio.run(drive(cluster, rec, result_for=score_fails_with_the_old_scorer)) == "Succeeded"
    assert scorers(stage_spec(cluster, 1, "generate")) == [".+"]  # ran before the failure: kept
    cm = cluster.objects[("configmaps", "default", "arith-r1-score-a2-config")]
    assert scorers(json.loads(cm["data"]["config.json"])["spec"]) == ["[0-9]+"]


def test_an_edit_while_a_continuous_round_waits_for_prompts_applies_to_that_round() -> None:
    """The watch stage only waits: the round it opens records its sections with the stage after it."""
    doc = taojob(prompts={"uri": "file:///prompts/"}, continuous={"interval": "1s", "maxRounds": 2})
    del doc["spec"]["rounds"]
    cluster, rec, _ = setup(doc)
    for _ in range(20):
        asyncio.run(rec.reconcile("default", "arith"))
        if "arith-r2-watch" in cluster.jobs():
            break
        settle(cluster)
    assert "arith-r2-prepare" not in cluster.jobs()
    cluster.objects[("taojobs", "default", "arith")]["spec"]["scoring"] = {"scorers": NEW}
    assert asyncio.run(drive(cluster, rec)) == "Succeeded"
    assert scorers(stage_spec(cluster, 1, "score")) == [".+"]
    assert scorers(stage_spec(cluster, 2, "score")) == ["[0-9]+"]


# ------------------------------------------------------------------------------------------- tao run

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_job(tmp: Path, model: Path, scorer: list[dict[str, Any]]) -> Path:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}+1="}) + "\n" for i in range(40)))
    spec = {
        "model": {"uri": str(model)},
        "prompts": {"uri": "prompts.jsonl"},
        "storage": {"uri": "runs"},
        "rounds": 2,
        "preflight": {"enabled": False},
        "generation": {"candidates": 2, "maxNewTokens": 4, "batchSize": 16, "shards": 2},
        "scoring": {"scorers": scorer},
        "training": {"method": "sft", "learningRate": 1e-3, "batchSize": 8, "sft": {"minScore": 0.0}},
        "evaluation": {"maxPrompts": 4, "minImprovement": -10.0, "alarms": False},
    }
    job = {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "snap"}, "spec": spec}
    path = tmp / "taojob.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_tao_run_interrupted_mid_round_finishes_it_on_its_record(tmp_path: Path, tiny_model: Path) -> None:
    job = write_job(tmp_path, tiny_model, OLD)
    run = tmp_path / "runs/default/snap/local"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tao_operator.cli", "run", str(job)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (run / "round-001/results/prepare.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "round 1 never prepared"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # round 1 is under way
    proc.wait()
    assert not (run / "round-002").exists()

    write_job(tmp_path, tiny_model, NEW)  # the edit, between two runs of the same command
    resumed = subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", "run", str(job)],
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for stage in ("prepare", "generate", "score", "train", "evaluate"):
        one = json.loads((run / f"round-001/configs/{stage}.json").read_text())["spec"]
        two = json.loads((run / f"round-002/configs/{stage}.json").read_text())["spec"]
        assert (scorers(one), scorers(two)) == ([".+"], ["[0-9]+"]), stage
    spec_one = json.loads((run / "round-001/spec.json").read_text())
    spec_two = json.loads((run / "round-002/spec.json").read_text())
    assert spec_one["digest"] != spec_two["digest"]

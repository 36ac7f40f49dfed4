"""`tao run` end to end on a tiny model: report, champion, resumption, and labels kept out of the loop."""

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
import yaml

pytestmark = pytest.mark.filterwarnings("ignore")

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

SPY_SCORER = '''
import json, os

def spy(prompts, completions, **kwargs):
    """Records which record fields reach scoring; rewards candidates containing a digit."""
    with open(os.environ["TAO_SPY_FILE"], "a") as f:
        f.write(json.dumps(sorted(kwargs)) + "\\n")
    return [1.0 if any(ch.isdigit() for ch in c) else 0.0 for c in completions]
'''


def write_job(tmp: Path, model: Path, n_prompts: int = 40, **spec_overrides: Any) -> Path:
    prompts = tmp / "prompts.jsonl"
    with prompts.open("w") as f:
        for i in range(n_prompts):
            f.write(json.dumps({"prompt": f"{i}+1=", "answer": f"LABEL-CANARY-{i}", "topic": "sum"}) + "\n")
    (tmp / "spy.py").write_text(SPY_SCORER)
    spec: dict[str, Any] = {
        "model": {"uri": str(model)},
        "prompts": {"uri": "prompts.jsonl", "heldOutFraction": 0.25, "labelFields": ["answer"]},
        "storage": {"uri": "runs"},
        "rounds": 2,
        "generation": {"candidates": 4, "maxNewTokens": 8, "batchSize": 16},
        "scoring": {
            "scorers": [
                {"type": "python", "path": "spy.py", "function": "spy"},
                {"type": "majority", "extract": r"(\d)", "weight": 0.5},
            ]
        },
        "training": {"method": "sft", "learningRate": 1e-3, "batchSize": 8, "sft": {"minScore": 0.0}},
        "evaluation": {
            "maxPrompts": 8,
            "minImprovement": -10.0,
            "alarms": False,  # forced promotions of a random tiny model; the gate's alarms have tests of their own
            "metrics": [{"name": "accuracy", "field": "answer", "extract": r"(\S+)"}],
        },
    }
    for key, value in spec_overrides.items():
        spec[key] = spec.get(key, {}) | value if isinstance(value, dict) else value
    job = {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "tiny"}, "spec": spec}
    path = tmp / "taojob.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def tao(*args: str, tmp: Path, **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", *args],
        capture_output=True,
        text=True,
        env=ENV | {"TAO_SPY_FILE": str(tmp / "spy.log")},
        check=False,
        timeout=600,
        **popen,
    )


def test_tao_run_completes_two_rounds_and_reports(tmp_path: Path, tiny_model: Path) -> None:
    job = write_job(tmp_path, tiny_model, export={"uri": "exports"})  # a path beside the manifest
    proc = tao("run", str(job), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "default" / "tiny" / "local"
    report = json.loads((run_dir / "report.json").read_text())
    # The base's held-out score and label metric, beside the gate's per-model figures (diversity, support, length).
    assert {"score", "accuracy"} <= set(report["base"])
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for row in report["rounds"]:
        assert row["prompts"] > 0 and row["candidates"] == 4 * row["prompts"] and "accuracy" in row
        assert isinstance(row["promoted"], bool)
    # minImprovement -10 promotes every round: round 2 starts from round 1's model.
    assert report["champion"] == {"round": 2, "uri": (run_dir / "round-002/train/model").as_uri()}
    assert json.loads((run_dir / "champion.json").read_text())["round"] == 2
    config2 = json.loads((run_dir / "round-002/configs/train.json").read_text())
    assert config2["modelUri"] == (run_dir / "round-001/train/model").as_uri()
    assert "held-out accuracy*" in proc.stdout and "champion: round 2 model" in proc.stdout
    # Each promoted champion is exported beside the manifest; latest.json names round 2's.
    exports = tmp_path / "exports"
    assert [row["exportUri"] for row in report["rounds"]] == [
        (exports / f"round-00{r}").as_uri() for r in (1, 2)
    ]
    assert json.loads((exports / "latest.json").read_text())["round"] == 2
    assert f"exported to {(exports / 'round-002').as_uri()}" in proc.stdout

    # The label field never reaches scoring, and no artifact but the held-out labels file holds a label.
    received = {tuple(json.loads(line)) for line in (tmp_path / "spy.log").read_text().splitlines()}
    # The record's own field reaches the reward function beside what TRL passes (completion_ids, trainer_state,
    # log hooks); the label field never does.
    assert received and all("topic" in kwargs and "answer" not in kwargs for kwargs in received)
    holders = sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if p.is_file() and b"LABEL-CANARY" in p.read_bytes()
    )
    assert holders == ["round-001/heldout/labels.jsonl", "round-002/heldout/labels.jsonl"]

    # Running it again finds everything done and reruns nothing.
    again = tao("run", str(job), tmp=tmp_path)
    assert again.returncode == 0
    stage_lines = [
        ln for ln in again.stdout.splitlines() if ln.strip().startswith(("prepare", "generate", "train"))
    ]
    assert stage_lines == []


def test_changed_spec_refuses_to_mix_runs_until_fresh(tmp_path: Path, tiny_model: Path) -> None:
    # A model that is missing makes generation fail fast, after prepare completed: the run has artifacts by then.
    missing = {"preflight": {"enabled": False}}
    job = write_job(tmp_path, tmp_path / "missing-model", rounds=1, **missing)
    first = tao("run", str(job), tmp=tmp_path)
    assert (
        first.returncode == 1 and "missing-model" in first.stderr and "run the same command" in first.stderr
    )
    job = write_job(
        tmp_path,
        tmp_path / "missing-model",
        rounds=1,
        generation={"candidates": 2, "maxNewTokens": 8},
        **missing,
    )
    changed = tao("run", str(job), tmp=tmp_path)
    assert changed.returncode == 1 and "spec.generation" in changed.stderr and "--fresh" in changed.stderr
    fresh = tao("run", str(job), "--fresh", tmp=tmp_path)
    assert "different spec" not in fresh.stderr and "missing-model" in fresh.stderr
    # Adding rounds to a run is allowed: rounds is not part of a run's identity.
    more = tao("run", str(job), "--rounds", "3", tmp=tmp_path)
    assert "different spec" not in more.stderr


def test_a_reached_budget_stops_tao_run_and_a_raised_one_goes_on(tmp_path: Path, tiny_model: Path) -> None:
    # A CPU-hour cap of 1.8 s: the first stages' own CPU time (imports, the model) passes it quickly.
    budget = {"budget": {"cpuHours": 0.0005}, "costs": {"currency": "EUR", "cpuHour": 3.6}, "rounds": 1}
    job = write_job(tmp_path, tiny_model, **budget)
    stopped = tao("run", str(job), tmp=tmp_path)
    assert stopped.returncode == 5, stopped.stderr[-2000:]
    assert "budget reached:" in stopped.stderr and "raise spec.budget.cpuHours to go on" in stopped.stderr
    run_dir = tmp_path / "runs" / "default" / "tiny" / "local"
    done = {p.stem for p in (run_dir / "round-001" / "results").glob("*.json")}
    assert done and "evaluate" not in done  # stopped before the round ended, what it did is kept

    job = write_job(tmp_path, tiny_model, **(budget | {"budget": {"cpuHours": 10}}))
    went_on = tao("run", str(job), tmp=tmp_path)  # a raised cap is an accepted edit: the same run goes on
    assert went_on.returncode == 0, went_on.stderr[-2000:]
    assert {p.stem for p in (run_dir / "round-001" / "results").glob("*.json")} >= done | {"evaluate"}
    report = json.loads((run_dir / "report.json").read_text())
    used = report["rounds"][0]["usage"]
    assert used["cpuSeconds"] > 0 and used["money"] == pytest.approx(used["cpuSeconds"] / 1000, abs=1e-6)
    assert report["usage"]["cpuSeconds"] == used["cpuSeconds"] and report["currency"] == "EUR"
    assert f"round 1: {used['cpuSeconds']} CPU-s, 0 GPU-s" in went_on.stdout


def test_invalid_manifest_exits_with_the_field_named(tmp_path: Path, tiny_model: Path) -> None:
    job = write_job(tmp_path, tiny_model, generation={"candidates": -3})
    proc = tao("run", str(job), tmp=tmp_path)
    assert proc.returncode == 2 and "spec.generation.candidates" in proc.stderr


def test_interrupted_run_resumes_without_redoing_complete_shards(tmp_path: Path, tiny_model: Path) -> None:
    job = write_job(
        tmp_path,
        tiny_model,
        n_prompts=400,
        rounds=1,
        generation={"candidates": 4, "maxNewTokens": 24, "batchSize": 25, "shards": 6},
        training={
            "method": "sft",
            "learningRate": 1e-3,
            "batchSize": 16,
            "sft": {"minScore": 0.0, "topK": 1},
        },
    )
    cand_dir = tmp_path / "runs/default/tiny/local/round-001/candidates"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tao_operator.cli", "run", str(job)],
        env=ENV | {"TAO_SPY_FILE": str(tmp_path / "spy.log")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while len(list(cand_dir.glob("shard-*.jsonl"))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "generation never produced two shards"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # as hard as a node failure: no cleanup runs
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in cand_dir.glob("shard-*.jsonl")}
    assert 2 <= len(done_before) < 6
    for name in done_before:  # a half-written shard never appears under its final name
        lines = (cand_dir / name).read_text().splitlines()
        assert lines and all(len(json.loads(ln)["candidates"]) == 4 for ln in lines)

    resumed = tao("run", str(job), tmp=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name, mtime in done_before.items():
        assert (cand_dir / name).stat().st_mtime_ns == mtime
    result = json.loads((tmp_path / "runs/default/tiny/local/round-001/results/generate.json").read_text())
    assert result["counts"]["shardsSkipped"] == len(done_before)
    assert result["counts"]["shardsDone"] == 6 - len(done_before)

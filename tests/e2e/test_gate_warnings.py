"""A gate that can never promote is said so before any compute is spent: `tao validate`, `tao run` and the
preflight stage (what a cluster shows in status.preflight) all warn when evaluation.maxPrompts is below the
fewest differing prompts with which the bound can show an improvement (5 at confidence 0.95); the preflight,
which reads the prompts, also when the held-out split itself is that small."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tao_operator.exits import Exit

pytestmark = pytest.mark.filterwarnings("ignore")

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WARNING = "evaluation.maxPrompts 4 is below 5"
# The random tiny model never writes this: the preflight finds no signal and stops the run before round 1.
NEVER = {"type": "regex", "pattern": "NEVER-WRITTEN", "mode": "search"}


def write_job(tmp: Path, model: Path, evaluation: dict[str, Any], held_out: float = 0.2) -> Path:
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+2="}) + "\n" for i in range(30)))
    body: dict[str, Any] = {
        "model": {"uri": str(model)},
        "prompts": {"uri": "prompts.jsonl", "heldOutFraction": held_out},
        "storage": {"uri": "runs"},
        "generation": {"candidates": 2, "maxNewTokens": 4, "batchSize": 16},
        "scoring": {"scorers": [NEVER]},
        "training": {"learningRate": 1e-3, "batchSize": 8},
        "evaluation": evaluation,
        "preflight": {"prompts": 4},
    }
    path = tmp / "taojob.yaml"
    doc = {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "few"}, "spec": body}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def tao(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
        timeout=600,
    )


def test_tao_validate_warns_and_stays_valid(tmp_path: Path, tiny_model: Path) -> None:
    job = str(write_job(tmp_path, tiny_model, {"maxPrompts": 4}))
    text = tao("validate", job)
    assert text.returncode == 0 and f"warning: {WARNING}" in text.stdout
    out = json.loads(tao("validate", job, "-o", "json").stdout)
    assert out["ok"] is True and len(out["warnings"]) == 1 and out["warnings"][0].startswith(WARNING)
    # Enough prompts, or a gate told to promote anything (minImprovement below 0): nothing to warn about.
    for evaluation in ({"maxPrompts": 5}, {"maxPrompts": 4, "minImprovement": -1.0}):
        enough = tao("validate", str(write_job(tmp_path, tiny_model, evaluation)), "-o", "json")
        assert json.loads(enough.stdout)["warnings"] == []


def test_tao_run_and_its_preflight_stage_warn(tmp_path: Path, tiny_model: Path) -> None:
    proc = tao("run", str(write_job(tmp_path, tiny_model, {"maxPrompts": 4})))
    assert proc.returncode == Exit.NO_SIGNAL, proc.stderr
    assert f"warning: {WARNING}" in proc.stderr.splitlines()[0]  # before anything runs
    # The preflight stage's own report and verdict carry it: what status.preflight shows on a cluster.
    (report_path,) = (tmp_path / "runs").rglob("preflight/report.json")
    report = json.loads(report_path.read_text())
    assert report["warnings"][0].startswith(WARNING) and f"; warning: {WARNING}" in report["verdict"]


def test_the_preflight_warns_when_the_held_out_split_is_too_small(tmp_path: Path, tiny_model: Path) -> None:
    job = str(write_job(tmp_path, tiny_model, {"maxPrompts": 200}, held_out=0.0))
    assert json.loads(tao("validate", job, "-o", "json").stdout)["warnings"] == []  # it cannot know
    proc = tao("preflight", job, "-o", "json")
    assert proc.returncode == Exit.NO_SIGNAL, proc.stderr
    (warning,) = json.loads(proc.stdout)["report"]["warnings"]
    assert warning.startswith("the held-out split has 0 prompts (evaluation.maxPrompts 200), below 5")

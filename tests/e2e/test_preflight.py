"""The scorer preflight, as a user meets it: `tao preflight FILE`, and the first stage of `tao run`."""

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

# Scores that differ between the random model's sampled candidates (all about as long): a checksum of the text.
CHECKSUM_SCORER = "def checksum(prompts, completions, **kwargs):\n    return [sum(map(ord, c)) % 97 / 96 for c in completions]\n"
NEVER = {"type": "regex", "pattern": "NEVER-WRITTEN", "mode": "search"}


def write_job(tmp: Path, model: Path, scorers: list[dict[str, Any]], **spec: Any) -> Path:
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+2="}) + "\n" for i in range(30)))
    (tmp / "checksum.py").write_text(CHECKSUM_SCORER)
    body: dict[str, Any] = {
        "model": {"uri": str(model)},
        "prompts": {"uri": "prompts.jsonl", "heldOutFraction": 0.2},
        "storage": {"uri": "runs"},
        "generation": {"candidates": 4, "maxNewTokens": 8, "batchSize": 16},
        "scoring": {"scorers": scorers},
        "training": {"learningRate": 1e-3, "batchSize": 8, "sft": {"minScore": 0.0, "topK": 1}},
        "evaluation": {"maxPrompts": 4, "minImprovement": -10.0, "alarms": False},
        "preflight": {"prompts": 6},
    } | spec
    path = tmp / "taojob.yaml"
    doc = {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "pre"}, "spec": body}
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


def test_tao_preflight_reports_a_signal_per_scorer(tmp_path: Path, tiny_model: Path) -> None:
    job = write_job(
        tmp_path, tiny_model, [{"type": "python", "path": "checksum.py", "function": "checksum"}, NEVER]
    )
    proc = tao("preflight", str(job))
    assert proc.returncode == 0, proc.stderr
    assert "6 prompts, 24 candidates" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].startswith("signal: ")
    rows = {
        line.split()[0]: line.split()[1:]
        for line in proc.stdout.splitlines()
        if line.startswith(("checksum", "regex"))
    }
    assert float(rows["checksum"][0]) > 0.5  # informative share of the checksum scorer
    assert rows["regex"][:3] == ["0.000", "0.000", "0.000"]  # never informative, never abstains, mean 0
    assert not (tmp_path / "runs").exists()  # a check, not a run: nothing written where the run will go


def test_tao_preflight_exits_3_when_the_scorers_cannot_tell_candidates_apart(
    tmp_path: Path, tiny_model: Path
) -> None:
    proc = tao("preflight", str(write_job(tmp_path, tiny_model, [NEVER])), "--prompts", "3")
    assert proc.returncode == Exit.NO_SIGNAL == 3, proc.stderr
    assert "3 prompts, 12 candidates" in proc.stdout and "no signal" in proc.stdout


def test_tao_run_stops_on_no_signal_and_continues_once_the_scorers_are_fixed(
    tmp_path: Path, tiny_model: Path
) -> None:
    job = write_job(tmp_path, tiny_model, [NEVER])
    proc = tao("run", str(job))
    assert proc.returncode == Exit.NO_SIGNAL  # a scorer without signal, not a failed stage: scripts can tell
    assert (
        "error: no signal" in proc.stderr
        and "stopOnNoSignal" in proc.stderr
        and "tao preflight" in proc.stderr
    )
    run = tmp_path / "runs/default/pre/local"
    report = json.loads((run / "round-001/preflight/report.json").read_text())
    assert report["signal"] is False and report["scorers"]["regex"]["meanScore"] == 0.0
    assert len((run / "round-001/preflight/samples.jsonl").read_text().splitlines()) == 6
    assert not (run / "round-001/prompts").exists()  # stopped before the round began

    # The user fixes the scorers and runs the same command: no --fresh needed, since nothing was built yet.
    write_job(tmp_path, tiny_model, [{"type": "python", "path": "checksum.py", "function": "checksum"}])
    proc = tao("run", str(job))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "round-001/results/preflight.json").read_text())
    assert result["ok"] is True and result["metrics"]["signal"] == 1.0
    assert json.loads((run / "report.json").read_text())["preflight"]["signal"] == 1.0
    assert "preflight" in proc.stdout and "signal:" in proc.stdout

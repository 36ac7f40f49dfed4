"""Smoke tests of the quality benchmarks (benchmarks/tao_vs_labels.py, benchmarks/compute_scaling.py).

Each script runs at `--smoke` size (one seed, a base pretrained for a few dozen steps, 16 round prompts,
12 held-out prompts, one TAO run through `tao run`) and must print its table and write its JSON. Both share
one work directory, so the smoke base is built once. They measure nothing: the full-size figures are in
benchmarks/results/. Plots are skipped (--no-plot): matplotlib is an optional extra.
"""

from __future__ import annotations

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]

REPO = Path(__file__).resolve().parents[2]
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-work")


def bench(script: str, work: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / script),
        "--smoke",
        "--no-plot",
        "--work",
        str(work),
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.parametrize("module", ["_common", "_bench"])
def test_shared_helpers_doctests(module: str) -> None:
    spec = importlib.util.spec_from_file_location(f"bench{module}", REPO / "benchmarks" / f"{module}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    failures, tried = doctest.testmod(module)
    assert tried > 0 and failures == 0


def test_tao_vs_labels_smoke(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "tao_vs_labels.json"
    proc = bench("tao_vs_labels.py", work, out)
    assert "summary over seeds 0" in proc.stdout
    for name in ("base", "sft-labels-8", "tao-majority"):
        assert f"\n{name} " in proc.stdout, name
    assert "column share (acc)" in proc.stdout and "compensation share (acc)" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "tao_vs_labels"
    assert set(data["summary"]) == {"base", "sft-labels-8", "tao-majority"}
    seed = data["seeds"][0]
    tao = seed["methods"]["tao-majority"]
    # Read from the product's report.json and eval samples: one round, accuracy per round from the base on.
    assert len(tao["perRound"]) == 2 and tao["perRound"][0] == seed["methods"]["base"]["accuracy"]
    assert tao["analysis"]["n"] == 12 and set(tao["analysis"]["routes"]) == {
        "column",
        "compensation",
        "other",
    }
    shares = sum(r["share"] for r in tao["analysis"]["routes"].values())
    assert shares == pytest.approx(1.0, abs=1e-3)
    d = tao["decomposition"]
    assert d["mix"] + d["skill"] == pytest.approx(d["change"], abs=2e-3)
    assert seed["methods"]["sft-labels-8"]["trainData"] == {
        "examples": 8,
        "columnShare": 1.0,
        "correctShare": 1.0,
    }


def test_compute_scaling_smoke(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "compute_scaling.json"
    proc = bench("compute_scaling.py", work, out)
    assert "compute scaling, seeds 0" in proc.stdout and "tokens/answer" in proc.stdout
    data = json.loads(out.read_text())
    assert data["benchmark"] == "compute_scaling"
    row = data["summary"]["2"]
    assert row["candidates"] == 2 and row["accuracy"]["mean"] is not None
    assert row["tokensPerAnswer"]["mean"] > 0 and row["candidateTokens"]["mean"] > 0
    run = data["seeds"][0]["byCandidates"]["2"]
    assert run["rounds"][0]["candidates"] == 2 * 16


def test_training_settings_smoke(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "training_settings.json"
    proc = bench("training_settings.py", work, out)
    assert "grpo-votes-kl004-lr5e-5" in proc.stdout and "dpo-sft1" in proc.stdout
    data = json.loads(out.read_text())
    rows = data["summary"]["variants"]
    assert set(rows) == {"grpo-votes-kl004-lr5e-5", "dpo-sft1"}
    for row in rows.values():
        d = row["decomposition"]
        assert d["mix"] + d["skill"] == pytest.approx(d["change"], abs=2e-3)
    # Every setting is spelled out in the results, so a later change of a default cannot change a row's meaning.
    grpo = data["taojobSpecChanges"]["grpo-votes-kl004-lr5e-5"]["training"]["grpo"]
    assert grpo == {"votes": "candidates", "beta": 0.04, "numGenerations": 8}


def test_spec_sweep_smoke_appends_one_line_per_trial(work: Path, tmp_path: Path) -> None:
    out = tmp_path / "spec_sweep.jsonl"
    out.write_text('{"earlier": "trial"}\n')  # a results file is appended to, never rewritten
    grpo = {"training": {"method": "grpo", "learningRate": 5e-5, "epochs": 1, "grpo": {"beta": 0.2}}}
    cmd = [sys.executable, str(REPO / "benchmarks" / "spec_sweep.py"), "0", "kl02", json.dumps(grpo)]
    cmd += ["--verifier", "--smoke", "--work", str(work), "--out", str(out)]
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {"earlier": "trial"} and len(lines) == 2
    row = lines[1]
    assert row["seed"] == 0 and row["name"] == "kl02" and row["verifier"] is True and row["change"] == grpo
    d = row["decomposition"]
    assert d["mix"] + d["skill"] == pytest.approx(d["change"], abs=2e-3)
    assert row["accuracy"] == pytest.approx(row["baseAccuracy"] + d["change"], abs=2e-3)
    assert row["perRound"] == [row["baseAccuracy"], row["accuracy"]]  # the base, then the one round's model

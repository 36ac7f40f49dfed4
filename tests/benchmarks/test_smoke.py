"""The benchmarks still run: operator_scale, data_plane and overhead at tiny size, each as its one command.

Each prints its table and writes its figures as JSON (here to a temp file, so that the measured figures in
benchmarks/results/ stay as measured). Sizes: 3 TAOJobs; 2,000 prompts; a tiny random model on 8 prompts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def run(script: str, tmp_path: Path, *extra: str, timeout: int = 180) -> tuple[str, dict]:
    out = tmp_path / f"{script}.json"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{script}.py"), "--smoke", "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_operator_scale(tmp_path: Path) -> None:
    stdout, figures = run("operator_scale", tmp_path)
    assert "p95 ms" in stdout and "requests per stage Job" in stdout
    (r,) = figures["runs"]
    assert r["taojobs"] == 3 and r["failedTaojobs"] == 0
    assert r["stageJobs"] == 15 and r["transitions"] == 12  # 1 round: 5 stage Jobs per TAOJob
    assert set(r["latencyMs"]) >= {"p50", "p95", "max"}
    assert r["operatorListsWithoutSelector"] == {}
    assert 0 < r["operatorRequestsPerStageJob"] < 30
    assert r["operatorRssMb"]["peak"] > 0 and r["operatorCpuSeconds"] > 0
    assert set(figures) >= {"machine", "targets", "runs", "verdicts", "requestsPerStageJobIndependentOfN"}


def test_data_plane(tmp_path: Path) -> None:
    stdout, figures = run("data_plane", tmp_path)
    assert "prompts/s" in stdout and "peak RSS" in stdout
    assert figures["prompts"] == 2000
    assert figures["counts"]["duplicates"] == figures["expected"]["duplicates"]
    assert figures["counts"]["rejects"] == figures["expected"]["rejects"]
    assert figures["counts"]["pool"] + figures["counts"]["heldOut"] == 2000  # held-out (< 500) kept whole
    assert figures["peakRssMb"] > figures["baselineRssMb"] > 0
    assert set(figures) >= {"promptsPerSecond", "stageWallSeconds", "rssTargetMet", "breakdown"}
    assert figures["breakdown"]["bytesPerPromptAfterLoad"] > 0


def test_overhead(tmp_path: Path, tiny_model: Path) -> None:
    stdout, figures = run("overhead", tmp_path, "--model", str(tiny_model))
    assert "ratio ours / theirs" in stdout and "where the CPU time goes" in stdout and "summary" in stdout
    (size,) = figures["sizes"]
    assert size["sameWork"], (
        size["trainingExamples"],
        size["trainLoss"],
    )  # identical candidates and training
    assert size["ratio"]["median"] > 0 and size["wallRatio"]["median"] > 0
    assert {"model load (x2 for ours)", "train compute", "generate compute"} <= set(
        size["breakdownCpuSeconds"]
    )
    assert {"oursCpuSeconds", "theirsCpuSeconds", "fixedOverheadCpuSeconds", "targetMet"} <= set(size)


def test_capture_latency() -> None:
    # Table only (no JSON): three storage scenarios, direct vs through the proxy, and the proxy's counters.
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "capture_latency.py"), "--requests", "40", "--concurrency", "1,2"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout
    assert "prx p50" in table and "+p50" in table
    for scenario in ("ok", "refusing", "hanging"):
        assert f"\n{scenario:>8}     1 " in table, scenario
    # With storage refusing, every request was still answered and the prompts are held, not lost.
    refusing = next(
        line for line in table.splitlines() if line.strip().startswith("refusing ") and "forwarded=" in line
    )
    fields = dict(part.split("=") for part in refusing.split()[1:])
    assert fields["forwarded"] == fields["captured"] and int(fields["flushed_records"]) == 0
    assert int(fields["buffered"]) + int(fields["dropped_full"]) == int(fields["captured"])

"""benchmarks/serve_throughput.py still runs: the tiny test model, 8 requests of 8 tokens per concurrency level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "serve_throughput.py"


def test_serve_throughput_smoke(tmp_path: Path) -> None:
    out = tmp_path / "serve_throughput.json"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "req/s" in proc.stdout and "tok/s" in proc.stdout
    figures = json.loads(out.read_text())
    assert figures["benchmark"] == "serve_throughput" and figures["machine"]["cores"]
    runs = figures["runs"]
    assert sorted((r["maxBatch"], r["concurrency"]) for r in runs) == [
        (1, 1),
        (1, 8),
        (1, 32),
        (32, 1),
        (32, 8),
        (32, 32),
    ]
    assert all(r["requestsPerSecond"] > 0 and r["tokensPerSecond"] > 0 for r in runs)
    assert all(r["meanBatchRows"] == 1 for r in runs if r["maxBatch"] == 1)
    assert (
        max(r["meanBatchRows"] for r in runs if r["maxBatch"] == 32) > 1
    )  # concurrent requests shared passes

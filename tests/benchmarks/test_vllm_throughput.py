"""benchmarks/vllm_throughput.py where it cannot run (no vllm or no CUDA device): it says why and measures nothing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "vllm_throughput.py"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_it_exits_2_saying_why(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", str(tmp_path), "--json", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "cannot run here: vllm is not installed" in proc.stderr and "Nothing was measured" in proc.stderr
    assert not out.exists()

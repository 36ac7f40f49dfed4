"""The extraction example's manifest validates, its prompts are deterministic, and its label-free grounding
scorer and label metrics behave (doctests), without the model."""

from __future__ import annotations

import doctest
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "extraction"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"extraction_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prompts_are_deterministic_chats_with_the_label_apart() -> None:
    prepare = load("prepare")
    recs = prepare.records(300, 0)
    assert recs == prepare.records(300, 0) and len({json.dumps(r) for r in recs}) == 300
    for rec in recs[:20]:
        (message,) = rec["prompt"]
        sentence = message["content"].split("Sentence:")[1]
        assert all(str(v) in sentence for v in rec["person"].values())


def test_grounding_and_metrics_doctests() -> None:
    for name in ("grounding", "metrics"):
        assert doctest.testmod(load(name)).failed == 0


def test_manifest_validates() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", "validate", str(EXAMPLE / "taojob.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

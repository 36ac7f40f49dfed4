"""What the examples' unit tests share: an example's script loaded as a module, and `tao validate` of its
manifest as a user runs it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(example: str, name: str) -> ModuleType:
    """examples/<example>/<name>.py as a module of its own (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{example}_{name}", EXAMPLES / example / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def validate(example: str) -> None:
    """`tao validate examples/<example>/taojob.yaml` exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", "validate", str(EXAMPLES / example / "taojob.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

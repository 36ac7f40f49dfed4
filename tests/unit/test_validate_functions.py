"""`tao validate` imports the job's own reward functions and refuses those a run could not call, naming the
scorer, before any GPU is spent (the preflight checks the same again with the prompt records' fields)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tao_operator import cli

GOOD = """
def reward(prompts, completions, **kwargs):
    return [1.0 for _ in completions]
"""
# TRL passes keyword arguments a reward function must accept (completion_ids, trainer_state, ...).
NO_KWARGS = """
def reward(prompts, completions):
    return [1.0 for _ in completions]
"""
BROKEN_IMPORT = """
import a_module_that_does_not_exist
def reward(prompts, completions, **kwargs):
    return []
"""


def manifest(tmp_path: Path, code: str) -> Path:
    (tmp_path / "rewards.py").write_text(code)
    spec = {
        "model": {"uri": "model"},
        "prompts": {"uri": "prompts.jsonl"},
        "storage": {"uri": "runs"},
        "scoring": {
            "scorers": [{"type": "python", "path": "rewards.py", "function": "reward", "name": "mine"}]
        },
    }
    path = tmp_path / "taojob.yaml"
    path.write_text(
        yaml.safe_dump(
            {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "v"}, "spec": spec}
        )
    )
    return path


def test_a_callable_reward_function_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", str(manifest(tmp_path, GOOD))]) == 0
    assert "valid TAOJob" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("code", "says"), [(NO_KWARGS, "kwargs"), (BROKEN_IMPORT, "a_module_that_does_not_exist")]
)
def test_a_function_a_run_could_not_call_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], code: str, says: str
) -> None:
    assert cli.main(["validate", str(manifest(tmp_path, code))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'mine'" in err and says in err

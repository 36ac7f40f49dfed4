"""`evaluation.reuseAnswers`: a model's held-out answers are generated once per prompts and settings. Round 2's
champion (round 1's promoted challenger) is read back, not generated again, with the same report as without
reuse; a changed setting, prompt set or model file generates afresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from stage import test_stages as stage_tests
from stage.test_stages import config

from tao_trainer import storage
from tao_trainer.cli import _runner
from tao_trainer.layout import RunLayout

pytestmark = pytest.mark.filterwarnings("ignore")

workspace = stage_tests.workspace  # the fixture, shared with the other stage tests

STAGES = ("prepare", "generate", "score", "train", "evaluate")


def run_round(ws: dict[str, Path], round_: int, model_uri: str | None, **overrides: Any) -> dict[str, Any]:
    return {s: _runner(s)(config(ws, s, round_, model_uri, **overrides)) for s in STAGES}


def evaluate(ws: dict[str, Path], round_: int, model_uri: str | None, **overrides: Any) -> Any:
    return _runner("evaluate")(config(ws, "evaluate", round_, model_uri, **overrides))


def report_without_paths(result: Any) -> dict[str, Any]:
    report = storage.read_json(result.outputs["report"])
    return {"metrics": report["metrics"], "promoted": report["promoted"], "verdict": report["verdict"]}


def test_the_promoted_challenger_is_not_generated_again_as_next_rounds_champion(
    workspace: dict[str, Path],
) -> None:
    # The stage tests' scorers include a majority vote: its reference samples are reused with the answers.
    first = run_round(workspace, 1, None)
    assert first["evaluate"].promoted, first["evaluate"].message  # the stage tests force promotion
    assert first["evaluate"].counts["reusedAnswers"] == 0  # nothing was evaluated before
    lay = RunLayout(config(workspace, "evaluate").run_uri)
    champion = lay.model(1)

    second = run_round(workspace, 2, champion)["evaluate"]
    assert second.counts["reusedAnswers"] == 1  # the champion's answers; the new challenger's are generated
    reused = report_without_paths(second)
    samples = {row["id"]: row for row in storage.read_jsonl(lay.eval_samples(2))}
    before = {row["id"]: row for row in storage.read_jsonl(lay.eval_samples(1))}
    assert {i: row["champion"]["answer"] for i, row in samples.items()} == {
        i: before[i]["challenger"]["answer"] for i in samples
    }

    # The same evaluate without reuse generates both models again and reaches the very same report.
    fresh = evaluate(workspace, 2, champion, evaluation={"reuseAnswers": False})
    assert fresh.counts["reusedAnswers"] == 0
    assert report_without_paths(fresh) == reused


def test_a_change_to_settings_or_model_files_generates_afresh(workspace: dict[str, Path]) -> None:
    first = run_round(workspace, 1, None)["evaluate"]
    assert first.counts["reusedAnswers"] == 0
    again = evaluate(workspace, 1, None)  # a retried evaluate: both models read back
    assert again.counts["reusedAnswers"] == 2
    assert report_without_paths(again) == report_without_paths(first)

    shorter = evaluate(workspace, 1, None, generation={"maxNewTokens": 3})
    assert shorter.counts["reusedAnswers"] == 0  # sampling settings decide the answers

    # The challenger rewritten at the same URI (a retrained round): its files changed, so it answers afresh.
    lay = RunLayout(config(workspace, "evaluate").run_uri)
    model_dir = Path(lay.model(1).removeprefix("file://"))
    config_file = model_dir / "config.json"
    config_file.write_text(config_file.read_text() + "\n")
    rewritten = evaluate(workspace, 1, None)
    assert rewritten.counts["reusedAnswers"] == 1  # the base model's answers only

    # A different held-out set (a prompt dropped) is not the same question.
    held = storage.read_jsonl(lay.heldout(1))
    storage.write_jsonl(lay.heldout(1), held[1:])
    assert evaluate(workspace, 1, None).counts["reusedAnswers"] == 0

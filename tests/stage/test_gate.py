"""The promotion gate against challengers that are really worse, judged by the real evaluate stage.

The champion is a tiny model fine-tuned on a task with a right answer per prompt (tests/gate_models.py); each
challenger is that champion fine-tuned further with TRL toward something worse, or its own weights. The gate is
the product's default (minImprovement 0.01, confidence 0.95, alarms on) with the arithmetic example's label-free
scorer, a majority vote judged against 8 samples of each model; a label metric is reported beside it, to show
that the challenger is worse, and never reaches the verdict.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from gate_models import fine_tune, write_prompts

from tao_trainer import storage
from tao_trainer.cli import _runner
from tao_trainer.contract import StageConfig
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec

pytestmark = pytest.mark.filterwarnings("ignore")


def judge(
    champion: Path,
    challenger: Path,
    tmp: Path,
    tasks: bool = False,
    evaluation: dict[str, Any] | None = None,
    promoted: bool = False,
) -> dict[str, Any]:
    """Round 1's prepare and evaluate stages with `challenger` in place of the round's trained model;
    returns eval/report.json. `tasks`: the prompts carry a `task` field; `evaluation`: settings on top."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = LoopSpec.model_validate(
        {
            "model": {"uri": champion.as_uri()},
            "prompts": {
                "uri": write_prompts(tmp / "prompts.jsonl", tasks).as_uri(),
                "heldOutFraction": 0.5,
                "labelFields": ["answer"],
            },
            "storage": {"uri": (tmp / "runs").as_uri()},
            "generation": {"candidates": 8, "maxNewTokens": 3, "batchSize": 50},
            "scoring": {"scorers": [{"type": "majority", "extract": r"(\d)"}]},
            "evaluation": {
                "maxPrompts": 50,
                "metrics": [{"name": "accuracy", "field": "answer", "extract": r"(\d)"}],
            }
            | (evaluation or {}),
        }
    )
    layout = RunLayout((tmp / "runs" / "job").as_uri())
    common = {"round": 1, "run_uri": layout.root, "model_uri": spec.model.uri, "spec": spec}
    _runner("prepare")(StageConfig(stage="prepare", **common))
    shutil.copytree(challenger, Path(layout.model(1).removeprefix("file://")))
    result = _runner("evaluate")(StageConfig(stage="evaluate", **common))
    report: dict[str, Any] = storage.read_json(layout.eval_report(1))
    assert result.ok and result.promoted is promoted and result.outputs["reason"] == report["gate"]["reason"]
    return report


def accuracy(report: dict[str, Any], side: str) -> float:
    return float(report["metrics"][f"{side}.accuracy"])


def test_a_no_op_challenger_is_not_promoted(gate_champion: Path, tmp_path: Path) -> None:
    report = judge(gate_champion, fine_tune(gate_champion, tmp_path / "noop", "noop", epochs=0), tmp_path)
    gate = report["gate"]
    # The same weights give the same greedy answers: nothing differs, and no difference is no improvement.
    assert gate["reason"] == "not-better"
    assert gate["differing"] == 0 and gate["estimate"] == 0.0 and gate["interval"] == [0.0, 0.0]
    assert gate["alarms"] == []


def test_a_challenger_trained_on_wrong_answers_is_rejected_by_the_bound(
    gate_champion: Path, tmp_path: Path
) -> None:
    wrong = fine_tune(gate_champion, tmp_path / "wrong", "wrong", epochs=3)
    report = judge(gate_champion, wrong, tmp_path)
    gate = report["gate"]
    assert accuracy(report, "champion") - accuracy(report, "challenger") > 0.5  # genuinely worse
    # Its answers disagree with what the champion's samples say: the label-free score falls, with confidence.
    assert gate["reason"] == "not-better"
    assert gate["estimate"] < 0 and gate["interval"][1] < 0
    assert gate["losses"] > gate["wins"]
    assert any(a.startswith("support-loss") for a in gate["alarms"])  # and its answers left the champion's


def test_a_collapsed_challenger_that_supplies_its_own_majority_is_rejected_by_the_alarms(
    gate_champion: Path, tmp_path: Path
) -> None:
    collapsed = fine_tune(gate_champion, tmp_path / "collapsed", "collapsed", epochs=3)
    report = judge(gate_champion, collapsed, tmp_path)
    gate = report["gate"]
    assert accuracy(report, "champion") - accuracy(report, "challenger") > 0.5  # genuinely worse
    # Its 8 identical samples are half of the pooled 16: its one answer wins the vote wherever the champion's
    # samples are split, so the score rises with confidence. The bare mean (the old rule) and even the bound
    # would promote it; the alarms do not.
    assert gate["estimate"] >= gate["minImprovement"] and gate["interval"][0] >= gate["minImprovement"]
    assert gate["reason"] == "alarm:unsupported-wins"
    assert gate["supportedInterval"][0] < gate["minImprovement"]
    assert [a.split(":")[0] for a in gate["alarms"]] == [
        "unsupported-wins",
        "support-loss",
        "diversity-collapse",
    ]
    assert gate["health"]["challenger"]["diversity"] == 0.0 < gate["health"]["champion"]["diversity"]
    assert gate["health"]["challenger"]["support"] < 0.5 < gate["health"]["champion"]["support"]
    assert "alarms: unsupported-wins" in report["verdict"]


def test_a_regression_on_one_task_vetoes_a_promotion_the_other_would_earn(
    gate_champion: Path, tmp_path: Path
) -> None:
    """Multi-task TAO: prompts of two tasks in one held-out set. The challenger keeps task "low" and forgets
    task "high" (it answers no digit there). With the overall bar and the alarms set aside, the per-task guard
    alone says no; listing "high" in allowTaskRegression lets it through."""
    # A gentle learning rate: at 1e-2 task low's accuracy after training varied with the CPU's thread count
    # (.82-1.0); at 3e-3 it was 1.0 at 1-4 threads and 10-30 epochs.
    mixed = fine_tune(gate_champion, tmp_path / "mixed", "forgot-high", epochs=20, learning_rate=3e-3)
    lenient = {"minImprovement": -10.0, "alarms": False}
    report = judge(gate_champion, mixed, tmp_path / "strict", tasks=True, evaluation=lenient)
    metrics, gate = report["metrics"], report["gate"]
    # Genuinely: the high task's label accuracy fell, the low task's did not.
    assert metrics["task.high.champion.accuracy"] - metrics["task.high.challenger.accuracy"] > 0.5
    assert metrics["task.low.challenger.accuracy"] >= metrics["task.low.champion.accuracy"] - 0.1
    assert metrics["task.low.prompts"] + metrics["task.high.prompts"] == report["heldOutPrompts"]
    assert gate["reason"] == "guard:task:high"
    verdicts = {g["name"]: g["passed"] for g in gate["guards"]}
    assert verdicts == {"task:low": True, "task:high": False}

    allowed = lenient | {"allowTaskRegression": ["high"]}
    report = judge(gate_champion, mixed, tmp_path / "allowed", tasks=True, evaluation=allowed, promoted=True)
    assert report["gate"]["reason"] == "promoted"
    assert [g["name"] for g in report["gate"]["guards"]] == ["task:low"]
    assert report["metrics"]["task.high.challenger.score"] is not None  # still reported

"""The plan: a pure function from observed stage results to the next action, and the run report."""

from __future__ import annotations

from tao_operator.plan import Failed, Finished, RunStage, build_report, champion, next_action
from tao_trainer.contract import STAGES, LoopSpec, RunLayout, StageResult

LAYOUT = RunLayout("s3://runs/default/demo/uid-1")


def spec(rounds: int = 2, method: str = "sft", preflight: bool = False) -> LoopSpec:
    return LoopSpec.model_validate(
        {
            "model": {"uri": "s3://models/base"},
            "prompts": {"uri": "s3://data/p.jsonl", "labelFields": ["answer"]},
            "storage": {"uri": "s3://runs"},
            "rounds": rounds,
            "scoring": {"scorers": [{"type": "majority", "extract": r"(\d+)$"}]},
            "training": {"method": method},
            "evaluation": {"metrics": [{"name": "accuracy", "field": "answer"}]},
            "preflight": {"enabled": preflight},
        }
    )


def done(round_: int, *stages: str, promoted: bool | None = None) -> dict:
    out = {}
    for s in stages:
        out[(round_, s)] = StageResult(stage=s, round=round_, promoted=promoted if s == "evaluate" else None)
    return out


def test_first_action_is_round_one_prepare_on_the_base_model() -> None:
    assert next_action(spec(), LAYOUT, {}) == RunStage(1, "prepare", "s3://models/base")


def test_stages_run_in_order_within_a_round() -> None:
    s = spec()
    results: dict = {}
    seen = []
    while isinstance(action := next_action(s, LAYOUT, results), RunStage):
        seen.append((action.round, action.stage))
        results |= done(action.round, action.stage, promoted=False)
    assert seen == [(r, st) for r in (1, 2) for st in STAGES]
    assert action == Finished(0, "s3://models/base")


def test_a_promoted_round_becomes_the_next_rounds_starting_model() -> None:
    results = done(1, *STAGES, promoted=True)
    assert next_action(spec(), LAYOUT, results) == RunStage(2, "prepare", LAYOUT.model(1))


def test_a_rejected_round_leaves_the_previous_champion() -> None:
    results = done(1, *STAGES, promoted=True) | done(2, *STAGES, promoted=False)
    assert champion(spec(), LAYOUT, results, 3) == (1, LAYOUT.model(1))
    assert next_action(spec(), LAYOUT, results) == Finished(1, LAYOUT.model(1))


def test_a_failed_stage_is_terminal_and_named() -> None:
    results = done(1, "prepare") | {(1, "generate"): StageResult(stage="generate", round=1, ok=False, message="OOM")}
    assert next_action(spec(), LAYOUT, results) == Failed(1, "generate", "OOM")


def test_the_preflight_runs_once_before_round_one_on_the_base_model() -> None:
    s = spec(preflight=True)
    results: dict = {}
    seen = []
    while isinstance(action := next_action(s, LAYOUT, results), RunStage):
        seen.append((action.round, action.stage))
        if action.stage == "preflight":
            assert action.model_uri == "s3://models/base"
        results |= done(action.round, action.stage, promoted=False)
    assert seen == [(1, "preflight")] + [(r, st) for r in (1, 2) for st in STAGES]


def test_a_preflight_that_finds_no_signal_stops_the_run_before_any_training() -> None:
    stopped = {(1, "preflight"): StageResult(stage="preflight", round=1, ok=False, message="no signal: 0/16")}
    assert next_action(spec(preflight=True), LAYOUT, stopped) == Failed(1, "preflight", "no signal: 0/16")


def test_preflight_is_on_by_default() -> None:
    assert LoopSpec.model_validate(spec().model_dump(by_alias=True, exclude={"preflight"})).preflight.enabled


def test_grpo_rounds_skip_offline_generation_and_scoring() -> None:
    s = spec(rounds=1, method="grpo")
    results: dict = {}
    seen = []
    while isinstance(action := next_action(s, LAYOUT, results), RunStage):
        seen.append(action.stage)
        results |= done(1, action.stage, promoted=True)
    assert seen == ["prepare", "train", "evaluate"]


def test_report_has_base_and_per_round_values() -> None:
    results = done(1, *STAGES) | done(2, *STAGES)
    results[(1, "prepare")] = StageResult(stage="prepare", round=1, counts={"prompts": 100, "heldOut": 20})
    results[(1, "evaluate")] = StageResult(
        stage="evaluate", round=1, promoted=True, message="promoted",
        metrics={"champion.score": 0.4, "challenger.score": 0.8, "champion.accuracy": 0.45, "challenger.accuracy": 0.85},
    )
    results[(2, "evaluate")] = StageResult(
        stage="evaluate", round=2, promoted=False,
        metrics={"champion.score": 0.8, "challenger.score": 0.79, "champion.accuracy": 0.86, "challenger.accuracy": 0.84},
    )
    report = build_report("demo", spec(), LAYOUT, results)
    assert report["base"] == {"score": 0.4, "accuracy": 0.45}
    assert [r["accuracy"] for r in report["rounds"]] == [0.85, 0.84]
    assert [r["promoted"] for r in report["rounds"]] == [True, False]
    assert report["rounds"][0]["prompts"] == 100
    assert report["champion"] == {"round": 1, "uri": LAYOUT.model(1)}
    assert report["labelMetrics"] == ["accuracy"]

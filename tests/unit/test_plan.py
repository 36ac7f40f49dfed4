"""The plan: a pure function from observed stage results to the next action, and the run report."""

from __future__ import annotations

import pytest

from tao_operator.plan import Failed, Finished, RunStage, build_report, champion, next_action
from tao_trainer.contract import StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.spec import STAGES, CostsSpec, LoopSpec

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
    results = done(1, "prepare") | {
        (1, "generate"): StageResult(stage="generate", round=1, ok=False, message="OOM")
    }
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


@pytest.mark.parametrize(
    ("votes", "scorers", "stages"),
    [
        # A majority vote over the round's candidates: generate samples them, GRPO scores online against them.
        (
            "candidates",
            [{"type": "majority", "extract": "(.*)"}],
            ["prepare", "generate", "train", "evaluate"],
        ),
        ("group", [{"type": "majority", "extract": "(.*)"}], ["prepare", "train", "evaluate"]),
        # No group scorer: nothing to vote on, GRPO samples and scores inside training alone.
        ("candidates", [{"type": "json"}], ["prepare", "train", "evaluate"]),
    ],
)
def test_grpo_rounds_skip_offline_scoring_and_generate_only_for_votes(
    votes: str, scorers: list[dict], stages: list[str]
) -> None:
    s = spec(rounds=1, method="grpo")
    s = LoopSpec.model_validate(
        s.model_dump(by_alias=True)
        | {"scoring": {"scorers": scorers}}
        | {"training": s.training.model_dump(by_alias=True) | {"grpo": {"votes": votes}}}
    )
    results: dict = {}
    seen = []
    while isinstance(action := next_action(s, LAYOUT, results), RunStage):
        seen.append(action.stage)
        results |= done(1, action.stage, promoted=True)
    assert seen == stages


def test_a_stage_the_round_went_past_is_not_run_again() -> None:
    # A GRPO run finished before its vote moved to the round's candidates: its rounds have no generate stage.
    # Under the new default (generate before train) nothing is run again; the next round gets the new stage.
    s = spec(rounds=2, method="grpo")
    assert s.stages(1) == ("prepare", "generate", "train", "evaluate")
    finished = done(1, "prepare", "train", "evaluate", promoted=True) | done(
        2, "prepare", "train", "evaluate"
    )
    assert isinstance(next_action(s, LAYOUT, finished), Finished)
    under_way = done(1, "prepare", "train", "evaluate", promoted=True) | done(2, "prepare")
    assert next_action(s, LAYOUT, under_way) == RunStage(2, "generate", LAYOUT.model(1))
    # A round whose train has not run yet still gets the stage before it.
    assert next_action(s, LAYOUT, done(1, "prepare")) == RunStage(1, "generate", s.model.uri)


def test_report_has_base_and_per_round_values() -> None:
    results = done(1, *STAGES) | done(2, *STAGES)
    results[(1, "prepare")] = StageResult(stage="prepare", round=1, counts={"prompts": 100, "heldOut": 20})
    results[(1, "evaluate")] = StageResult(
        stage="evaluate",
        round=1,
        promoted=True,
        message="promoted",
        metrics={
            "champion.score": 0.4,
            "challenger.score": 0.8,
            "champion.accuracy": 0.45,
            "challenger.accuracy": 0.85,
        },
    )
    results[(2, "evaluate")] = StageResult(
        stage="evaluate",
        round=2,
        promoted=False,
        metrics={
            "champion.score": 0.8,
            "challenger.score": 0.79,
            "champion.accuracy": 0.86,
            "challenger.accuracy": 0.84,
        },
    )
    report = build_report("demo", spec(), LAYOUT, results)
    assert report["base"] == {"score": 0.4, "accuracy": 0.45}
    assert [r["accuracy"] for r in report["rounds"]] == [0.85, 0.84]
    assert [r["promoted"] for r in report["rounds"]] == [True, False]
    assert report["rounds"][0]["prompts"] == 100
    assert report["champion"] == {"round": 1, "uri": LAYOUT.model(1)}
    assert report["labelMetrics"] == ["accuracy"]


# --------------------------------------------------------------------------------------------- continuous mode


def continuous(max_rounds: int | None = None) -> LoopSpec:
    body = spec().model_dump(by_alias=True, exclude={"rounds"})
    body["continuous"] = {"interval": "1m", "minNewPrompts": 10, "maxRounds": max_rounds}
    return LoopSpec.model_validate(body)


def test_continuous_rounds_after_the_first_wait_for_new_prompts() -> None:
    s = continuous(max_rounds=3)
    results: dict = {}
    seen = []
    while isinstance(action := next_action(s, LAYOUT, results), RunStage):
        seen.append((action.round, action.stage))
        results |= done(action.round, action.stage, promoted=action.round == 2)
    assert seen == [(1, st) for st in STAGES] + [(r, st) for r in (2, 3) for st in ("watch", *STAGES)]
    assert action == Finished(
        2, LAYOUT.model(2)
    )  # round 3's challenger was not better: round 2 stays champion


def test_continuous_without_a_limit_always_has_a_next_round() -> None:
    results = {
        key: res for r in range(1, 51) for key, res in done(r, "watch", *STAGES, promoted=r == 7).items()
    }
    assert next_action(continuous(), LAYOUT, results) == RunStage(51, "watch", LAYOUT.model(7))
    report = build_report("demo", continuous(), LAYOUT, results)
    assert len(report["rounds"]) == 50 and report["champion"] == {"round": 7, "uri": LAYOUT.model(7)}


def test_rounds_and_continuous_together_are_rejected() -> None:
    body = spec(rounds=2).model_dump(by_alias=True) | {"continuous": {"minNewPrompts": 5}}
    with pytest.raises(ValueError, match="either rounds .* or continuous"):
        LoopSpec.model_validate(body)


def test_a_pruned_status_history_still_plans_from_the_right_champion() -> None:
    from tao_operator.api import RoundStatus, StageStatus, TAOJobStatus
    from tao_operator.status import prune_history, results_from_status

    s = continuous()
    status = TAOJobStatus(champion={"round": 2, "uri": LAYOUT.model(2)})
    for r in range(1, 6):
        stages = [StageStatus(stage=st, state="Succeeded") for st in s.stages(r)]
        status.rounds.append(RoundStatus(round=r, promoted=r == 2, stages=stages))
    assert prune_history(status, keep=2) == 3
    assert [r.round for r in status.rounds] == [4, 5] and status.pruned_rounds == 3
    assert next_action(s, LAYOUT, results_from_status(status)) == RunStage(6, "watch", LAYOUT.model(2))
    # A running round is never pruned, nor anything after it.
    status.rounds.append(RoundStatus(round=6, stages=[StageStatus(stage="watch", state="Running")]))
    assert prune_history(status, keep=1) == 2 and [r.round for r in status.rounds] == [6]


def test_the_preflight_warns_about_a_scorer_that_never_answers_even_when_others_give_a_signal() -> None:
    from tao_trainer.stages.preflight import analyse

    report = analyse([2, 2], [1.0, 0.0, 1.0, 1.0], {"sql": [1.0, 0.0, 1.0, 1.0], "judge": [None] * 4}, 0.1)
    assert report["signal"] is True and report["scorers"]["judge"]["abstainShare"] == 1.0
    assert "warning: judge gave no value for any candidate" in report["verdict"]
    quiet = analyse([2], [1.0, 0.0], {"sql": [1.0, 0.0]}, 0.1)
    assert "warning" not in quiet["verdict"]


def test_the_report_prices_use_and_cost_per_success_and_the_table_shows_them() -> None:
    from tao_operator.report import format_table

    priced = spec(rounds=1).model_copy(
        update={
            "costs": CostsSpec.model_validate(
                {
                    "currency": "EUR",
                    "endpoints": {
                        "teacher": {"inputPer1k": 1.0, "outputPer1k": 2.0},
                        "model": {"inputPer1k": 0.1, "outputPer1k": 0.2},
                    },
                }
            )
        }
    )
    results = done(1, *STAGES, promoted=True)
    results[(1, "generate")].counts = {"teacher.promptTokens": 1000, "teacher.completionTokens": 3000}
    results[(1, "score")].counts = {"cpuSeconds": 7}
    per_success = {"successes": 10.0, "inputTokensPerSuccess": 100.0, "outputTokensPerSuccess": 50.0}
    results[(1, "evaluate")].metrics = {
        f"{side}.{k}": v for side in ("champion", "challenger", "teacher") for k, v in per_success.items()
    } | {"teacher.accuracy": 0.9}
    report = build_report("job", priced, LAYOUT, results)
    row = report["rounds"][0]
    assert row["usage"] == {
        "tokens": {"teacher": {"input": 1000, "output": 3000}},
        "cpuSeconds": 7,
        "gpuSeconds": 0,
        "money": 7.0,
    }
    assert row["teacher"]["moneyPerSuccess"] == pytest.approx(0.2)  # 100/1000 * 1 + 50/1000 * 2
    assert row["challenger"]["moneyPerSuccess"] == pytest.approx(0.02)
    assert report["usage"]["money"] == 7.0 and report["currency"] == "EUR"
    table = format_table(report)
    assert "round 1: teacher 1000/3000 tokens, 7 CPU-s, 0 GPU-s, 7 EUR" in table
    assert "challenger 150 tokens, 0.02 EUR (10 successes), teacher 150 tokens, 0.2 EUR" in table
    assert "round 1: score -, accuracy* 0.900" in table

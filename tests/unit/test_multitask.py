"""Multi-task TAO: scorers restricted to tasks (`scoring.scorers[].tasks`, by the prompt records' `task` field),
and the per-task gate (stages/evaluate_tasks.py with promotion.decide). The real evaluate stage with two tasks
is in tests/stage/test_gate.py."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tao_trainer.promotion import Guard, decide
from tao_trainer.scorers import as_reward_funcs, build_scorers, score_against_all, score_all
from tao_trainer.spec import LoopSpec
from tao_trainer.stages.evaluate_tasks import per_task
from tao_trainer.stages.score import flatten

# Two tasks in one batch: arithmetic answers checked by a vote, JSON answers by a parser that must pass.
SCORERS = [
    {"type": "majority", "extract": r"=(\d+)", "tasks": ["math"]},
    {"type": "json", "require": True, "weight": 0, "tasks": ["extract"]},
    {"type": "regex", "name": "short", "pattern": r"^.{1,12}$", "weight": 0.5},
]


def batch() -> tuple[list[Any], list[str], dict[str, list[Any]]]:
    records = [
        {"prompt": "1+1", "fields": {"task": "math"}, "candidates": ["=2", "=2", "=3"]},
        {"prompt": "name?", "fields": {"task": "extract"}, "candidates": ['{"a": 1}', "not json"]},
        {"prompt": "hello", "candidates": ["hi"]},  # no task: only the unrestricted scorers judge it
    ]
    return flatten(records)


def test_a_scorer_judges_only_its_tasks_and_a_gate_applies_only_to_its_own() -> None:
    prompts, completions, kwargs = batch()
    out = score_all(build_scorers(SCORERS), prompts, completions, **kwargs)
    assert out.per_scorer["majority"] == [1.0, 1.0, 0.0, None, None, None]
    assert out.per_scorer["json"] == [None, None, None, 1.0, 0.0, None]
    # math: the vote (weight 1) and "short" (0.5); the JSON gate does not apply there, so it zeroes nothing.
    # extract: the gate decides, then "short" scaled to the weights that apply (0 + 0.5).
    # No task: "short" alone.
    assert out.total == [1.5, 1.5, 0.5, 0.5, 0.0, 0.5]


def test_without_restrictions_a_task_field_changes_nothing() -> None:
    prompts, completions, kwargs = batch()
    plain = [{k: v for k, v in s.items() if k != "tasks"} for s in SCORERS[:1] + SCORERS[2:]]
    with_field = score_all(build_scorers(plain), prompts, completions, **kwargs)
    without = score_all(build_scorers(plain), prompts, completions)
    assert with_field.total == without.total


def test_evaluation_scoring_routes_by_task_too() -> None:
    prompts, completions, kwargs = batch()
    refs = [["=2", "=2"]] * 3 + [[]] * 3
    out = score_against_all(build_scorers(SCORERS), prompts, completions, refs, **kwargs)
    assert out.per_scorer["majority"][:3] == [1.0, 1.0, 0.0]
    assert out.per_scorer["majority"][3:] == [None, None, None]


def test_grpo_rewards_are_combined_and_trls_extra_arguments_pass_through() -> None:
    funcs, weights = as_reward_funcs(build_scorers(SCORERS[:1] + SCORERS[2:]))
    assert [f.__name__ for f in funcs] == ["tao_total"] and weights == [1.0]
    prompts, completions, kwargs = batch()
    logged: dict[str, float] = {}
    totals = funcs[0](
        prompts, completions, log_metric=lambda k, v: logged.__setitem__(k, v), trainer_state=None, **kwargs
    )
    assert totals[:3] == [1.5, 1.5, 0.5] and totals[3:] == [0.5, 0.5, 0.5]
    assert logged["rewards/majority/mean"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("tasks", [[], [""], ["has space"], ["x"] * 65])
def test_task_names_are_checked(tasks: list[str]) -> None:
    spec = {
        "model": {"uri": "file:///m"},
        "prompts": {"uri": "file:///p.jsonl"},
        "storage": {"uri": "file:///s"},
        "scoring": {"scorers": [{"type": "regex", "pattern": "x", "tasks": tasks}]},
    }
    with pytest.raises(ValidationError, match="tasks"):
        LoopSpec.model_validate(spec)


def test_a_regression_on_one_task_vetoes_a_promotion_the_average_would_earn() -> None:
    # 40 prompts of task a, 20 of task b: a goes 0 -> 1 on 30 prompts, b falls 1 -> 0 on 12.
    held = [{"fields": {"task": "a"}}] * 40 + [{"fields": {"task": "b"}}] * 20
    champion = [0.0] * 40 + [1.0] * 20
    challenger = [1.0] * 30 + [0.0] * 10 + [0.0] * 12 + [1.0] * 8
    metrics, guards = per_task(held, {"champion": champion, "challenger": challenger}, {}, 0.05)
    assert metrics["task.a.challenger.score"] == 0.75 and metrics["task.b.challenger.score"] == 0.4
    overall = decide(champion, challenger, 0.01)
    assert overall.promoted  # on average it is better: +18 of 60
    verdict = decide(champion, challenger, 0.01, guards=guards)
    assert (verdict.promoted, verdict.reason) == (False, "guard:task:b")
    assert "task:b" in verdict.message

    _, allowed = per_task(held, {"champion": champion, "challenger": challenger}, {}, 0.05, ["b"])
    assert decide(champion, challenger, 0.01, guards=allowed).promoted
    # A wide tolerance lets a small regression through, not this one.
    _, tolerant = per_task(held, {"champion": champion, "challenger": challenger}, {}, 0.9)
    assert decide(champion, challenger, 0.01, guards=tolerant).promoted


def test_prompts_without_tasks_add_no_metrics_or_guards() -> None:
    metrics, guards = per_task(
        [{}, {"fields": {"other": 1}}], {"champion": [1, 0], "challenger": [0, 1]}, {}, 0.05
    )
    assert metrics == {} and guards == {}


def test_a_labeled_canary_is_cut_by_task_so_one_tasks_loss_does_not_hide_behind_anothers_gain() -> None:
    # The vote's scores rise on both tasks (self-consistency), while the canary's labels say task b got worse:
    # over all prompts the canary's change is +0.2 and passes; on task b alone it is -0.4 and vetoes.
    held = [{"fields": {"task": "a"}}] * 30 + [{"fields": {"task": "b"}}] * 10
    scores = {"champion": [0.5] * 40, "challenger": [1.0] * 40}
    canary = Guard([0.0] * 30 + [1.0] * 10, [0.4] * 30 + [0.6] * 10, tolerance=0.05, uses_labels=True)
    assert decide(scores["champion"], scores["challenger"], 0.01, guards={"accuracy": canary}).promoted
    _, guards = per_task(held, scores, {}, 0.05, canaries={"accuracy": canary})
    assert sorted(guards) == ["task:a", "task:a:accuracy", "task:b", "task:b:accuracy"]
    verdict = decide(scores["champion"], scores["challenger"], 0.01, guards={"accuracy": canary, **guards})
    assert (verdict.promoted, verdict.reason) == (False, "guard:task:b:accuracy")
    assert guards["task:b:accuracy"].uses_labels and guards["task:b:accuracy"].tolerance == 0.05
    _, allowed = per_task(held, scores, {}, 0.05, ["b"], canaries={"accuracy": canary})
    assert sorted(allowed) == ["task:a", "task:a:accuracy"]

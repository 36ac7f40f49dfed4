"""spec.budget through the real Reconciler on the in-memory API server (tests/fake_cluster.py): a reached cap starts
no new stage and says so (condition, phase, one event), raising it lets the run go on, and status keeps what
each round and the whole run used, priced at spec.costs."""

from __future__ import annotations

import asyncio
from typing import Any

from fake_cluster import stage_result
from taojob_rig import condition, drive, setup, state, taojob

from tao_operator.api import ConditionType, EventReason, Reason
from tao_trainer.contract import StageResult

COSTS = {
    "currency": "EUR",
    "endpoints": {"teacher": {"inputPer1k": 1.0, "outputPer1k": 2.0}},
    "cpuHour": 0.36,
}


def with_teacher_tokens(job: dict[str, Any]) -> StageResult:
    """Each generate pod (two shards) reports 300 prompt and 100 completion tokens of the teacher."""
    labels = job["metadata"]["labels"]
    result = stage_result(labels["tao.dev/job"], labels["tao.dev/stage"], int(labels["tao.dev/round"]))
    if result.stage == "generate":
        result.counts |= {"teacher.promptTokens": 300, "teacher.completionTokens": 100}
    result.counts["cpuSeconds"] = 10
    return result


def test_a_reached_budget_starts_no_stage_until_it_is_raised() -> None:
    cluster, rec, events = setup(taojob(budget={"tokens": 1000}, costs=COSTS))
    asyncio.run(drive(cluster, rec, passes=25, result_for=with_teacher_tokens))
    st = state(cluster)
    # Round 1's generate used 800 tokens (two pods), round 2's another 800: round 2 scores nothing.
    assert st["phase"] == "BudgetExhausted"
    cond = condition(cluster, ConditionType.BUDGET_EXHAUSTED)
    assert cond["status"] == "True" and cond["reason"] == Reason.BUDGET_EXHAUSTED
    assert cond["message"].startswith(
        "budget reached: 1600 tokens used (teacher 1600), budget.tokens is 1000"
    )
    jobs = {k[2] for k in cluster.objects if k[0] == "jobs"}
    assert "arith-r2-generate" in jobs and "arith-r2-score" not in jobs
    assert [m for _, reason, m in events if reason == EventReason.BUDGET_EXHAUSTED] == [cond["message"]]
    r1, r2 = st["rounds"]
    assert r1["usage"]["tokens"] == {"teacher": {"input": 600, "output": 200}}
    # Priced at spec.costs: 0.6 + 0.4 for the tokens, 5 stages x 2 or 1 pods x 10 CPU-s at 0.36 per hour.
    assert r1["usage"]["cpuSeconds"] == 70 and r1["usage"]["money"] == round(1.0 + 70 / 3600 * 0.36, 6)

    doc = cluster.objects[("taojobs", "default", "arith")]
    doc["spec"]["budget"] = {"tokens": 5000}
    doc["metadata"]["generation"] += 1
    assert asyncio.run(drive(cluster, rec, result_for=with_teacher_tokens)) == "Succeeded"
    cond = condition(cluster, ConditionType.BUDGET_EXHAUSTED)
    assert cond["status"] == "False" and cond["reason"] == Reason.WITHIN_BUDGET
    total = state(cluster)["usage"]
    assert total["tokens"] == {"teacher": {"input": 1200, "output": 400}} and total["cpuSeconds"] == 140


def test_a_money_cap_counts_what_the_run_spent() -> None:
    cluster, rec, _ = setup(taojob(budget={"money": 1.0}, costs=COSTS))
    asyncio.run(drive(cluster, rec, passes=25, result_for=with_teacher_tokens))
    assert state(cluster)["phase"] == "BudgetExhausted"
    message = condition(cluster, ConditionType.BUDGET_EXHAUSTED)["message"]
    assert "spent, budget.money is 1; raise spec.budget.money to go on" in message
    # The cap was reached after round 1's generate (1.0 of tokens): round 1 scored nothing.
    assert "arith-r1-score" not in {k[2] for k in cluster.objects if k[0] == "jobs"}


def test_no_budget_never_blocks() -> None:
    cluster, rec, _ = setup(taojob(costs=COSTS))
    assert asyncio.run(drive(cluster, rec, result_for=with_teacher_tokens)) == "Succeeded"
    assert not condition(cluster, ConditionType.BUDGET_EXHAUSTED)
    assert state(cluster)["usage"]["money"] > 0

"""The promotion gate as a pure function: hand-made paired score vectors, and what status and `tao run` show."""

from __future__ import annotations

import random

import pytest

from tao_operator.api import TAOJobStatus
from tao_operator.report import format_table
from tao_operator.status import record_result
from tao_trainer.contract import StageResult
from tao_trainer.promotion import Guard, Health, decide, max_prompts_too_small, paired_bound, sign_floor


def test_all_equal_vectors_never_promote_on_a_positive_bar() -> None:
    for value in (0.0, 0.5, 1.0):
        v = decide([value] * 200, [value] * 200, 0.01)
        assert (v.promoted, v.reason, v.bound.differing, v.bound.lower, v.bound.upper) == (
            False,
            "not-better",
            0,
            0.0,
            0.0,
        )


def test_ties_count_as_pairs_but_not_as_evidence() -> None:
    # 10 wins among 190 ties: +0.05 mean, sign test p ~ 0.001, the bound stays positive.
    v = decide([0.0] * 200, [1.0] * 10 + [0.0] * 190, 0.01)
    assert v.bound.pairs == 200 and v.bound.differing == 10 and v.bound.estimate == 0.05
    assert v.bound.lower is not None and 0.0 < v.bound.lower < 0.05
    # The same wins against as many losses: no improvement however many prompts tie.
    v = decide([0.0] * 190 + [1.0] * 10, [1.0] * 10 + [0.0] * 190, 0.01)
    assert not v.promoted and v.bound.estimate == 0.0 and v.bound.lower is not None and v.bound.lower < 0


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_tiny_samples_cannot_show_an_improvement(n: int) -> None:
    v = decide([0.0] * n, [1.0] * n, 0.01)
    assert not v.promoted and v.reason == "not-better" and v.bound.lower == 0.0 and v.bound.estimate == 1.0


def test_five_unanimous_wins_are_the_floor_at_095() -> None:
    assert sign_floor(0.95) == 5
    assert decide([0.0] * 5, [1.0] * 5, 0.01).promoted
    assert not decide([0.0] * 5, [1.0] * 5, 0.01, confidence=0.99).promoted


def test_a_chance_gain_is_rarely_promoted() -> None:
    """A challenger no better than the champion (both right 60% of the time, independently per prompt): the old
    rule (mean difference >= 0.01) promoted it about 4 times in 10; the bound at 0.95 about once in 20 or less."""
    rng = random.Random(7)
    old = new = 0
    trials = 60
    for _ in range(trials):
        champ = [float(rng.random() < 0.6) for _ in range(200)]
        chall = [float(rng.random() < 0.6) for _ in range(200)]
        v = decide(champ, chall, 0.01)
        old += v.bound.estimate is not None and v.bound.estimate >= 0.01
        new += v.promoted
    assert old >= trials // 5
    assert new <= trials // 10


def test_unscored_prompts_drop_out_of_the_pairs() -> None:
    b = paired_bound([1.0, None, 0.0, 0.0], [1.0, 1.0, None, 0.0], 0.95)
    assert (b.pairs, b.differing) == (2, 0)
    assert decide([None, None], [None, None], -10).reason == "no-scores"
    with pytest.raises(ValueError):
        decide([1.0], [1.0, 0.0], 0.0)


def test_continuous_scores() -> None:
    rng = random.Random(3)
    champ = [rng.uniform(0, 1) for _ in range(100)]
    v = decide(champ, [x + 0.1 for x in champ], 0.05)
    assert v.promoted and v.bound.lower == pytest.approx(0.1, abs=1e-3)
    assert not decide(champ, [x + 0.1 for x in champ], 0.2).promoted


def test_alarm_collapse_and_abstentions() -> None:
    champ, chall = [0.0] * 50, [1.0] * 50
    collapsed = decide(
        champ,
        chall,
        0.01,
        champion_health=Health(diversity=0.6),
        challenger_health=Health(diversity=0.0),
    )
    assert collapsed.reason == "alarm:diversity-collapse" and "0.6 -> 0.0" in collapsed.message
    # A deterministic champion has no diversity to lose: no ratio is read.
    assert decide(
        champ, chall, 0.01, champion_health=Health(diversity=0.0), challenger_health=Health(0.0)
    ).promoted
    hacked = decide(
        champ, chall, 0.01, champion_health=Health(unscored=0.0), challenger_health=Health(unscored=0.2)
    )
    assert hacked.reason == "alarm:abstentions"
    assert decide(champ, chall, 0.01, alarms=False, challenger_health=Health(unscored=0.9)).promoted


def test_supported_wins_carry_the_promotion_unsupported_do_not() -> None:
    champ, chall = [0.0] * 40, [1.0] * 40
    assert decide(champ, chall, 0.01, supported=[True] * 40).promoted
    # Half the wins unsupported: the other half still clears the bar.
    assert decide(champ, chall, 0.01, supported=[True, False] * 20).promoted
    v = decide(champ, chall, 0.01, supported=[True] * 2 + [False] * 38)
    assert v.reason == "alarm:unsupported-wins" and "38 wins" in v.message
    assert v.supported_bound is not None and v.supported_bound.estimate == 0.05


def test_support_loss_fires_on_answers_the_champion_seldom_samples() -> None:
    champ, chall, all_supported = [0.0] * 40, [1.0] * 40, [True] * 40

    def verdict(champion: float, challenger: float, supported: list[bool] | None = all_supported) -> str:
        return decide(
            champ,
            chall,
            0.01,
            supported=supported,
            champion_health=Health(support=champion),
            challenger_health=Health(support=challenger),
        ).reason

    # The gate benchmark's seed 0: real improvements kept 0.73-0.82 of 0.73-0.78; a wrong-answer challenger 0.14.
    assert verdict(0.784, 0.726) == "promoted"
    assert verdict(0.784, 0.142) == "alarm:support-loss"
    assert verdict(0.784, 0.392) == "promoted"  # exactly half is kept
    # A champion whose greedy answers are rarely among its own samples gives no ratio to read.
    assert verdict(0.15, 0.0) == "promoted"
    # Without comparable final answers (free-form text: supported is None) support is not read at all.
    assert verdict(0.784, 0.0, supported=None) == "promoted"


def test_guards_veto_but_never_promote() -> None:
    champ, chall = [0.0] * 40, [1.0] * 40
    # One regression in 200 stays within 0.05; one in 40 would not (its bound reaches -0.075).
    fine = Guard([1.0] * 200, [1.0] * 199 + [0.0], tolerance=0.05)
    assert not decide(champ, chall, 0.01, guards={"f": Guard([1.0] * 40, [1.0] * 39 + [0.0])}).promoted
    worse = Guard([1.0] * 20, [0.0] * 5 + [1.0] * 15, tolerance=0.05, uses_labels=True)
    v = decide(champ, chall, 0.01, guards={"format": fine, "canary": worse})
    assert v.reason == "guard:canary" and "canary (labels)" in v.message
    assert [g.passed for g in v.guards] == [True, False]
    assert v.metrics()["guard.canary.labels"] == 1.0 and v.metrics()["guard.canary.pass"] == 0.0
    # A guard with no labelled prompt in the held-out set does not block (and is reported with no pairs).
    empty = Guard([None] * 40, [None] * 40, uses_labels=True)
    assert decide(champ, chall, 0.01, guards={"canary": empty}).promoted
    assert not decide(champ, champ, 0.01, guards={"format": fine}).promoted


def test_max_prompts_warning() -> None:
    assert max_prompts_too_small(4, 0.01, 0.95) is not None
    assert max_prompts_too_small(5, 0.01, 0.95) is None
    assert max_prompts_too_small(4, -1.0, 0.95) is None


def test_status_and_table_carry_the_bound() -> None:
    v = decide(
        [0.0] * 30,
        [1.0] * 30,
        0.01,
        guards={"accuracy": Guard([1.0] * 10, [0.0] * 10, uses_labels=True)},
    )
    result = StageResult(
        stage="evaluate",
        round=1,
        promoted=v.promoted,
        message=v.message,
        counts={"wins": v.wins, "losses": v.losses},
        metrics={"champion.score": 0.0, "challenger.score": 1.0, **v.metrics()},
        outputs={"reason": v.reason},
    )
    assert len(result.model_dump_json(by_alias=True)) < 1500
    st = TAOJobStatus()
    record_result(st, result, "t")
    gate = st.rounds[0].gate
    assert gate is not None
    assert (gate.reason, gate.estimate, gate.differing) == ("guard:accuracy", 1.0, 30)
    assert gate.guards[0].uses_labels and not gate.guards[0].passed
    table = format_table(
        {
            "rounds": [
                {"round": 1, "champion": {"score": 0.0}, "challenger": {"score": 1.0}, "verdict": v.message}
            ]
        }
    )
    assert "round 1: kept the champion (guard:accuracy)" in table and "[1.0, 1.0]" in table

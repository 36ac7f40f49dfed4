"""Scorer composition: normalisations, require gates, None semantics, raw values and details."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest

from tao_trainer.scorers import (
    RegexScorer,
    ScoredBatch,
    Scorer,
    ScorerError,
    as_reward_funcs,
    build_scorers,
    combine_scores,
    compose,
    needs_combined,
    normalize_values,
    score_against_all,
    score_all,
    stats_counts,
)
from tao_trainer.scorers.base import Detailed


class Fixed(RegexScorer):
    """Preset values (and details), with any composition settings: combining tested in isolation."""

    def __init__(
        self, name: str, values: list[float | None], details: list[Any] | None = None, **settings: Any
    ) -> None:
        super().__init__(pattern="x", name=name, **settings)
        self.values, self.details = values, details

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        self.count("calls")
        return Detailed(list(self.values), self.details)


def run(*scorers: Scorer[Any], prompts: Sequence[Any] | None = None) -> ScoredBatch:
    n = len(scorers[0].values)  # type: ignore[attr-defined]
    prompts = prompts if prompts is not None else ["q"] * n
    return score_all(list(scorers), prompts, ["x"] * n)


def close(a: Sequence[float | None], b: Sequence[float | None]) -> bool:
    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and math.isclose(x, y, abs_tol=1e-9))
        for x, y in zip(a, b, strict=True)
    )


# --------------------------------------------------------------------------- normalisations


def test_none_leaves_values_alone() -> None:
    assert normalize_values([3.0, None, -1.5], "none") == [3.0, None, -1.5]


def test_range_maps_and_clips() -> None:
    assert normalize_values([0.0, 5.0, 10.0, -3.0, 12.0, None], "range", value_range=[0, 10]) == [
        0.0,
        0.5,
        1.0,
        0.0,
        1.0,
        None,
    ]
    with pytest.raises(ValueError, match="value_range"):
        normalize_values([1.0], "range")


def test_sigmoid_is_stable_at_the_extremes() -> None:
    out = normalize_values([0.0, 2.0, -2.0, 1000.0, -1000.0, None], "sigmoid")
    assert out[0] == 0.5 and math.isclose(out[1] + out[2], 1.0)
    assert out[3] == 1.0 and out[4] == 0.0 and out[5] is None


def test_group_minmax_within_each_prompt() -> None:
    prompts = ["a", "a", "a", "b", "b", "c"]
    values = [1.0, 2.0, 3.0, 5.0, 5.0, 9.0]
    # b: all equal -> 0.5; c: a group of one -> 0.5.
    assert normalize_values(values, "group_minmax", prompts=prompts) == [0.0, 0.5, 1.0, 0.5, 0.5, 0.5]


def test_group_zscore_within_each_prompt() -> None:
    prompts = ["a", "a", "b", "b", "b", "c"]
    out = normalize_values([1.0, 3.0, 0.1, 0.1, 0.1, 4.0], "group_zscore", prompts=prompts)
    # Population std: a's values are one std from their mean; equal values give 0, not noise.
    assert out == [-1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    out = normalize_values([1.0, 2.0, 6.0], "group_zscore", prompts=["p"] * 3)
    assert math.isclose(sum(out), 0.0, abs_tol=1e-12)  # type: ignore[arg-type]
    assert math.isclose(sum(v * v for v in out) / 3, 1.0)  # type: ignore[operator]


def test_group_normalisation_skips_none_and_all_none_groups() -> None:
    prompts = ["a", "a", "a", "b", "b"]
    assert normalize_values([None, 2.0, 4.0, None, None], "group_minmax", prompts=prompts) == [
        None,
        0.0,
        1.0,
        None,
        None,
    ]
    assert normalize_values([2.0, None, 4.0, None, 7.0], "group_zscore", prompts=prompts) == [
        -1.0,
        None,
        1.0,
        None,
        0.0,
    ]


def test_group_boundaries_follow_runs_of_equal_prompts() -> None:
    # "a" twice but not adjacent: two groups; conversational prompts compare by value.
    chat = [{"role": "user", "content": "hi"}]
    prompts = ["a", "a", "b", "a", chat, list(chat)]
    out = normalize_values([1.0, 3.0, 0.0, 100.0, 5.0, 6.0], "group_minmax", prompts=prompts)
    assert out == [0.0, 1.0, 0.5, 0.5, 0.0, 1.0]
    with pytest.raises(ValueError, match="one prompt per value"):
        normalize_values([1.0, 2.0], "group_zscore", prompts=["a"])
    with pytest.raises(ValueError, match="unknown normalization"):
        normalize_values([1.0], "softmax")


def test_normalised_values_feed_the_total_and_raw_is_kept() -> None:
    rm = Fixed("rm", [-2.0, 0.0, 2.0, None], normalization="group_minmax")
    plain = Fixed("plain", [1.0, 0.0, 1.0, 1.0])
    batch = run(rm, plain)
    assert batch.per_scorer["rm"] == [0.0, 0.5, 1.0, None]
    assert batch.raw == {"rm": [-2.0, 0.0, 2.0, None]}  # only scorers with a normalization
    assert batch.total == [1.0, 0.5, 2.0, 2.0]  # rm's None: plain's value stands in (1.0 * W=2)


def test_range_normalisation_through_a_spec() -> None:
    scorer = Fixed("judge", [1.0, 10.0, 5.5], normalization="range", value_range=[1, 10])
    assert run(scorer).total == [0.0, 1.0, 0.5]


# --------------------------------------------------------------------------- gates


def test_require_gates_the_total() -> None:
    verifier = Fixed("verifier", [1.0, 0.0, 1.0, 0.0], require=True)
    judge = Fixed("judge", [0.2, 0.9, 0.6, 1.0])
    # A failing verifier zeroes the total whatever the judge says; passing rows combine as usual.
    assert run(verifier, judge).total == [1.2, 0.0, 1.6, 0.0]


def test_weight_zero_gate_only_gates() -> None:
    verifier = Fixed("verifier", [1.0, 0.0, 1.0], require=True, weight=0)
    judge = Fixed("judge", [0.2, 0.9, 0.6])
    batch = run(verifier, judge)
    assert batch.total == [0.2, 0.0, 0.6]
    assert batch.per_scorer["verifier"] == [1.0, 0.0, 1.0]  # recorded all the same


def test_pass_at_threshold_is_inclusive_after_normalisation() -> None:
    # range to 0..1 then passAt 0.7: 7/10 passes (despite float noise), 6.9/10 does not.
    quality = Fixed(
        "quality", [7.0, 6.9, 10.0], require=True, pass_at=0.7, normalization="range", value_range=[0, 10]
    )
    other = Fixed("other", [1.0, 1.0, 1.0], weight=0)
    totals = run(quality, other).total
    assert totals[1] == 0.0
    assert close(totals, [0.7, 0.0, 1.0])


def test_gate_abstention_gives_no_total_but_a_failure_wins() -> None:
    gate_a = Fixed("a", [None, None, 1.0, 0.0], require=True, weight=0)
    gate_b = Fixed("b", [1.0, 0.0, None, None], require=True, weight=0)
    judge = Fixed("judge", [0.5, 0.5, 0.5, 0.5])
    # row 0: a abstains -> None; row 1: b fails -> 0.0 though a abstains; row 2: b abstains; row 3: a fails.
    assert run(gate_a, gate_b, judge).total == [None, 0.0, None, 0.0]


def test_none_semantics_unchanged_for_passing_rows() -> None:
    gate = Fixed("gate", [1.0, 1.0, 1.0], require=True, weight=1)
    a = Fixed("a", [None, 0.5, None], weight=1)
    b = Fixed("b", [None, None, 0.0], weight=2)
    # row 0: only the gate judged -> its value stands in for all (1.0 * W=4); row 1: (1 + 0.5) / 2 * 4.
    assert run(gate, a, b).total == [4.0, 3.0, 4.0 / 3]


def test_gate_with_group_zscore() -> None:
    # The gate's normalised value is what passAt sees: above the group's mean passes.
    rm = Fixed("rm", [1.0, 3.0, 5.0, 2.0], require=True, pass_at=0.0, normalization="group_zscore", weight=0)
    fmt = Fixed("fmt", [1.0, 1.0, 1.0, 1.0])
    assert run(rm, fmt, prompts=["a", "a", "a", "b"]).total == [0.0, 1.0, 1.0, 1.0]


def test_combine_scores_gate_argument() -> None:
    assert combine_scores([[0.4, 0.6], [1.0, 1.0]], [0.0, 1.0], pass_at=[0.5, None]) == [0.0, 1.0]
    assert combine_scores([[0.4, 0.6], [1.0, 1.0]], [0.0, 1.0]) == [1.0, 1.0]
    with pytest.raises(ValueError, match="gates"):
        combine_scores([[1.0]], [1.0], pass_at=[None, None])


# --------------------------------------------------------------------------- details, stats, evaluation


def test_details_pass_through_by_scorer() -> None:
    judge = Fixed("judge", [0.5, 1.0], details=[{"reason": "vague"}, None])
    plain = Fixed("plain", [1.0, 1.0])
    batch = run(judge, plain)
    assert batch.details == {"judge": [{"reason": "vague"}, None]}
    assert ScoredBatch.model_validate_json(batch.model_dump_json()) == batch


def test_bad_details_are_reported_with_the_scorer_name() -> None:
    with pytest.raises(ScorerError, match="scorer 'judge' returned details"):
        run(Fixed("judge", [0.5, 1.0], details=[None]))
    with pytest.raises(ScorerError, match="scorer 'judge' returned a str as details at index 1"):
        run(Fixed("judge", [0.5, 1.0], details=[None, "why"]))


def test_compose_recombines_stored_raw_values() -> None:
    scorers = [Fixed("gate", [], require=True, weight=0), Fixed("rm", [], normalization="sigmoid")]
    batch = compose(scorers, ["q", "q"], {"gate": [1, 0], "rm": [0.0, 4.0]}, {"rm": [None, {"t": 1}]})
    assert batch.total == [0.5, 0.0] and batch.raw == {"rm": [0.0, 4.0]}
    assert batch.details == {"rm": [None, {"t": 1}]}


def test_stats_counts_and_score_against_all() -> None:
    rm = Fixed("rm", [1.0, 3.0], normalization="group_minmax")
    majority, regex = build_scorers(
        [{"type": "majority", "extract": r"=(\d+)"}, {"type": "regex", "pattern": r"=\d+", "name": "fmt"}]
    )
    batch = score_against_all(
        [rm, majority, regex], ["p", "p"], ["=2", "=3"], references=[["=2", "=2"], ["=2", "=2"]]
    )
    # The caller's prompts define the groups: both answers to "p" are compared by rm.
    assert batch.per_scorer == {"rm": [0.0, 1.0], "majority": [1.0, 0.0], "fmt": [1.0, 1.0]}
    assert batch.raw == {"rm": [1.0, 3.0]}
    assert stats_counts([rm, majority]) == {"rm.calls": 1}
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        score_all([rm], ["p", "p"], ["x"])


# --------------------------------------------------------------------------- TRL


def test_reward_funcs_switch_to_combined_when_composition_is_used() -> None:
    plain = [Fixed("a", [1.0, 0.0]), Fixed("b", [1.0, 1.0])]
    assert not needs_combined(plain)
    funcs, weights = as_reward_funcs(plain)
    assert [f.__name__ for f in funcs] == ["a", "b"] and weights == [1.0, 1.0]

    gated = [Fixed("a", [1.0, 0.0], require=True, weight=0), Fixed("b", [1.0, 1.0])]
    normalised = [Fixed("a", [1.0, 0.0]), Fixed("b", [2.0, 4.0], normalization="group_minmax")]
    for scorers in (gated, normalised):
        assert needs_combined(scorers)
        (total,), (weight,) = as_reward_funcs(scorers)
        assert total.__name__ == "tao_total" and weight == 1.0
        with pytest.raises(ValueError, match="combined"):
            as_reward_funcs(scorers, combined=False)

    logged: dict[str, float] = {}
    (total,), _ = as_reward_funcs(gated)
    extras = {"completion_ids": [[1], [2]], "trainer_state": None, "log_metric": logged.__setitem__}
    assert total(prompts=["q", "q"], completions=["x", "y"], **extras) == [1.0, 0.0]
    assert logged == {"rewards/a/mean": 0.5, "rewards/b/mean": 1.0}
    (total,), _ = as_reward_funcs(normalised)
    assert total(prompts=["q", "q"], completions=["x", "y"]) == [1.0, 1.0]

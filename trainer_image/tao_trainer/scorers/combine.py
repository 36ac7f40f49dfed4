"""Combining several scorers into one score per candidate, and handing them to TRL.

For one batch (a prompt's candidates consecutive, as everywhere in this package), per scorer and then
per candidate:

1. raw values and details: `Scorer.detailed` (`Scorer.detailed_against` in evaluation);
2. normalisation (`normalize_values`), the scorer's `normalization`: none, range, sigmoid,
   group_minmax or group_zscore, the group_* ones within the candidates of one prompt;
3. gates: a candidate below `passAt` on a `require` scorer gets a total of 0.0 (see `combine_scores`);
4. the weighted combination of every scorer's normalised value (`combine_scores`), gates included
   with their own weight, which may be 0.

A verifier gates a reward model whose logits are ranked within each prompt's candidates (`compose`
does steps 2 to 4 on values already at hand; building a reward-model scorer loads nothing):

>>> from tao_trainer.scorers import build_scorers
>>> scorers = build_scorers([
...     {"type": "regex", "pattern": r".*=\\d+", "require": True, "weight": 0},
...     {"type": "reward_model", "model": "s3://models/rm", "normalization": "group_minmax"},
... ])
>>> raw = {"regex": [1.0, 1.0, 0.0, 1.0], "reward_model": [-1.0, 3.0, 9.0, 0.4]}
>>> batch = compose(scorers, ["q1", "q1", "q1", "q2"], raw)
>>> batch.total, batch.per_scorer["reward_model"]
([0.0, 0.4, 0.0, 0.5], [0.0, 0.4, 1.0, 0.5])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from .base import Detail, Detailed, Score, Scorer, coerce_details, coerce_scores, group_spans
from .tasks import judge, task_masks, task_set

__all__ = [
    "NORMALIZATIONS",
    "VOTES_COLUMN",
    "ScoredBatch",
    "as_reward_funcs",
    "combine_scores",
    "compose",
    "needs_combined",
    "normalize_values",
    "score_against_all",
    "score_all",
    "stats_counts",
]

# The dataset column that carries, for each GRPO prompt, the samples its group scorers vote on (TRL hands every
# extra column to the reward functions as a keyword argument, one value per completion).
VOTES_COLUMN = "tao_votes"

NORMALIZATIONS: tuple[str, ...] = ("none", "range", "sigmoid", "group_minmax", "group_zscore")

# Slack when a normalised value is compared with `passAt`: (v - lo) / (hi - lo) lands a hair off the
# exact value the user wrote (0.7 may come back as 0.6999999999999998).
_PASS_EPSILON = 1e-9


class ScoredBatch(BaseModel):
    """Scores of one batch, by scorer name where per scorer.

    `raw` holds the values a scorer gave before its normalisation, for the scorers that have one
    (`normalization` other than none) and only those: for the others `per_scorer` already is the raw
    value, and scores files stay small. `details` holds what scorers said about each candidate (a
    judge's reasoning, sub-checks, truncation), for the scorers that said something.
    """

    total: list[float | None] = Field(description="Combined score per completion; None: no scorer judged it.")
    per_scorer: dict[str, list[float | None]] = Field(
        description="Each scorer's values as used in the total (normalised), by scorer name."
    )
    raw: dict[str, list[float | None]] = Field(
        default_factory=dict, description="Values before normalisation, for scorers with a normalization."
    )
    details: dict[str, list[dict[str, Any] | None]] = Field(
        default_factory=dict, description="Per-completion details, for scorers that give them."
    )


# --------------------------------------------------------------------------------------- normalising


def _sigmoid(value: float) -> float:
    # Two branches so that exp never overflows: large |v| saturates to 0 or 1.
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    z = math.exp(value)
    return z / (1.0 + z)


def normalize_values(
    values: Sequence[Score],
    normalization: str,
    *,
    prompts: Sequence[Any] | None = None,
    value_range: Sequence[float] | None = None,
) -> list[Score]:
    """One scorer's values mapped as its `normalization` says; None stays None and is left out of
    group statistics.

    - none: as is;
    - range: (v - lo) / (hi - lo) with `value_range = [lo, hi]`, clipped to 0..1;
    - sigmoid: 1 / (1 + e^-v), e.g. a reward model's logit as a probability;
    - group_minmax: (v - min) / (max - min) within each group, 0.5 for every member when all are equal;
    - group_zscore: (v - mean) / std within each group (population std), 0.0 when all are equal.

    A group is a run of consecutive equal `prompts` (`group_spans`), i.e. the candidates of one prompt.

    >>> normalize_values([2.0, None, 6.0], "range", value_range=[2, 4])
    [0.0, None, 1.0]
    >>> normalize_values([0.0], "sigmoid")
    [0.5]
    >>> normalize_values([1.0, 3.0, 2.0, 7.0, 7.0], "group_minmax", prompts=list("aaabb"))
    [0.0, 1.0, 0.5, 0.5, 0.5]
    >>> normalize_values([1.0, 3.0, None, 5.0], "group_zscore", prompts=list("aaab"))
    [-1.0, 1.0, None, 0.0]
    """
    if normalization == "none":
        return list(values)
    if normalization == "range":
        if value_range is None or len(value_range) != 2 or not value_range[0] < value_range[1]:
            raise ValueError(
                f"normalization 'range' needs value_range [lo, hi] with lo < hi, got {value_range}"
            )
        lo, hi = float(value_range[0]), float(value_range[1])
        return [None if v is None else min(1.0, max(0.0, (v - lo) / (hi - lo))) for v in values]
    if normalization == "sigmoid":
        return [None if v is None else _sigmoid(v) for v in values]
    if normalization not in ("group_minmax", "group_zscore"):
        raise ValueError(f"unknown normalization {normalization!r}; allowed: {', '.join(NORMALIZATIONS)}")
    if prompts is None or len(prompts) != len(values):
        raise ValueError(f"normalization {normalization!r} needs one prompt per value, to find the groups")
    out: list[Score] = list(values)
    for start, stop in group_spans(prompts):
        members = [i for i in range(start, stop) if values[i] is not None]
        if not members:
            continue
        group = [float(v) for i in members if (v := values[i]) is not None]
        lo, hi = min(group), max(group)
        if normalization == "group_minmax":
            # All equal (a group of one included): nothing tells them apart, so all sit in the middle.
            mapped = [0.5] * len(group) if hi == lo else [(v - lo) / (hi - lo) for v in group]
        else:
            # hi == lo, not std == 0: equal values can give a mean a hair off and a tiny non-zero std.
            mean = sum(group) / len(group)
            std = math.sqrt(sum((v - mean) ** 2 for v in group) / len(group))
            mapped = [0.0] * len(group) if hi == lo else [(v - mean) / std for v in group]
        for i, value in zip(members, mapped, strict=True):
            out[i] = value
    return out


# ---------------------------------------------------------------------------------------- combining


def combine_scores(
    per_scorer: Sequence[Sequence[Score]],
    weights: Sequence[float],
    pass_at: Sequence[float | None] | None = None,
    applies: Sequence[Sequence[bool] | None] | None = None,
) -> list[Score]:
    """Weighted sum in which a missing judgement (None) does not count as 0, behind optional gates.

    For each completion, with W the sum of all weights and P the scorers that gave a value:

        total = sum(w_i * v_i for i in P) / sum(w_i for i in P) * W

    When every scorer gives a value this is the plain weighted sum (what TRL computes). When some
    abstain, the weighted mean of the others stands in for them, so the total stays on the same
    scale and an abstention neither rewards nor punishes. The total is None when no scorer with a
    positive weight judged the completion: there is nothing to train on then, and a made-up 0
    would read as "bad".

    `pass_at[i]`, when not None, makes scorer i a gate (`require`): a completion whose value from a
    gate is below it gets 0.0, whatever the other scorers say (a failed gate wins over another gate's
    abstention); a completion a gate did not judge (None) gets None; the others get the sum above, the
    gates counted in it with their own weights.

    `applies[i]`, when not None, says which completions scorer i judges at all (multi-task TAO: its
    `tasks`); where it does not apply it is neither a gate nor an abstention, and W is the sum of the
    weights of the scorers that apply there.

    >>> combine_scores([[1.0, 1.0, None], [0.0, None, None]], weights=[1.0, 3.0])
    [1.0, 4.0, None]
    >>> combine_scores([[1.0, 0.0, None], [0.8, 0.9, 0.7]], weights=[0.0, 1.0], pass_at=[1.0, None])
    [0.8, 0.0, None]
    >>> combine_scores([[1.0, None], [None, 0.5]], weights=[1.0, 2.0], pass_at=[1.0, None],
    ...                applies=[[True, False], [False, True]])
    [1.0, 1.0]
    """
    if len(per_scorer) != len(weights):
        raise ValueError(f"{len(per_scorer)} score lists for {len(weights)} weights")
    if pass_at is not None and len(pass_at) != len(weights):
        raise ValueError(f"{len(pass_at)} gates for {len(weights)} weights")
    if not per_scorer:
        return []
    if applies is not None and len(applies) != len(weights):
        raise ValueError(f"{len(applies)} task masks for {len(weights)} weights")
    gates = [(i, float(t)) for i, t in enumerate(pass_at or []) if t is not None]
    total_weight = sum(weights)
    totals: list[Score] = []
    for r, row in enumerate(zip(*per_scorer, strict=True)):
        here = [a is None or a[r] for a in applies] if applies is not None else None
        gate_values = [(row[i], threshold) for i, threshold in gates if here is None or here[i]]
        if any(v is not None and v < threshold - _PASS_EPSILON for v, threshold in gate_values):
            totals.append(0.0)
            continue
        if any(v is None for v, _ in gate_values):
            totals.append(None)
            continue
        if here is not None:
            total_weight = sum(w for w, h in zip(weights, here, strict=True) if h)
        present = [(w, v) for w, v in zip(weights, row, strict=True) if v is not None]
        present_weight = sum(w for w, _ in present)
        if present_weight <= 0:
            totals.append(None)
        else:
            totals.append(sum(w * v for w, v in present) / present_weight * total_weight)
    return totals


def _composition(scorer: Scorer[Any]) -> tuple[bool, float, str, Sequence[float] | None]:
    # getattr: a user's Scorer subclass may bring a spec model without these fields.
    spec = scorer.spec
    return (
        bool(getattr(spec, "require", False)),
        float(getattr(spec, "pass_at", 1.0)),
        str(getattr(spec, "normalization", "none")),
        getattr(spec, "value_range", None),
    )


def needs_combined(scorers: Sequence[Scorer[Any]]) -> bool:
    """True when a scorer is a gate (`require`), has a normalization or judges some tasks only: only the
    combined score applies them, so per-scorer reward functions would silently train on something else.

    >>> from tao_trainer.scorers import build_scorers
    >>> needs_combined(build_scorers([{"type": "json"}]))
    False
    >>> needs_combined(build_scorers([{"type": "json", "require": True}]))
    True
    """
    for scorer in scorers:
        require, _, normalization, _ = _composition(scorer)
        if require or normalization != "none" or task_set(scorer) is not None:
            return True
    return False


def _check_names(scorers: Sequence[Scorer[Any]]) -> None:
    names = [scorer.name for scorer in scorers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"scorer names must be unique; repeated: {', '.join(duplicates)}")


def _check_lengths(prompts: Sequence[Any], completions: Sequence[Any]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(
            f"got {len(prompts)} prompts for {len(completions)} completions; pass one prompt per completion"
        )


def compose(
    scorers: Sequence[Scorer[Any]],
    prompts: Sequence[Any],
    raw: Mapping[str, Sequence[Any]],
    details: Mapping[str, Sequence[Detail] | None] | None = None,
    applies: Sequence[Sequence[bool] | None] | None = None,
) -> ScoredBatch:
    """The batch from each scorer's raw values (by name): normalised, gated and combined (steps 2 to 4
    of this module's docstring). `score_all` is `compose` over the scorers' own outputs; call it directly
    to recombine stored raw values under other settings. `applies`: see `combine_scores`."""
    n = len(prompts)
    per_scorer: dict[str, list[Score]] = {}
    raw_out: dict[str, list[Score]] = {}
    details_out: dict[str, list[dict[str, Any] | None]] = {}
    gates: list[float | None] = []
    for scorer in scorers:
        where = f"scorer {scorer.name!r}"
        values = coerce_scores(raw[scorer.name], n, where)
        require, pass_at, normalization, value_range = _composition(scorer)
        if normalization != "none":
            raw_out[scorer.name] = values
            values = normalize_values(values, normalization, prompts=prompts, value_range=value_range)
        per_scorer[scorer.name] = values
        gates.append(pass_at if require else None)
        found = (details or {}).get(scorer.name)
        if found is not None:
            details_out[scorer.name] = coerce_details(found, n, where)
    total: list[Score] = (
        combine_scores(list(per_scorer.values()), [scorer.weight for scorer in scorers], gates, applies)
        if scorers
        else [None] * n
    )
    return ScoredBatch(total=total, per_scorer=per_scorer, raw=raw_out, details=details_out)


def _from_results(
    scorers: Sequence[Scorer[Any]],
    prompts: Sequence[Any],
    results: list[Detailed],
    applies: Sequence[Sequence[bool] | None] | None = None,
) -> ScoredBatch:
    raw: dict[str, Sequence[Any]] = {}
    details: dict[str, Sequence[Detail] | None] = {}
    for scorer, result in zip(scorers, results, strict=True):
        if not isinstance(result, Detailed):
            # A subclass's `detailed` that returns a bare list of values.
            result = Detailed(result)
        raw[scorer.name], details[scorer.name] = result.values, result.details
    return compose(scorers, prompts, raw, details, applies)


def score_all(
    scorers: Sequence[Scorer[Any]], prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
) -> ScoredBatch:
    """Run every scorer on the batch and combine their values (see `compose`).

    >>> from tao_trainer.scorers import build_scorers
    >>> scorers = build_scorers([
    ...     {"type": "majority", "extract": r"=(\\d+)"},
    ...     {"type": "regex", "pattern": r"=\\d+", "weight": 0.5},
    ... ])
    >>> batch = score_all(scorers, ["1+1"] * 3, ["=2", "=2", "two"])
    >>> batch.total
    [1.5, 1.5, 0.0]
    >>> batch.per_scorer["majority"]
    [1.0, 1.0, 0.0]

    A format gate: the right answer in the wrong format scores 0, whatever the vote says.

    >>> scorers = build_scorers([
    ...     {"type": "regex", "pattern": r"=\\d+", "require": True, "weight": 0},
    ...     {"type": "majority", "extract": r"=(\\d+)"},
    ... ])
    >>> score_all(scorers, ["1+1"] * 3, ["=2", "=2", "so =2"]).total
    [1.0, 1.0, 0.0]
    """
    _check_names(scorers)
    _check_lengths(prompts, completions)
    masks = task_masks(scorers, len(prompts), kwargs)
    results = [
        judge(scorer, mask, scorer.detailed, (prompts, completions), kwargs)
        for scorer, mask in zip(scorers, masks, strict=True)
    ]
    return _from_results(scorers, prompts, results, masks)


def score_against_all(
    scorers: Sequence[Scorer[Any]],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    references: Sequence[Sequence[Any]],
    **kwargs: Any,
) -> ScoredBatch:
    """Evaluation: each completion scored on its own, group scorers judging it against
    `references[i]` (samples for the same prompt), the others ignoring the references.

    Normalisation and gates apply as in `score_all`; the group_* normalisations use the runs of equal
    `prompts` here too, so the caller decides what is compared with what (evaluation puts the two
    models' answers to a prompt side by side)."""
    _check_names(scorers)
    _check_lengths(prompts, completions)
    masks = task_masks(scorers, len(prompts), kwargs)
    results = [
        judge(scorer, mask, scorer.detailed_against, (prompts, completions, references), kwargs)
        for scorer, mask in zip(scorers, masks, strict=True)
    ]
    return _from_results(scorers, prompts, results, masks)


def stats_counts(scorers: Sequence[Scorer[Any]]) -> dict[str, int]:
    """Every scorer's counters as `<scorer name>.<counter>`, for a StageResult's `counts`.

    >>> from tao_trainer.scorers import build_scorer
    >>> scorer = build_scorer({"type": "json"})
    >>> scorer.count("parsed", 3)
    >>> stats_counts([scorer])
    {'json.parsed': 3}
    """
    return {
        f"{scorer.name}.{key}": int(value)
        for scorer in scorers
        for key, value in sorted(scorer.stats.items())
    }


# --------------------------------------------------------------------------------------------- TRL


def as_reward_funcs(
    scorers: Sequence[Scorer[Any]], *, combined: bool | None = None, votes: str | None = None
) -> tuple[list[Callable[..., list[Score]]], list[float]]:
    """`(reward_funcs, reward_weights)` for TRL's GRPOTrainer / GRPOConfig.

    Per-scorer (`combined=False`): each scorer is its own reward function, so TRL logs each one by
    name. TRL then sums with `nansum`, i.e. it counts a None as 0 when other scorers gave a value, and
    it knows nothing of gates and normalisations.

    Combined (`combined=True`): a single function `tao_total` (weight 1) returns `score_all(...).total`,
    with this module's None semantics, gates and normalisations. It reports each scorer's mean
    (normalised) value through TRL's `log_metric` as `rewards/<name>/mean`, so per-scorer curves stay.

    The default (`combined=None`) is per-scorer, unless a scorer is a gate, has a normalization or judges
    some tasks only (`needs_combined`): then combined, since per-scorer functions would ignore them. Asking for
    per-scorer functions with such scorers is an error.

    `votes` names the keyword argument (a dataset column) that holds each completion's reference samples:
    group scorers then judge a completion against them (`score_against_all`), not against the other
    completions of its group. It implies combined.

    >>> from tao_trainer.scorers import build_scorers
    >>> funcs, weights = as_reward_funcs(build_scorers([{"type": "json", "weight": 2}]))
    >>> [f.__name__ for f in funcs], weights
    (['json'], [2.0])
    >>> funcs, weights = as_reward_funcs(build_scorers([{"type": "json", "weight": 2, "require": True}]))
    >>> [f.__name__ for f in funcs], weights
    (['tao_total'], [1.0])

    A vote over reference samples: "=2" agrees with the references' majority, "=3" does not, whatever the
    two completions of the group would have voted among themselves.

    >>> funcs, _ = as_reward_funcs(build_scorers([{"type": "majority", "extract": r"=(\\d+)"}]), votes="v")
    >>> funcs[0](["1+1"] * 2, ["=3", "=2"], v=[["=2", "=2", "=3"]] * 2)
    [0.0, 1.0]
    """
    _check_names(scorers)
    composed = needs_combined(scorers)
    if combined is None:
        combined = composed or votes is not None
    if votes is not None and not combined:
        raise ValueError(
            "votes apply in the combined score only; use combined=True (or leave combined unset)"
        )
    if not combined:
        if composed:
            raise ValueError(
                "scorers with require, a normalization or tasks only take effect in the combined score; "
                "use combined=True (or leave combined unset)"
            )
        return list(scorers), [scorer.weight for scorer in scorers]
    chosen = list(scorers)

    def tao_total(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[Score]:
        if votes is None:
            batch = score_all(chosen, prompts, completions, **kwargs)
        else:
            references = kwargs.pop(votes)
            batch = score_against_all(chosen, prompts, completions, references, **kwargs)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for name, values in batch.per_scorer.items():
                valued = [v for v in values if v is not None]
                if valued:
                    log_metric(f"rewards/{name}/mean", sum(valued) / len(valued))
        return batch.total

    return [tao_total], [1.0]

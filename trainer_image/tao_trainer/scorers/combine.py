"""Combining several scorers into one score per candidate, and handing them to TRL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from .base import Score, Scorer, coerce_scores

__all__ = ["ScoredBatch", "as_reward_funcs", "combine_scores", "score_against_all", "score_all"]


class ScoredBatch(BaseModel):
    """Scores of one batch: the combined `total` and each scorer's own values, by scorer name."""

    total: list[float | None] = Field(description="Combined score per completion; None: no scorer judged it.")
    per_scorer: dict[str, list[float | None]] = Field(description="Each scorer's values, by scorer name.")


def combine_scores(per_scorer: Sequence[Sequence[Score]], weights: Sequence[float]) -> list[Score]:
    """Weighted sum in which a missing judgement (None) does not count as 0.

    For each completion, with W the sum of all weights and P the scorers that gave a value:

        total = sum(w_i * v_i for i in P) / sum(w_i for i in P) * W

    When every scorer gives a value this is the plain weighted sum (what TRL computes). When some
    abstain, the weighted mean of the others stands in for them, so the total stays on the same
    scale and an abstention neither rewards nor punishes. The total is None when no scorer with a
    positive weight judged the completion: there is nothing to train on then, and a made-up 0
    would read as "bad".

    >>> combine_scores([[1.0, 1.0, None], [0.0, None, None]], weights=[1.0, 3.0])
    [1.0, 4.0, None]
    """
    if len(per_scorer) != len(weights):
        raise ValueError(f"{len(per_scorer)} score lists for {len(weights)} weights")
    if not per_scorer:
        return []
    total_weight = sum(weights)
    totals: list[Score] = []
    for row in zip(*per_scorer, strict=True):
        present = [(w, v) for w, v in zip(weights, row, strict=True) if v is not None]
        present_weight = sum(w for w, _ in present)
        if present_weight <= 0:
            totals.append(None)
        else:
            totals.append(sum(w * v for w, v in present) / present_weight * total_weight)
    return totals


def _check_names(scorers: Sequence[Scorer[Any]]) -> None:
    names = [scorer.name for scorer in scorers]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"scorer names must be unique; repeated: {', '.join(duplicates)}")


def _batch(scorers: Sequence[Scorer[Any]], n: int, results: list[list[Score]]) -> ScoredBatch:
    per_scorer = {
        scorer.name: coerce_scores(values, n, f"scorer {scorer.name!r}")
        for scorer, values in zip(scorers, results, strict=True)
    }
    total = (
        combine_scores(list(per_scorer.values()), [scorer.weight for scorer in scorers])
        if scorers
        else [None] * n
    )
    return ScoredBatch(total=total, per_scorer=per_scorer)


def score_all(
    scorers: Sequence[Scorer[Any]], prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
) -> ScoredBatch:
    """Run every scorer on the batch and combine their values (see `combine_scores`).

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
    """
    _check_names(scorers)
    results = [scorer(prompts, completions, **kwargs) for scorer in scorers]
    return _batch(scorers, len(completions), results)


def score_against_all(
    scorers: Sequence[Scorer[Any]],
    prompts: Sequence[Any],
    completions: Sequence[Any],
    references: Sequence[Sequence[Any]],
    **kwargs: Any,
) -> ScoredBatch:
    """Evaluation: each completion scored on its own, group scorers judging it against
    `references[i]` (samples for the same prompt), the others ignoring the references."""
    _check_names(scorers)
    results = [scorer.score_against(prompts, completions, references, **kwargs) for scorer in scorers]
    return _batch(scorers, len(completions), results)


def as_reward_funcs(
    scorers: Sequence[Scorer[Any]], *, combined: bool = False
) -> tuple[list[Callable[..., list[Score]]], list[float]]:
    """`(reward_funcs, reward_weights)` for TRL's GRPOTrainer / GRPOConfig.

    By default each scorer is its own reward function, so TRL logs each one by name. Note that TRL
    then sums with `nansum`, i.e. it counts a None as 0 when other scorers gave a value. With
    `combined=True` a single function `tao_total` (weight 1) returns `score_all(...).total` instead,
    keeping this module's None semantics at the cost of per-scorer logging in TRL.

    >>> from tao_trainer.scorers import build_scorers
    >>> funcs, weights = as_reward_funcs(build_scorers([{"type": "json", "weight": 2}]))
    >>> [f.__name__ for f in funcs], weights
    (['json'], [2.0])
    """
    _check_names(scorers)
    if not combined:
        return list(scorers), [scorer.weight for scorer in scorers]
    chosen = list(scorers)

    def tao_total(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[Score]:
        return score_all(chosen, prompts, completions, **kwargs).total

    return [tao_total], [1.0]

"""Multi-task TAO in scoring: a scorer with `tasks` judges only the candidates whose prompt record's `task` field
names one of them (`TASK_FIELD`); elsewhere it gives no value, and `combine_scores` leaves it out (neither a
gate nor an abstention there)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tao_trainer.spec.scorer_base import TASK_FIELD

from .base import Detail, Detailed, Scorer, coerce_details, coerce_scores


def task_set(scorer: Scorer[Any]) -> frozenset[str] | None:
    """The tasks a scorer judges (`tasks` in its spec); None: every prompt."""
    tasks = getattr(scorer.spec, "tasks", None)
    return frozenset(tasks) if tasks else None


def task_masks(
    scorers: Sequence[Scorer[Any]], n: int, kwargs: Mapping[str, Sequence[Any]]
) -> list[list[bool] | None]:
    """Per scorer, which of the n completions it judges, from the `task` column of `kwargs` (the prompt
    records' `task` field); None for a scorer of every task.

    >>> from tao_trainer.scorers import build_scorers
    >>> scorers = build_scorers([{"type": "json", "tasks": ["extract"]}, {"type": "regex", "pattern": "x"}])
    >>> task_masks(scorers, 3, {"task": ["extract", "sql", None]})
    [[True, False, False], None]
    """
    column = kwargs.get(TASK_FIELD)
    masks: list[list[bool] | None] = []
    for scorer in scorers:
        tasks = task_set(scorer)
        if tasks is None:
            masks.append(None)
        else:
            masks.append([column is not None and column[i] in tasks for i in range(n)])
    return masks


def judge(
    scorer: Scorer[Any],
    mask: list[bool] | None,
    run: Callable[..., Any],
    columns: Sequence[Sequence[Any]],
    kwargs: Mapping[str, Sequence[Any]],
) -> Detailed:
    """`run(*columns, **kwargs)` on the completions `mask` keeps (all when None), the values and details of
    the others None. A prompt's candidates share its task, so group scorers still see whole groups."""
    if mask is None:
        result = run(*columns, **kwargs)
        return result if isinstance(result, Detailed) else Detailed(result)
    n = len(mask)
    keep = [i for i, m in enumerate(mask) if m]
    values: list[Any] = [None] * n
    details: list[Detail] | None = None
    if keep:
        pick = lambda seq: [seq[i] for i in keep]  # noqa: E731
        # Per-completion columns are cut; anything else TRL passes (log_metric, trainer_state) goes as is.
        per_row = lambda v: isinstance(v, list | tuple) and len(v) == n  # noqa: E731
        cut = {k: pick(v) if per_row(v) else v for k, v in kwargs.items()}
        result = run(*(pick(c) for c in columns), **cut)
        result = result if isinstance(result, Detailed) else Detailed(result)
        where = f"scorer {scorer.name!r}"
        for i, value in zip(keep, coerce_scores(result.values, len(keep), where), strict=True):
            values[i] = value
        if result.details is not None:
            details = [None] * n
            for i, detail in zip(keep, coerce_details(result.details, len(keep), where), strict=True):
                details[i] = detail
    return Detailed(values, details)


__all__ = ["judge", "task_masks", "task_set"]

"""Multi-task evaluation: each task's held-out scores reported apart, and each task a guard of the gate.

Prompts carry their task in the record field `task` (`TASK_FIELD`). One TAOJob then tunes one model on every
task at once, and a challenger better on average may still be worse on one task: each task's paired gate
scores become a guard named `task:<name>` that vetoes the promotion when its lower confidence bound falls more
than `evaluation.taskTolerance` (default `guardTolerance`) below the champion's, and each labeled canary is cut
by task the same way (`task:<name>:<metric>`), unless the task is listed in `evaluation.allowTaskRegression`.
Prompts without a task are in the overall figures only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tao_trainer.promotion import Guard, mean
from tao_trainer.spec.scorer_base import TASK_FIELD

GUARD_PREFIX = "task:"


def task_of(record: Mapping[str, Any]) -> str | None:
    """A prompt record's task: its `task` field as text (None when it has none)."""
    value = (record.get("fields") or {}).get(TASK_FIELD)
    return None if value is None or value == "" else str(value)


def per_task(
    held: Sequence[Mapping[str, Any]],
    scores: Mapping[str, Sequence[float | None]],
    label_metrics: Mapping[str, Mapping[str, Sequence[float | None]]],
    tolerance: float,
    allowed: Sequence[str] = (),
    canaries: Mapping[str, Guard] | None = None,
) -> tuple[dict[str, float | None], dict[str, Guard]]:
    """Per task: `task.<name>.prompts`, each side's `task.<name>.<side>.score` and label metrics; and a guard
    of its gate scores, `task:<name>`, with each labeled canary (an `evaluation.metrics` entry with `gate: true`)
    cut to the task's prompts, `task:<name>:<metric>`, at the canary's own tolerance: a canary over all prompts
    would let one task's loss hide behind another's gain (none for an allowed task). Nothing when no prompt
    has a task.

    >>> held = [{"fields": {"task": "sql"}}, {"fields": {"task": "sql"}}, {"fields": {"task": "math"}}, {}]
    >>> metrics, guards = per_task(held, {"champion": [1, 0, 1, 1], "challenger": [1, 1, 0, 1]}, {}, 0.05)
    >>> metrics["task.sql.challenger.score"], metrics["task.math.challenger.score"], sorted(guards)
    (1.0, 0.0, ['task:math', 'task:sql'])
    >>> guards["task:math"].challenger
    [None, None, 0, None]
    """
    tasks = [task_of(rec) for rec in held]
    names = sorted({t for t in tasks if t is not None})
    metrics: dict[str, float | None] = {}
    guards: dict[str, Guard] = {}
    for name in names:
        inside = [t == name for t in tasks]

        def only(values: Sequence[Any], inside: list[bool] = inside) -> list[Any]:
            return [v if keep else None for v, keep in zip(values, inside, strict=True)]

        metrics[f"task.{name}.prompts"] = float(sum(inside))
        for side, values in scores.items():
            metrics[f"task.{name}.{side}.score"] = mean(only(values))
            for metric, by_prompt in label_metrics.get(side, {}).items():
                metrics[f"task.{name}.{side}.{metric}"] = mean(only(by_prompt))
        if name not in allowed:
            guards[GUARD_PREFIX + name] = Guard(
                only(scores["champion"]), only(scores["challenger"]), tolerance
            )
            for metric, g in (canaries or {}).items():
                guards[f"{GUARD_PREFIX}{name}:{metric}"] = Guard(
                    only(g.champion), only(g.challenger), g.tolerance, uses_labels=True
                )
    return metrics, guards


__all__ = ["GUARD_PREFIX", "per_task", "task_of"]

"""veRL's reward convention: `compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict`.

veRL's reward manager calls it once per response, with keyword arguments: the record's `data_source`, the
decoded response, the record's `reward_model.ground_truth` and its `extra_info`, plus the reward kwargs of
its config (here: the scorer's `args`). A dict result carries the value under `score`. A prompt file in veRL's
parquet layout (`data_source`, `prompt`, `reward_model: {ground_truth}`, `extra_info`) works unchanged; a flat
`ground_truth` field is read too.

>>> def compute_score(data_source, solution_str, ground_truth, extra_info=None):
...     return {"score": float(solution_str.strip() == ground_truth), "acc": True}
>>> call_compute_score(compute_score, ["4", "5"], {"reward_model": [{"ground_truth": "4"}] * 2}, {})
[1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .base import completion_text

__all__ = ["call_compute_score", "ground_truth"]


def _at(kwargs: Mapping[str, Any], key: str, index: int) -> Any:
    values = kwargs.get(key)
    return values[index] if isinstance(values, Sequence) and index < len(values) else None


def ground_truth(kwargs: Mapping[str, Any], index: int) -> Any:
    """The record's `ground_truth`, else its `reward_model.ground_truth` (veRL's layout), else None.

    >>> ground_truth({"reward_model": [{"style": "rule", "ground_truth": "7"}]}, 0), ground_truth({}, 0)
    ('7', None)
    """
    flat = _at(kwargs, "ground_truth", index)
    if flat is not None:
        return flat
    nested = _at(kwargs, "reward_model", index)
    return nested.get("ground_truth") if isinstance(nested, Mapping) else None


def call_compute_score(
    fn: Callable[..., Any], completions: Sequence[Any], kwargs: Mapping[str, Any], args: Mapping[str, Any]
) -> list[Any]:
    """One value per completion: `fn` called as veRL calls it; a dict's `score`; anything else as returned."""
    values: list[Any] = []
    for index, completion in enumerate(completions):
        extra = _at(kwargs, "extra_info", index)
        value = fn(
            data_source=_at(kwargs, "data_source", index),
            solution_str=completion_text(completion),
            ground_truth=ground_truth(kwargs, index),
            extra_info=dict(extra) if isinstance(extra, Mapping) else {},
            **args,
        )
        values.append(value.get("score") if isinstance(value, Mapping) else value)
    return values

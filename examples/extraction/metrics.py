"""Label metrics of the extraction example (reporting only: the loop never sees the `person` label).

>>> label = {"person": {"name": "Mara Novak", "age": 34, "city": "Porto"}}
>>> meaning(['JSON: {"name": "mara novak", "age": "34", "city": "Porto"}', '{"name": "Mara"}'], [label, label])
[1.0, 0.0]
>>> bare(['{"name": "Mara Novak", "age": 34, "city": "Porto"}', 'JSON: {"name": "Mara Novak"}'], [label, label])
[1.0, 0.0]
"""

from __future__ import annotations

import json
from typing import Any

from tao_trainer.scorers.json_check import parse_json


def first_object(text: str) -> dict[str, Any] | None:
    """The first {...} object of a text, read by the `json` scorer's own parser (`extract: first_object`)."""
    found, value = parse_json(text, extract="first_object")
    return value if found and isinstance(value, dict) else None


def _same(obj: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    if obj is None:
        return False
    return all(str(obj.get(k, "")).strip().lower() == str(v).strip().lower() for k, v in want.items())


def meaning(completions: list[str], labels: list[dict[str, Any]], **kwargs: Any) -> list[float]:
    """Correct in meaning: the first JSON object holds the labeled name, age and city (case and type aside)."""
    return [float(_same(first_object(c), row["person"])) for c, row in zip(completions, labels, strict=True)]


def bare(completions: list[str], labels: list[dict[str, Any]], **kwargs: Any) -> list[float]:
    """Format: the whole answer is one JSON object (no preamble, no fence), whatever its values."""
    out = []
    for c in completions:
        try:
            out.append(float(isinstance(json.loads(c.strip()), dict)))
        except ValueError:
            out.append(0.0)
    return out

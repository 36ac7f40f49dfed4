"""Reporting metrics beyond exact match: json_equal and a user python function reading label fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tao_trainer.spec import MetricSpec
from tao_trainer.stages.evaluate import metric_values

METRIC_CODE = '''
import json

def grounded_age(completions, labels, bonus=0.0, **kwargs):
    """1 when the answer's age is the labeled one; None (counted 0) where the answer is no JSON."""
    out = []
    for text, label in zip(completions, labels):
        try:
            out.append(float(json.loads(text).get("age") == label["person"]["age"]) + bonus)
        except ValueError:
            out.append(None)
    return out
'''


def test_json_equal_ignores_key_order_whitespace_and_fences_but_not_values() -> None:
    m = MetricSpec(name="fields", type="json_equal", field="person")
    answers = [
        '{"name": "Ann", "age": 31}',
        '```json\n{ "age": 31,\n  "name": "Ann" }\n```',
        'JSON: {"name": "Ann", "age": 31}',
        '{"name": "Ann", "age": "31"}',  # a string is not the number
        '{"name": "Ann", "age": 31',  # unterminated
        '{"name": "Ann", "age": 31}',
    ]
    labels = [{"age": 31, "name": "Ann"}] * 5 + [None]  # the last prompt carries no label
    assert metric_values(m, answers, labels) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    # A label stored as JSON text is parsed; `extract` picks the part of the answer to compare.
    x = MetricSpec(name="fields", type="json_equal", field="person", extract=r"ANSWER:(.*)")
    assert metric_values(x, ["ANSWER: [1, 2]", "[1, 2]"], ["[1,2]", "[1,2]"]) == [1.0, 0.0]


def test_python_metric_reads_every_label_field_of_its_prompt(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(METRIC_CODE)
    m = MetricSpec(name="age", type="python", path=str(tmp_path / "m.py"), function="grounded_age")
    rows = [{"person": {"age": 31}}, {"person": {"age": 40}}, {"person": {"age": 5}}]
    assert metric_values(m, ['{"age": 31}', '{"age": 41}', "no json"], [None] * 3, rows) == [1.0, 0.0, 0.0]
    bonus = m.model_copy(update={"args": {"bonus": 0.5}})
    assert metric_values(bonus, ['{"age": 31}'], [None], rows[:1]) == [1.5]


def test_metric_kinds_need_their_own_fields() -> None:
    with pytest.raises(ValidationError, match="needs field"):
        MetricSpec(name="a", type="json_equal")
    with pytest.raises(ValidationError, match="needs function and one of path or module"):
        MetricSpec(name="a", type="python", function="f")
    with pytest.raises(ValidationError, match="are for type python"):
        MetricSpec(name="a", field="answer", function="f")
    assert MetricSpec.model_validate({"name": "a", "type": "python", "module": "pkg.m", "function": "f"})


def test_a_relative_metric_path_resolves_beside_the_manifest(tmp_path: Path) -> None:
    from tao_operator.api import parse_taojob, resolve_local_paths

    job = parse_taojob(
        {
            "apiVersion": "tao.dev/v1alpha1",
            "kind": "TAOJob",
            "metadata": {"name": "m"},
            "spec": {
                "model": {"uri": "file:///m"},
                "prompts": {"uri": "file:///p.jsonl", "labelFields": ["person"]},
                "storage": {"uri": "file:///s"},
                "scoring": {"scorers": [{"type": "regex", "pattern": "x"}]},
                "evaluation": {
                    "metrics": [{"name": "age", "type": "python", "path": "m.py", "function": "f"}]
                },
            },
        },
        "test",
    )
    fixed = resolve_local_paths(job, tmp_path)
    assert fixed.spec.evaluation.metrics[0].path == str(tmp_path / "m.py")

"""JSON field checks and code extraction (the pure parts of the verifiers; the executing ones have
their own files: test_sql_scorer.py and test_python_tests_scorer.py)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from tao_trainer.scorers import FieldCheck, JsonScorer, build_scorer, extract_code, parse_scorer_spec
from tao_trainer.scorers.json_check import MISSING, json_equal, lookup_path

# --------------------------------------------------------------------------- extract_code


@pytest.mark.parametrize(
    ("text", "pattern", "language", "expected"),
    [
        ("SELECT 1", None, None, "SELECT 1"),
        ("\n  SELECT 1;  \n", None, None, "SELECT 1;"),
        ("Try:\n```sql\nSELECT 1\n```\nor better:\n```sql\nSELECT 2\n```\nDone.", None, None, "SELECT 2"),
        ("```SQL\nSELECT 3\n```", None, "sql", "SELECT 3"),
        ("```python\nx = 1\n```\nOutput:\n```\n1\n```", None, "python", "1"),  # untagged counts as wanted
        ("```python\nx = 1\n```\nOutput:\n```text\n1\n```", None, "python", "x = 1"),
        ("```bash\nls\n```", None, "python", "ls"),  # nothing in the language: the last block
        ("~~~python\nx = 2\n~~~", None, None, "x = 2"),
        ("````markdown\n```python\ninner\n```\n````", None, None, "```python\ninner\n```"),
        ("Answer:\n```python\ndef f():\n    return 1", None, "python", "def f():\n    return 1"),
        ("<code>a</code> <code>b</code>", r"<code>(.*?)</code>", None, "b"),
        ("ANSWER: SELECT 4", r"ANSWER: .*", None, "ANSWER: SELECT 4"),
        ("nothing", r"<code>(.*?)</code>", None, ""),
        ("<code></code>", r"<code>(.*?)</code>", None, ""),
        ("", None, None, ""),
    ],
)
def test_extract_code(text: str, pattern: str | None, language: str | None, expected: str) -> None:
    assert extract_code(text, pattern, language=language) == expected


# --------------------------------------------------------------------------- JSON field checks


def test_lookup_and_equality() -> None:
    doc = {"a": {"b": [10, {"c": None}]}, "1": "key"}
    assert lookup_path(doc, "a.b.0") == 10
    assert lookup_path(doc, "a.b.1.c") is None
    assert lookup_path(doc, "1") == "key"
    for missing in ("a.x", "a.b.2", "a.b.-1", "a.b.0.c", "x"):
        assert lookup_path(doc, missing) is MISSING
    assert json_equal({"x": [1, 2.0]}, {"x": [1.0, 2]})
    assert not json_equal(False, 0) and not json_equal(None, 0) and not json_equal("1", 1)
    assert not json_equal({"x": 1}, {"x": 1, "y": 2})


def test_field_checks_score_share_passed() -> None:
    scorer = JsonScorer(
        extract="first_object",
        checks=[
            {"path": "answer", "type": "integer"},
            {"path": "unit", "pattern": r"[a-z]+"},
            {"path": "items.0.name", "equals": "pen"},
            {"path": "total", "equalsField": "gold_total"},
        ],
    )
    completions = [
        '{"answer": 4, "unit": "kg", "items": [{"name": "pen"}], "total": 2.0}',
        'Result: ```json\n{"answer": 4.0, "unit": "KG", "items": [], "total": 3}\n```',
        '{"answer": true, "unit": 5, "items": [{"name": "pen"}], "total": 2}',
        "not json",
    ]
    detailed = scorer.detailed(["q"] * 4, completions, gold_total=[2, 2, None, 2])
    assert detailed.values == [1.0, 0.25, pytest.approx(1 / 3), 0.0]
    assert detailed.details is not None
    assert detailed.details[0] == {"valid": True, "passed": 4, "total": 4}
    assert detailed.details[1]["failed"] == [
        "unit: no match",
        "items.0.name: missing",
        "total: not equal to gold_total",
    ]
    # The record has no gold_total for the third completion: that check is skipped, not failed.
    assert detailed.details[2] == {
        "valid": True,
        "passed": 1,
        "total": 3,
        "failed": ["answer: not of type integer", "unit: not a string"],
    }
    assert detailed.details[3] == {"valid": False, "passed": 0, "total": 4}
    assert scorer(["q"] * 4, completions, gold_total=[2, 2, None, 2]) == detailed.values


def test_checks_after_schema_and_types() -> None:
    scorer = JsonScorer(
        schema={"type": "object", "required": ["ok"]},
        checks=[
            {"path": "ok", "type": "boolean"},
            {"path": "n", "type": "number"},
            {"path": "z", "type": "null"},
        ],
    )
    values = scorer(["q"] * 3, ['{"ok": true, "n": 1.5, "z": null}', '{"ok": 1, "n": "1"}', '{"n": 1}'])
    assert values == [1.0, 0.0, 0.0]  # the last one fails the schema: 0 whatever the checks say


def test_no_checks_keeps_the_old_behaviour() -> None:
    scorer = JsonScorer()
    assert scorer.detailed(["q", "q"], ["{}", "{"]) == ([1.0, 0.0], None)


def test_all_checks_skipped_falls_back_to_validity() -> None:
    scorer = JsonScorer(checks=[{"path": "a", "equalsField": "gold"}])
    assert scorer(["q", "q"], ['{"a": 1}', "{"]) == [1.0, 0.0]  # no `gold` column at all
    with pytest.raises(ValueError, match="gold"):
        scorer(["q", "q"], ['{"a": 1}', "{"], gold=[1])


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ({"path": "a"}, "exactly one of"),
        ({"path": "a", "pattern": "x", "type": "string"}, "got pattern, type"),
        ({"path": "a", "pattern": "("}, "invalid regular expression"),
        ({"path": "a..b", "type": "string"}, "path"),
        ({"path": "a", "type": "float"}, "type"),
        ({"path": "a", "equals": 1, "extra": True}, "extra"),
    ],
)
def test_field_check_validation(check: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_scorer_spec({"type": "json", "checks": [check]})


def test_checks_survive_serialisation() -> None:
    # Stage configs carry specs as JSON with every field written out, nulls included.
    spec = parse_scorer_spec(
        {"type": "json", "checks": [{"path": "a", "equalsField": "gold"}, {"path": "b", "equals": [1]}]}
    )
    again = parse_scorer_spec(json.loads(spec.model_dump_json(by_alias=True)))
    assert again == spec
    assert [check.kind for check in again.checks] == ["equals_field", "equals"]
    assert isinstance(again.checks[0], FieldCheck)
    assert build_scorer(again)(["q"], ['{"a": "x", "b": [1.0]}'], gold=["x"]) == [1.0]

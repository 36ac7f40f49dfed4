"""JSON validity, optionally against a JSON Schema: the contract of structured-output tasks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jsonschema.validators import validator_for

from tao_trainer.safe_regex import RegexTimeout, user_regex
from tao_trainer.spec import FieldCheck, JsonSpec

from .base import Detail, Detailed, Score, Scorer, completion_text

__all__ = ["MISSING", "JsonScorer", "json_equal", "lookup_path", "parse_json"]

MISSING: Any = object()
"""What `lookup_path` returns for a path that leads nowhere (None is a JSON value)."""


def _reject_constant(token: str) -> Any:
    # Python's json accepts NaN and Infinity; JSON does not, and a consumer downstream will choke.
    raise ValueError(f"{token} is not JSON")


_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(text: str, extract: str = "whole") -> tuple[bool, Any]:
    """Parse the JSON in `text`; returns `(ok, value)` (a pair, since `null` is valid JSON).

    `whole`: the trimmed text must be one JSON value. `first_object`: the first `{` from which a
    JSON object parses, wherever it is, so that prose or a ```json fence around it is tolerated.

    >>> parse_json('{"a": 1}')
    (True, {'a': 1})
    >>> parse_json('Here: ```json\\n{"a": [1, 2]}\\n```', extract="first_object")
    (True, {'a': [1, 2]})
    >>> parse_json("{not json}", extract="first_object")
    (False, None)
    """
    if extract == "whole":
        try:
            return True, _STRICT_DECODER.decode(text.strip())
        except ValueError:
            return False, None
    start = text.find("{")
    while start != -1:
        try:
            value, _ = _STRICT_DECODER.raw_decode(text, start)
        except ValueError:
            # A brace that opens no object (prose, a template placeholder): try the next one.
            start = text.find("{", start + 1)
            continue
        return True, value
    return False, None


def lookup_path(value: Any, path: str) -> Any:
    """The value at a dotted path (numbers index lists); MISSING when there is none.

    >>> lookup_path({"items": [{"name": "pen"}]}, "items.0.name")
    'pen'
    >>> lookup_path({"items": []}, "items.0.name") is MISSING
    True
    >>> lookup_path({"0": "key, not index"}, "0")
    'key, not index'
    """
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value (1 == 1.0), booleans never equal to numbers.

    >>> json_equal({"n": 1, "xs": [True]}, {"n": 1.0, "xs": [True]})
    True
    >>> json_equal(True, 1), json_equal([1, 2], [2, 1])
    (False, False)
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[key], b[key]) for key in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _json_type_ok(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "array":
        return isinstance(value, list)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return kind == "number" or isinstance(value, int) or value.is_integer()


class JsonScorer(Scorer[JsonSpec]):
    """1.0 if the completion holds valid JSON (satisfying `json_schema` when given), else 0.0.

    With `checks`, the score of valid JSON is the share of field checks it passes (checks whose
    `equalsField` the record lacks are skipped); invalid JSON still gets 0.0. Details then list,
    per completion, the failed checks (`"path: reason"`).

    Example:

    ```python
    >>> scorer = JsonScorer(schema={"type": "object", "required": ["answer"]}, extract="first_object")
    >>> scorer(["q"] * 3, ['{"answer": 4}', 'Sure! ```json\\n{"answer": 4}\\n```', '{"result": 4}'])
    [1.0, 1.0, 0.0]
    >>> JsonScorer()(["q", "q"], ["[1, 2]", "[1, 2"])
    [1.0, 0.0]

    ```

    Field checks:

    ```python
    >>> scorer = JsonScorer(checks=[{"path": "city", "equalsField": "gold_city"},
    ...                             {"path": "zip", "pattern": r"\\d{5}"}, {"path": "tags", "type": "array"}])
    >>> detailed = scorer.detailed(["q"] * 3, ['{"city": "Paris", "zip": "75001", "tags": []}',
    ...                                        '{"city": "Lyon", "zip": "7500"}', "oops"],
    ...                            gold_city=["Paris", "Paris", "Paris"])
    >>> [round(v, 3) for v in detailed.values]
    [1.0, 0.0, 0.0]
    >>> detailed.details[1]["failed"]
    ['city: not equal to gold_city', 'zip: no match', 'tags: missing']

    ```
    """

    spec_model = JsonSpec
    scorer_type = "json"

    def __init__(self, spec: JsonSpec | None = None, /, **fields: Any) -> None:
        super().__init__(spec, **fields)
        schema = self.spec.json_schema
        # The schema was checked when the spec was validated; build the validator once, not per call.
        self._validator = validator_for(schema)(schema) if schema is not None else None

        self._patterns = {
            index: user_regex(check.pattern)
            for index, check in enumerate(self.spec.checks)
            if check.pattern is not None
        }

    def _parse(self, completion: Any) -> tuple[bool, Any]:
        ok, value = parse_json(completion_text(completion), self.spec.extract)
        if ok and self._validator is not None:
            ok = self._validator.is_valid(value)
        return ok, value

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        if not self.spec.checks:  # validity alone: nothing to explain
            return Detailed([1.0 if self._parse(completion)[0] else 0.0 for completion in completions])
        for check in self.spec.checks:
            column = kwargs.get(check.equals_field) if check.equals_field is not None else None
            if column is not None and len(column) != len(completions):
                raise ValueError(
                    f"scorer {self.name!r}: got {len(column)} values of {check.equals_field!r} "
                    f"for {len(completions)} completions"
                )
        values: list[Score] = []
        details: list[Detail] = []
        for index, completion in enumerate(completions):
            ok, value = self._parse(completion)
            if not ok:
                values.append(0.0)
                details.append({"valid": False, "passed": 0, "total": len(self.spec.checks)})
                continue
            failed: list[str] = []
            applied = 0
            try:
                reasons = [
                    self._failure(number, check, value, index, kwargs)
                    for number, check in enumerate(self.spec.checks)
                ]
            except RegexTimeout as exc:  # no judgement rather than a guess
                self.count("regexTimeouts")
                values.append(None)
                details.append({"valid": True, "error": str(exc)})
                continue
            for check, reason in zip(self.spec.checks, reasons, strict=True):
                if reason == "skipped":
                    continue
                applied += 1
                if reason is not None:
                    failed.append(f"{check.path}: {reason}")
            # Every check skipped (the record lacks all the fields): validity alone decides.
            values.append((applied - len(failed)) / applied if applied else 1.0)
            detail: dict[str, Any] = {"valid": True, "passed": applied - len(failed), "total": applied}
            if failed:
                detail["failed"] = failed
            details.append(detail)
        return Detailed(values, details)

    def _failure(
        self, number: int, check: FieldCheck, document: Any, index: int, kwargs: dict[str, Any]
    ) -> str | None:
        """Why `check` fails on `document` (None if it passes, "skipped" if it does not apply)."""
        expected: Any = MISSING
        if check.equals_field is not None:
            column = kwargs.get(check.equals_field)
            expected = column[index] if column is not None else None
            if expected is None:
                return "skipped"
        value = lookup_path(document, check.path)
        if value is MISSING:
            return "missing"
        if check.pattern is not None:
            if not isinstance(value, str):
                return "not a string"
            return None if self._patterns[number].fullmatch(value) else "no match"
        if check.type is not None:
            return None if _json_type_ok(value, check.type) else f"not of type {check.type}"
        if check.equals_field is not None:
            return None if json_equal(value, expected) else f"not equal to {check.equals_field}"
        return None if json_equal(value, check.equals) else "not equal"

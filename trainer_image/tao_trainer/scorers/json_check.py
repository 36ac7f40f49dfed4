"""JSON validity, optionally against a JSON Schema: the contract of structured-output tasks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from jsonschema.validators import validator_for

from .base import Score, Scorer, completion_text
from .specs import JsonSpec

__all__ = ["JsonScorer", "parse_json"]


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


class JsonScorer(Scorer[JsonSpec]):
    """1.0 if the completion holds valid JSON (satisfying `json_schema` when given), else 0.0.

    Example:

    ```python
    >>> scorer = JsonScorer(schema={"type": "object", "required": ["answer"]}, extract="first_object")
    >>> scorer(["q"] * 3, ['{"answer": 4}', 'Sure! ```json\\n{"answer": 4}\\n```', '{"result": 4}'])
    [1.0, 1.0, 0.0]
    >>> JsonScorer()(["q", "q"], ["[1, 2]", "[1, 2"])
    [1.0, 0.0]

    ```
    """

    spec_model = JsonSpec
    scorer_type = "json"

    def __init__(self, spec: JsonSpec | None = None, /, **fields: Any) -> None:
        super().__init__(spec, **fields)
        schema = self.spec.json_schema
        # The schema was checked when the spec was validated; build the validator once, not per call.
        self._validator = validator_for(schema)(schema) if schema is not None else None

    def _score(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[Score]:
        scores: list[Score] = []
        for completion in completions:
            ok, value = parse_json(completion_text(completion), self.spec.extract)
            if ok and self._validator is not None:
                ok = self._validator.is_valid(value)
            scores.append(1.0 if ok else 0.0)
        return scores

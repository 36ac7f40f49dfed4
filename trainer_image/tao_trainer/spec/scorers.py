"""Scorer specs: the `scorers:` list of a TAOJob, as pydantic models.

These models are part of the TAOJob CRD, so they follow its conventions: camelCase keys
(`minAgreement`), snake_case attributes in Python, unknown keys rejected, a description on every
field. The list is a discriminated union on `type`:

- a built-in family (`majority`, `regex`, `json`, `python`), or
- a dotted path to a TRL-style reward function (`package.module:function` or
  `package.module.function`), which lets users reuse reward code they already have.

Validation here is pure: regexes compile and JSON Schemas are checked, but no user code is imported
(the operator validates specs without the user's code at hand; loading happens in the score stage).

>>> spec = parse_scorer_spec({"type": "majority", "extract": r"answer: (\\d+)", "minAgreement": 0.6})
>>> spec.name, spec.min_agreement
('majority', 0.6)
>>> parse_scorer_spec({"type": "my_rewards.math:accuracy"}).name
'accuracy'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Union

from pydantic import AfterValidator, ConfigDict, Discriminator, Tag, TypeAdapter

from tao_trainer.spec.scorer_base import (
    ALLOWED_TYPES_TEXT,
    BUILTIN_SCORER_TYPES,
    SCORER_UNION_TAGS,
    ScorerSpecBase,
)
from tao_trainer.spec.scorer_families import (
    CustomSpec,
    FieldCheck,
    JsonSpec,
    JudgeSpec,
    MajoritySpec,
    PythonSpec,
    PythonTestsSpec,
    RegexSpec,
    RewardModelSpec,
    SqlSpec,
)

__all__ = [
    "BUILTIN_SCORER_TYPES",
    "SCORER_UNION_TAGS",
    "AnyScorerSpec",
    "CustomSpec",
    "FieldCheck",
    "JsonSpec",
    "JudgeSpec",
    "MajoritySpec",
    "PythonSpec",
    "PythonTestsSpec",
    "RegexSpec",
    "RewardModelSpec",
    "ScorerSpec",
    "ScorerSpecBase",
    "ScorerSpecList",
    "SqlSpec",
    "parse_scorer_spec",
    "validate_scorer_list",
]


def _scorer_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, Mapping) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None  # reported through the discriminator's custom error below
    if kind in BUILTIN_SCORER_TYPES:
        return kind
    # Dotted paths are user functions; any other name goes to CustomSpec too, whose validator
    # rejects it with a message that quotes the value and lists the allowed types.
    return "custom"


ScorerSpec = Annotated[
    Union[  # noqa: UP007 - Annotated/Tag union reads better in this form
        Annotated[MajoritySpec, Tag("majority")],
        Annotated[RegexSpec, Tag("regex")],
        Annotated[JsonSpec, Tag("json")],
        Annotated[PythonSpec, Tag("python")],
        Annotated[JudgeSpec, Tag("judge")],
        Annotated[RewardModelSpec, Tag("reward_model")],
        Annotated[SqlSpec, Tag("sql")],
        Annotated[PythonTestsSpec, Tag("python_tests")],
        Annotated[CustomSpec, Tag("custom")],
    ],
    Discriminator(
        _scorer_tag,
        custom_error_type="missing_scorer_type",
        custom_error_message=f"scorer needs a string 'type': {ALLOWED_TYPES_TEXT}",
    ),
]
"""One entry of `spec.scorers` (use as a pydantic field type)."""

AnyScorerSpec = (
    MajoritySpec
    | RegexSpec
    | JsonSpec
    | PythonSpec
    | JudgeSpec
    | RewardModelSpec
    | SqlSpec
    | PythonTestsSpec
    | CustomSpec
)
"""The same models as a plain union, for type hints on already validated specs."""


def _check_list(specs: list[Any]) -> list[Any]:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ValueError(f"scorer name {spec.name!r} is used twice; give each scorer a unique 'name'")
        seen.add(spec.name)
    if specs and not any(spec.weight > 0 for spec in specs):
        raise ValueError("at least one scorer needs a weight above 0")
    return specs


def judges_groups(spec: AnyScorerSpec) -> bool:
    """Whether a scorer's value for a candidate depends on the other candidates of its prompt (a majority vote, a
    relative judge): such a scorer needs a group of samples to judge against.

    >>> vote = parse_scorer_spec({"type": "majority", "extract": "=(.*)"})
    >>> judges_groups(vote), judges_groups(parse_scorer_spec({"type": "json"}))
    (True, False)
    """
    return isinstance(spec, MajoritySpec) or (isinstance(spec, JudgeSpec) and spec.mode == "relative")


ScorerSpecList = Annotated[list[ScorerSpec], AfterValidator(_check_list)]
"""A whole `scorers:` list: unique names, at least one positive weight. Use it as a field type."""

# Titled so that validation errors read "... for scorers", not the internal schema's name.
_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(ScorerSpec, config=ConfigDict(title="scorer"))
_LIST_ADAPTER: TypeAdapter[list[Any]] = TypeAdapter(ScorerSpecList, config=ConfigDict(title="scorers"))


def parse_scorer_spec(data: Any) -> AnyScorerSpec:
    """Validate one scorer spec (a mapping or an already built spec model).

    Raises pydantic.ValidationError.
    """
    return _SPEC_ADAPTER.validate_python(data)


def validate_scorer_list(specs: Iterable[Any]) -> list[AnyScorerSpec]:
    """Validate a list of scorer specs: each entry, unique names, at least one positive weight.

    >>> [s.name for s in validate_scorer_list([{"type": "regex", "pattern": "a"}, {"type": "json"}])]
    ['regex', 'json']
    >>> try:
    ...     validate_scorer_list([{"type": "regex", "pattern": "a"}, {"type": "regex", "pattern": "b"}])
    ... except ValueError as exc:  # pydantic.ValidationError is a ValueError
    ...     print("'regex' is used twice" in str(exc))
    True
    """
    return _LIST_ADAPTER.validate_python(list(specs))

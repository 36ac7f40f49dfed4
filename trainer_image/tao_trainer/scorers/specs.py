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

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Union

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "BUILTIN_SCORER_TYPES",
    "SCORER_UNION_TAGS",
    "AnyScorerSpec",
    "CustomSpec",
    "JsonSpec",
    "MajoritySpec",
    "PythonSpec",
    "RegexSpec",
    "ScorerSpec",
    "ScorerSpecList",
    "check_regex",
    "parse_scorer_spec",
    "validate_scorer_list",
]

# Names double as metric keys, log labels and JSONL columns, so keep them boring.
_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE_PATTERN = rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*$"
# `pkg.mod:fn` or `pkg.mod.fn`; a bare `mod:fn` is allowed too (a top-level module).
_DOTTED_PATH_PATTERN = rf"^{_IDENTIFIER}(\.{_IDENTIFIER})*([:.]{_IDENTIFIER})$"

BUILTIN_SCORER_TYPES: tuple[str, ...] = ("majority", "regex", "json", "python")
SCORER_UNION_TAGS: tuple[str, ...] = (*BUILTIN_SCORER_TYPES, "custom")
"""Tags pydantic puts into error locations (`scorers.0.majority.extract`); drop them when showing a path."""
_ALLOWED_TYPES_TEXT = (
    ", ".join(BUILTIN_SCORER_TYPES)
    + ", or a dotted path to a TRL-style reward function ('package.module:function')"
)


def check_regex(pattern: str, field: str) -> str:
    """The pattern, if it compiles; else a ValueError naming the field."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{field}: invalid regular expression {pattern!r}: {exc}") from None
    return pattern


class _SpecBase(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=_NAME_PATTERN,
        description=(
            "Name of this scorer in scores, metrics and logs; unique within the list. "
            "Defaults to the type (for python and dotted-path scorers: the function name)."
        ),
    )
    weight: float = Field(
        default=1.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Weight of this scorer in the combined score. 0 records the scorer without letting it "
            "steer training. Negative weights are not allowed: return negative values instead."
        ),
    )

    def _default_name(self) -> str:
        return str(getattr(self, "type"))  # noqa: B009 - every subclass declares `type`

    @model_validator(mode="after")
    def _fill_name(self) -> _SpecBase:
        # Resolved once here so that every consumer (combine, logs, status) sees the same name.
        if self.name is None:
            self.name = self._default_name()
        return self


class MajoritySpec(_SpecBase):
    """Label-free self-consistency (TTRL-style): candidates agreeing with the majority answer of
    their prompt's group score 1, others 0; without a confident majority all score 0."""

    type: Literal["majority"] = Field(description="Scorer family: majority vote over extracted answers.")
    extract: str = Field(
        description=(
            "Regular expression that finds the answer in a completion. The answer is group 1 if the "
            "expression has a group, else the whole match; the last match in the completion is used."
        ),
    )
    min_agreement: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description=(
            "Smallest share of a group's candidates (those without an answer included) that must "
            "agree for the majority to count; below it the whole group scores 0."
        ),
    )
    normalize: bool = Field(
        default=True,
        description=(
            "Compare answers after trimming, collapsing whitespace, lowercasing and dropping one "
            "trailing period."
        ),
    )

    @field_validator("extract")
    @classmethod
    def _check_extract(cls, value: str) -> str:
        return check_regex(value, "extract")


class RegexSpec(_SpecBase):
    """Format check: 1 if the completion matches the pattern, else 0."""

    type: Literal["regex"] = Field(description="Scorer family: regular-expression match.")
    pattern: str = Field(description="Python regular expression (use (?s) to let . match newlines).")
    mode: Literal["search", "fullmatch"] = Field(
        default="fullmatch",
        description=(
            "fullmatch: the whole completion, trimmed of surrounding whitespace, must match; "
            "search: a match anywhere is enough."
        ),
    )

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        return check_regex(value, "pattern")


class JsonSpec(_SpecBase):
    """Structured-output check: 1 if the completion holds valid JSON (matching the schema if one
    is given), else 0."""

    type: Literal["json"] = Field(description="Scorer family: JSON validity, optionally against a schema.")
    # Not called `schema`: that name is taken by a (deprecated) BaseModel method.
    json_schema: dict[str, Any] | None = Field(
        default=None,
        alias="schema",
        description="JSON Schema the parsed value must satisfy; checked when the spec is validated.",
    )
    extract: Literal["whole", "first_object"] = Field(
        default="whole",
        description=(
            "whole: the completion, trimmed, is the JSON text; first_object: the first {...} object "
            "that parses, wherever it is (e.g. inside a ```json fence)."
        ),
    )

    @field_validator("json_schema")
    @classmethod
    def _check_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                validator_for(value).check_schema(value)
            except SchemaError as exc:
                raise ValueError(f"schema: not a valid JSON Schema: {exc.message}") from None
        return value


class PythonSpec(_SpecBase):
    """User code: a TRL-style reward function `fn(prompts, completions, **kwargs) -> list[float | None]`
    from a .py file (`path`) or an importable module (`module`)."""

    type: Literal["python"] = Field(description="Scorer family: a user Python function.")
    path: str | None = Field(
        default=None,
        min_length=1,
        description="Path of a .py file holding the function (relative paths resolve in the score stage).",
    )
    module: str | None = Field(
        default=None,
        pattern=_MODULE_PATTERN,
        description="Dotted name of an importable module holding the function.",
    )
    function: str = Field(
        pattern=rf"^{_IDENTIFIER}$",
        description="Name of the function in the file or module.",
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments passed to the function on every call (they win over data columns).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PythonSpec:
        if (self.path is None) == (self.module is None):
            raise ValueError("python scorer: set exactly one of 'path' and 'module'")
        return self

    def _default_name(self) -> str:
        return self.function


class CustomSpec(_SpecBase):
    """A TRL-style reward function named by its import path in `type`, e.g. `my_pkg.rewards:accuracy`."""

    type: str = Field(
        pattern=_DOTTED_PATH_PATTERN,
        description=(
            "Import path of a TRL-style reward function: 'package.module:function' or "
            "'package.module.function'."
        ),
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments passed to the function on every call (they win over data columns).",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_or_dotted(cls, data: Any) -> Any:
        # Unknown names without a dot land here (see _scorer_tag) so the error can quote the value.
        # Checked before the fields, so a typo in `type` is the one error reported, not followed by
        # "extra inputs" complaints about the fields of the family the user meant.
        kind = data.get("type") if isinstance(data, Mapping) else None
        if isinstance(kind, str) and not any(sep in kind for sep in ".:"):
            raise ValueError(f"unknown scorer type {kind!r}; allowed: {_ALLOWED_TYPES_TEXT}")
        return data

    def _default_name(self) -> str:
        return re.split(r"[:.]", self.type)[-1]

    @property
    def target(self) -> tuple[str, str]:
        """(module, function) named by `type`."""
        module, sep, function = self.type.partition(":")
        if not sep:
            module, _, function = self.type.rpartition(".")
        return module, function


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
        Annotated[CustomSpec, Tag("custom")],
    ],
    Discriminator(
        _scorer_tag,
        custom_error_type="missing_scorer_type",
        custom_error_message=f"scorer needs a string 'type': {_ALLOWED_TYPES_TEXT}",
    ),
]
"""One entry of `spec.scorers` (use as a pydantic field type)."""

AnyScorerSpec = MajoritySpec | RegexSpec | JsonSpec | PythonSpec | CustomSpec
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

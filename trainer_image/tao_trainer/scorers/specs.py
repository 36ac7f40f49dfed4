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
    "EndpointSpec",
    "FieldCheck",
    "JsonSpec",
    "JudgeSpec",
    "MajoritySpec",
    "PythonSpec",
    "PythonTestsSpec",
    "RegexSpec",
    "RewardModelSpec",
    "SecretKeySelector",
    "SqlSpec",
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

BUILTIN_SCORER_TYPES: tuple[str, ...] = (
    "majority",
    "regex",
    "json",
    "python",
    "judge",
    "reward_model",
    "sql",
    "python_tests",
)
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

    require: bool = Field(
        default=False,
        description=(
            "Gate: a candidate whose value from this scorer is below `passAt` gets a combined score of 0, "
            "whatever the other scorers say (no value at all gives no combined score). Use it for a "
            "verifier that must pass before a judge's ranking counts."
        ),
    )
    pass_at: float = Field(
        default=1.0,
        allow_inf_nan=False,
        description="Smallest value (after normalization) that passes a `require` gate.",
    )
    normalization: Literal["none", "range", "sigmoid", "group_minmax", "group_zscore"] = Field(
        default="none",
        description=(
            "How this scorer's values are mapped before they are combined. none: as is; range: "
            "(v - lo) / (hi - lo) with `valueRange`, clipped to 0..1; sigmoid: 1 / (1 + e^-v) (reward "
            "model logits); group_minmax: 0..1 within the candidates of one prompt (0.5 when all are "
            "equal); group_zscore: (v - mean) / std within the candidates of one prompt (0 when all are "
            "equal). The scores file keeps both the raw and the normalized values."
        ),
    )
    value_range: list[float] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[lo, hi] of the raw values; required by normalization: range.",
    )

    def _default_name(self) -> str:
        return str(getattr(self, "type"))  # noqa: B009 - every subclass declares `type`

    @model_validator(mode="after")
    def _fill_name(self) -> _SpecBase:
        # Resolved once here so that every consumer (combine, logs, status) sees the same name.
        if self.name is None:
            self.name = self._default_name()
        if self.normalization == "range":
            if self.value_range is None:
                raise ValueError("normalization: range needs valueRange: [lo, hi]")
            if not self.value_range[0] < self.value_range[1]:
                raise ValueError(f"valueRange: lo must be below hi, got {self.value_range}")
        elif self.value_range is not None:
            raise ValueError("valueRange is only used with normalization: range; set both or neither")
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


_FIELD_PATH_PATTERN = r"^[^.]+(\.[^.]+)*$"
_CHECK_KINDS = ("pattern", "equals", "equals_field", "type")


class FieldCheck(BaseModel):
    """One check of a field of the parsed JSON: exactly one of `pattern`, `equals`, `equalsField`, `type`
    (a null counts as not set, so a spec survives serialization; to require null, use `type: null`).

    >>> FieldCheck(path="items.0.name", pattern=r"[A-Z].*").kind
    'pattern'
    >>> FieldCheck.model_validate({"path": "answer", "equals": 42, "pattern": None}).kind
    'equals'
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    path: str = Field(
        min_length=1,
        max_length=512,
        pattern=_FIELD_PATH_PATTERN,
        description=(
            "Dotted path of the field; numbers index lists (items.0.name). An object key that is a "
            "number is found too."
        ),
    )
    pattern: str | None = Field(
        default=None, description="Python regular expression the whole string value must match (fullmatch)."
    )
    equals: Any = Field(
        default=None,
        description="JSON value the field must equal (1 equals 1.0; true does not equal 1); for null use type: null.",
    )
    equals_field: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Prompt-record field whose value the field must equal. A record without it skips the check "
            "(it counts neither way)."
        ),
    )
    type: Literal["string", "number", "integer", "boolean", "object", "array", "null"] | None = Field(
        default=None, description="JSON type the field must have (integer: a number with no fraction)."
    )

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        return None if value is None else check_regex(value, "pattern")

    @model_validator(mode="after")
    def _exactly_one(self) -> FieldCheck:
        given = [name for name in _CHECK_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"check of {self.path!r}: set exactly one of pattern, equals, equalsField, type (got "
                f"{', '.join(to_camel(name) for name in given) or 'none'})"
            )
        return self

    @property
    def kind(self) -> str:
        """Which of pattern, equals, equals_field, type this check uses."""
        return next(name for name in _CHECK_KINDS if getattr(self, name) is not None)


class JsonSpec(_SpecBase):
    """Structured-output check: 1 if the completion holds valid JSON (matching the schema if one
    is given), else 0. With `checks`: the share of field checks passed, 0 for invalid JSON."""

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
    checks: list[FieldCheck] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Checks of single fields; the score becomes the share that pass (among checks that apply), "
            "0 when the JSON is invalid or fails the schema."
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


class SecretKeySelector(BaseModel):
    """A key of a Kubernetes Secret in the TAOJob's namespace (as in a pod's `secretKeyRef`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key in the Secret.")


class EndpointSpec(BaseModel):
    """An OpenAI-compatible HTTP endpoint: in-cluster vLLM, `tao serve`, or an external API."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    url: str = Field(
        pattern=r"^https?://[^\s]+$",
        description="Base URL including the API prefix, e.g. http://judge.ml.svc:8000/v1.",
    )
    model: str = Field(min_length=1, description="Model name sent in each request.")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description=(
            "Environment variable that holds the API key (sent as a Bearer token). The key itself "
            "never appears in specs, status, logs or artifacts."
        ),
    )
    api_key_secret_ref: SecretKeySelector | None = Field(
        default=None,
        description=(
            "On a cluster: the Secret key the operator exposes to stage pods as `apiKeyEnv` "
            "(which is then required)."
        ),
    )
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600, description="Time limit of one HTTP request.")
    max_retries: int = Field(
        default=3,
        ge=0,
        le=20,
        description="Retries of a failed request (connection errors, 429, 5xx), with backoff.",
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="Requests in flight at once.")

    @model_validator(mode="after")
    def _secret_needs_env(self) -> EndpointSpec:
        if self.api_key_secret_ref is not None and self.api_key_env is None:
            raise ValueError("apiKeySecretRef needs apiKeyEnv: the variable the key is exposed as")
        return self


class JudgeSpec(_SpecBase):
    """An LLM judge over an OpenAI-compatible endpoint. pointwise: each candidate is rated on the
    rubric's scale on its own, normalized to 0..1; relative: all candidates of a prompt are judged
    together (shuffled) and scored 0..1 relative to each other, as RULER does."""

    type: Literal["judge"] = Field(description="Scorer family: an LLM judge.")
    endpoint: EndpointSpec = Field(description="Where the judge model is served.")
    mode: Literal["pointwise", "relative"] = Field(
        default="pointwise", description="How candidates are judged."
    )
    rubric: str = Field(min_length=1, description="What makes a response good, in plain words.")
    scale: list[int] = Field(
        default_factory=lambda: [1, 10],
        min_length=2,
        max_length=2,
        description="pointwise: [lowest, highest] score the judge may give; mapped to 0..1.",
    )
    include_fields: list[str] = Field(
        default_factory=list,
        description="Prompt-record fields shown to the judge beside the prompt (e.g. a source document).",
    )
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature of the judge.")
    max_tokens: int = Field(default=512, ge=1, le=32768, description="Most tokens of one judgement.")
    cache: bool = Field(
        default=True, description="Reuse judgements of identical (prompt, candidate, rubric) within a stage."
    )

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, value: list[int]) -> list[int]:
        if not value[0] < value[1]:
            raise ValueError(f"scale: lowest must be below highest, got {value}")
        return value


class RewardModelSpec(_SpecBase):
    """A sequence-classification reward model (one logit per text), from storage or a local path."""

    type: Literal["reward_model"] = Field(description="Scorer family: a reward model.")
    model: str = Field(
        min_length=1,
        description="Model location: s3://, file://, a local path, or hf://org/name on clusters with hub access.",
    )
    batch_size: int = Field(default=8, ge=1, le=4096, description="Texts per forward pass.")
    max_length: int = Field(
        default=2048, ge=8, description="Longest input in tokens; longer inputs are truncated."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: a GPU when present.")


_CODE_FENCE_HELP = (
    "Regular expression that finds the code in a completion (group 1 if it has a group, else the "
    "whole match; the last match is used). Default: the last fenced code block, else the whole completion."
)


class SqlSpec(_SpecBase):
    """Executable SQL: run the candidate's query against a SQLite database, read-only, with a time limit.
    1 when it returns rows (or, when the record carries a reference query, the same result set), 0.5
    when it runs but returns no rows (or a different result set: 0.1), 0 when it fails."""

    type: Literal["sql"] = Field(description="Scorer family: execute SQL against a SQLite database.")
    database: str = Field(min_length=1, description="The SQLite file: s3://, file:// or a local path.")
    extract: str | None = Field(default=None, description=_CODE_FENCE_HELP)
    reference_field: str = Field(
        default="reference_sql",
        description="Prompt-record field with a reference query; when present, result sets are compared.",
    )
    order_matters: bool = Field(
        default=False, description="Compare result rows in order (else as multisets)."
    )
    timeout_seconds: float = Field(default=5.0, gt=0, le=600, description="Time limit of one query.")
    max_rows: int = Field(default=10000, ge=1, description="Rows fetched at most; more count as a mismatch.")

    @field_validator("extract")
    @classmethod
    def _check_extract(cls, value: str | None) -> str | None:
        return None if value is None else check_regex(value, "extract")


class PythonTestsSpec(_SpecBase):
    """Executable Python: run the candidate's code with tests in a subprocess (time, memory and file
    limits, no network); the score is the share of tests passed."""

    type: Literal["python_tests"] = Field(description="Scorer family: run candidate code against tests.")
    tests_field: str = Field(
        default="tests",
        description=(
            "Prompt-record field with the test code: `test_*` functions (each one test) or plain asserts "
            "(one test)."
        ),
    )
    extract: str | None = Field(default=None, description=_CODE_FENCE_HELP)
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=600, description="Wall-clock limit of one candidate's run."
    )
    memory_mb: int = Field(default=512, ge=32, le=65536, description="Address-space limit of the subprocess.")
    concurrency: int = Field(default=2, ge=1, le=256, description="Subprocesses at once.")

    @field_validator("extract")
    @classmethod
    def _check_extract(cls, value: str | None) -> str | None:
        return None if value is None else check_regex(value, "extract")


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
        Annotated[JudgeSpec, Tag("judge")],
        Annotated[RewardModelSpec, Tag("reward_model")],
        Annotated[SqlSpec, Tag("sql")],
        Annotated[PythonTestsSpec, Tag("python_tests")],
        Annotated[CustomSpec, Tag("custom")],
    ],
    Discriminator(
        _scorer_tag,
        custom_error_type="missing_scorer_type",
        custom_error_message=f"scorer needs a string 'type': {_ALLOWED_TYPES_TEXT}",
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

"""One spec per scorer family (the `type:` of an entry of `scorers:`), and `CustomSpec` for dotted paths."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tao_trainer.spec.base import CamelModel, check_regex
from tao_trainer.spec.endpoint import EndpointSpec
from tao_trainer.spec.scorer_base import (
    ALLOWED_TYPES_TEXT,
    DOTTED_PATH_PATTERN,
    IDENTIFIER,
    MODULE_PATTERN,
    ScorerSpecBase,
)


class MajoritySpec(ScorerSpecBase):
    """Label-free self-consistency (TTRL-style): candidates agreeing with the majority answer of
    their prompt's group score 1, others 0; without a confident majority all score 0."""

    type: Literal["majority"] = Field(description="Scorer family: majority vote over extracted answers.")
    extract: str | None = Field(
        default=None,
        description=(
            "Regular expression that finds the answer in a completion. The answer is group 1 if the "
            "expression has a group, else the whole match; the last match in the completion is used. "
            "Required with `match: exact`; with `match: math`, unset lets math-verify find the answer "
            "(the last \\boxed{} or LaTeX expression)."
        ),
    )
    match: Literal["exact", "math"] = Field(
        default="exact",
        description=(
            "How answers are compared. exact: as strings (after `normalize`); math: as mathematical "
            "expressions with math-verify (1/2, 0.5 and \\frac12 are one answer)."
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
    def _check_extract(cls, value: str | None) -> str | None:
        return None if value is None else check_regex(value, "extract")

    @model_validator(mode="after")
    def _extract_for_exact(self) -> MajoritySpec:
        if self.extract is None and self.match == "exact":
            raise ValueError("majority scorer: set `extract` (or use `match: math`)")
        return self


class UserCodeFields(CamelModel):
    """How a user function is called: the fields python and dotted-path scorers share."""

    args: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Keyword arguments: passed to the function on every call (they win over data columns), or, with "
            "`factory: true`, to the factory once."
        ),
    )
    factory: bool = Field(
        default=False,
        description=(
            "The function is a factory (as TRL's get_soft_overlong_punishment): it is called once with `args` "
            "and what it returns is the reward function."
        ),
    )
    convention: Literal["trl", "verl"] = Field(
        default="trl",
        description=(
            "trl: fn(prompts, completions, completion_ids, **columns) -> list, called as TRL's GRPOTrainer "
            "calls it; verl: compute_score(data_source, solution_str, ground_truth, extra_info) -> float or "
            "{score: ...}, called once per completion with the record's fields."
        ),
    )


class RegexSpec(ScorerSpecBase):
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


class FieldCheck(CamelModel):
    """One check of a field of the parsed JSON: exactly one of `pattern`, `equals`, `equalsField`, `type`
    (a null counts as not set, so a spec survives serialization; to require null, use `type: null`).

    >>> FieldCheck(path="items.0.name", pattern=r"[A-Z].*").kind
    'pattern'
    >>> FieldCheck.model_validate({"path": "answer", "equals": 42, "pattern": None}).kind
    'equals'
    """

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


class JsonSpec(ScorerSpecBase):
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


class PythonSpec(UserCodeFields, ScorerSpecBase):
    """User code: a TRL-style reward function `fn(prompts, completions, **kwargs) -> list[float | None]`
    from a .py file (`path`) or an importable module (`module`)."""

    PATH_FIELDS = ("path",)

    type: Literal["python"] = Field(description="Scorer family: a user Python function.")
    path: str | None = Field(
        default=None,
        min_length=1,
        description="Path of a .py file holding the function (relative paths resolve in the score stage).",
    )
    module: str | None = Field(
        default=None,
        pattern=MODULE_PATTERN,
        description="Dotted name of an importable module holding the function.",
    )
    function: str = Field(
        pattern=rf"^{IDENTIFIER}$",
        description="Name of the function in the file or module.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PythonSpec:
        if (self.path is None) == (self.module is None):
            raise ValueError("python scorer: set exactly one of 'path' and 'module'")
        return self

    def _default_name(self) -> str:
        return self.function


class JudgeSpec(ScorerSpecBase):
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


class RewardModelSpec(ScorerSpecBase):
    """A sequence-classification reward model (one logit per text), from storage or a local path."""

    URI_FIELDS = ("model",)

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


class SqlSpec(ScorerSpecBase):
    """Executable SQL: run the candidate's query against a SQLite database, read-only, with a time limit.
    1 when it returns rows (or, when the record carries a reference query, the same result set), 0.5
    when it runs but returns no rows (or a different result set: 0.1), 0 when it fails."""

    URI_FIELDS = ("database",)

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


class PythonTestsSpec(ScorerSpecBase):
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
    isolation: Literal["auto", "required", "optional"] = Field(
        default="auto",
        description=(
            "OS isolation of the sandbox (bubblewrap: own PID, network and user namespaces, another uid, "
            "no view of the stage's files or /proc). `required`: refuse to run without it. `optional`: run "
            "with the in-process layer alone where it is missing (not a security boundary). `auto`: "
            "required on a cluster (in a pod), optional with a warning under `tao run`."
        ),
    )

    @field_validator("extract")
    @classmethod
    def _check_extract(cls, value: str | None) -> str | None:
        return None if value is None else check_regex(value, "extract")


class CustomSpec(UserCodeFields, ScorerSpecBase):
    """A TRL-style reward function named by its import path in `type`, e.g. `my_pkg.rewards:accuracy`."""

    type: str = Field(
        pattern=DOTTED_PATH_PATTERN,
        description=(
            "Import path of a TRL-style reward function: 'package.module:function' or "
            "'package.module.function'."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _known_or_dotted(cls, data: Any) -> Any:
        # Unknown names without a dot land here (see _scorer_tag) so the error can quote the value.
        # Checked before the fields, so a typo in `type` is the one error reported, not followed by
        # "extra inputs" complaints about the fields of the family the user meant.
        kind = data.get("type") if isinstance(data, Mapping) else None
        if isinstance(kind, str) and not any(sep in kind for sep in ".:"):
            raise ValueError(f"unknown scorer type {kind!r}; allowed: {ALLOWED_TYPES_TEXT}")
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

"""What every scorer spec has (name, weight, a require gate, normalization), and the scorer type names."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tao_trainer.spec.base import CamelModel

# Names double as metric keys, log labels and JSONL columns, so keep them boring.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
# The prompt record field that names a prompt's task (multi-task TAO: scorers[].tasks, per-task evaluation).
TASK_FIELD = "task"
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
MODULE_PATTERN = rf"^{IDENTIFIER}(\.{IDENTIFIER})*$"
# `pkg.mod:fn` or `pkg.mod.fn`; a bare `mod:fn` is allowed too (a top-level module).
DOTTED_PATH_PATTERN = rf"^{IDENTIFIER}(\.{IDENTIFIER})*([:.]{IDENTIFIER})$"

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
ALLOWED_TYPES_TEXT = (
    ", ".join(BUILTIN_SCORER_TYPES)
    + ", or a dotted path to a TRL-style reward function ('package.module:function')"
)


class ScorerSpecBase(CamelModel):
    """Fields every scorer has. `PATH_FIELDS` and `URI_FIELDS` name the fields holding local files, which
    `tao run` resolves against the manifest's folder (a plain path, or a file:// URI for storage locations)."""

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ()
    URI_FIELDS: ClassVar[tuple[str, ...]] = ()

    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=NAME_PATTERN,
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
    tasks: list[Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description=(
            "Multi-task TAO: the tasks this scorer judges, by the `task` field of each prompt record. A "
            "candidate of another task (or of none) is not judged by it: no value, and as a `require` gate "
            "it does not apply there, and its weight is left out of that candidate's total. Unset: every "
            "prompt."
        ),
    )

    def _default_name(self) -> str:
        return str(getattr(self, "type"))  # noqa: B009 - every subclass declares `type`

    @model_validator(mode="after")
    def _fill_name(self) -> ScorerSpecBase:
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

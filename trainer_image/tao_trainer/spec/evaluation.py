"""`evaluation`: the held-out comparison of champion and challenger, its gate settings and reporting metrics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tao_trainer.spec.base import CamelModel, check_regex
from tao_trainer.spec.scorers import ScorerSpecList


class MetricSpec(CamelModel):
    """A metric computed on held-out prompts from a label field: reporting only, unless `gate: true` makes it a
    guard (a small labeled canary set that may veto a promotion, never cause one)."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="Key in reports (e.g. accuracy).")
    type: Literal["exact_match", "json_equal", "python"] = Field(
        default="exact_match",
        description="exact_match: extracted == label. json_equal: the answer's JSON value (the extracted text, "
        "else the whole answer, else its first JSON object or array) equals the label's (a JSON string is "
        "parsed; an object or list is taken as is). python: `function(completions, labels, **args)` returns one "
        "value per answer (None counts as 0); `labels` holds each prompt's label fields as a dict.",
    )
    field: str | None = Field(
        default=None,
        description="The label field of the prompt record holding the reference (required but for python).",
    )
    extract: str | None = Field(
        default=None,
        description="Regex applied to the answer (group 1 if any, last match); default: the whole stripped text.",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        description="python: a .py file holding the function (relative to the manifest).",
    )
    module: str | None = Field(
        default=None, pattern=r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", description="python: an importable module."
    )
    function: str | None = Field(
        default=None, pattern=r"^[A-Za-z_]\w*$", description="python: the function's name in path or module."
    )
    args: dict[str, Any] = Field(default_factory=dict, description="python: keyword arguments on every call.")

    @model_validator(mode="after")
    def _kind(self) -> MetricSpec:
        if self.type == "python":
            if self.function is None or (self.path is None) == (self.module is None):
                raise ValueError(
                    f"metric {self.name!r}: type python needs function and one of path or module"
                )
        elif self.field is None:
            raise ValueError(f"metric {self.name!r}: type {self.type} needs field (the label field)")
        elif self.path or self.module or self.function or self.args:
            raise ValueError(f"metric {self.name!r}: path, module, function and args are for type python")
        return self

    @field_validator("extract")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        return None if v is None else check_regex(v, "extract")

    gate: bool = Field(
        default=False,
        description="Make this label metric a guard: promotion is vetoed when the challenger's value on the "
        "held-out prompts that carry the label is worse than the champion's beyond `tolerance` (lower "
        "confidence bound). Reports and status mark it as label-based.",
    )
    tolerance: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Non-inferiority tolerance of this guard (default: evaluation.guardTolerance).",
    )


class EvaluationSpec(CamelModel):
    """Stage 4: greedy answers of champion and challenger on held-out prompts, and the promotion gate."""

    min_improvement: float = Field(
        default=0.01,
        description="Promote the new model only if the lower confidence bound of its paired improvement in "
        "label-free held-out score (challenger minus champion, prompt by prompt) is at least this much.",
    )
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1.0,
        description="One-sided confidence of the bound the gate uses (paired bootstrap with a sign-test floor).",
    )
    alarms: bool = Field(
        default=True,
        description="Collapse and reward-hacking alarms: refuse a challenger whose wins rest on answers the "
        "champion's samples never give, whose greedy answers the champion's samples support less than half as "
        "often as the champion's own (support loss), whose sample diversity collapsed, or whose answers go "
        "unscored more often. Turn off only to force promotions in tests.",
    )
    answer_extract: str | None = Field(
        default=None,
        description="Regex for the final answer used by the alarms (group 1 if any, last match); default: the "
        "extract of the first majority gate scorer. Without either, the unsupported-wins and support-loss alarms are off (whole "
        "free-form answers are not compared) and diversity counts distinct whole answers.",
    )
    guards: ScorerSpecList | None = Field(
        default=None,
        description="Label-free scorers that must not regress (non-inferiority within guardTolerance), e.g. a "
        "format verifier or a general-skill check. They veto a promotion, never cause one.",
    )
    guard_tolerance: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="How much worse a guard's lower confidence bound may be than the champion's value.",
    )
    task_tolerance: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Multi-task TAO (prompts with a `task` field): how much worse the lower confidence bound of "
        "one task's gate score may be than the champion's before that task vetoes the promotion (each task is "
        "a guard of its own). Unset: guardTolerance.",
    )
    allow_task_regression: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Tasks whose regression is reported but does not veto a promotion.",
    )
    max_prompts: int = Field(default=200, ge=1, description="Held-out prompts evaluated per round.")
    scorers: ScorerSpecList | None = Field(
        default=None,
        description="Label-free scorers for the gate (default: scoring.scorers). Group scorers such as "
        "majority judge a greedy answer against samples of both models, pooled.",
    )
    reference_samples: int | None = Field(
        default=None,
        ge=1,
        description="Samples per prompt and model for group scorers (default: generation.candidates).",
    )
    metrics: list[MetricSpec] = Field(
        default_factory=list,
        description="Metrics from label fields: reporting only, unless a metric sets gate: true (a guard).",
    )
    reuse_answers: bool = Field(
        default=True,
        description="Keep each evaluated model's held-out answers in the run's storage and read them back when "
        "the same model is evaluated again (a promoted challenger, as next round's champion), instead of "
        "generating them again. Keyed by the model's files, the held-out prompts and the generation settings: "
        "a change to any of them generates afresh.",
    )
    teacher_baseline: bool = Field(
        default=False,
        description="Also ask generation.teacher.endpoint for a greedy answer to each held-out prompt (cached in "
        "the run's storage), and report the teacher's metrics and cost per success beside the student's.",
    )

    @field_validator("answer_extract")
    @classmethod
    def _answer_regex(cls, v: str | None) -> str | None:
        return None if v is None else check_regex(v, "answerExtract")

    def warnings(self) -> list[str]:
        """What is valid but cannot work as meant (printed by `tao validate` and `tao run`)."""
        from tao_trainer.promotion import max_prompts_too_small

        warning = max_prompts_too_small(self.max_prompts, self.min_improvement, self.confidence)
        return [warning] if warning else []

"""The promotion gate's summary in a TAOJob's status (report.json in storage holds every figure)."""

from __future__ import annotations

from pydantic import Field

from tao_trainer.spec import CamelModel


class GuardStatus(CamelModel):
    """One guard of the gate: a score that must not regress."""

    name: str
    change: float | None = Field(default=None, description="Challenger minus champion, mean over prompts.")
    lower: float | None = Field(default=None, description="Lower confidence bound of the change.")
    passed: bool
    uses_labels: bool = Field(
        description="A label metric made a guard with gate: true (a labeled canary set)."
    )


class RoundGate(CamelModel):
    """The gate's verdict in figures: paired improvement of the label-free score, challenger minus champion."""

    reason: str = Field(description="promoted, not-better, no-scores, alarm:<name> or guard:<name>.")
    estimate: float | None = Field(default=None, description="Mean paired improvement.")
    lower: float | None = Field(
        default=None, description="One-sided lower confidence bound of the improvement."
    )
    upper: float | None = None
    confidence: float | None = None
    differing: int | None = Field(
        default=None, description="Held-out prompts on which the two scores differ."
    )
    guards: list[GuardStatus] = Field(default_factory=list)

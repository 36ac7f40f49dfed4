"""The TAOJob's status: what the operator observed and decided, as the CRD's status schema renders it.

Its vocabulary (condition types, reasons, labels) is in api.py, which also re-exports these models beside the
spec's, so that `tao_operator.api` stays the one import for the resource.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field

from tao_operator.gate_status import RoundGate
from tao_operator.usage import Usage
from tao_trainer.spec import CamelModel

Phase = Literal[
    "Pending",
    "Preflight",
    "Watching",
    "Generating",
    "Scoring",
    "Training",
    "Evaluating",
    "RollingOut",
    "Succeeded",
    "Failed",
    "Suspended",
    "BudgetExhausted",
]
"""A TAOJob's phase: derived from its Ready condition (`status.derive_phase`), for printer columns and metrics."""
PHASES: tuple[Phase, ...] = get_args(Phase)


class Condition(CamelModel):
    """Shaped like metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class StageStatus(CamelModel):
    stage: str
    state: Literal["Running", "Succeeded", "Failed"]
    job: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    message: str = ""
    attempt: int = Field(default=1, ge=1, description="A retry or a lost result adds an attempt.")


class RoundSpec(CamelModel):
    """The spec sections a round runs on (`ROUND_SNAPSHOT`), recorded when its first stage started."""

    digest: str = Field(description="A digest of the recorded sections (kept after the round ends).")
    values: str | None = Field(
        default=None,
        description="The recorded sections as compact JSON, kept only while the round runs.",
    )


class RoundStatus(CamelModel):
    """One round's history, copied from its stage results."""

    round: int
    spec: RoundSpec | None = Field(
        default=None, description="evaluation and scoring as this round runs them (edits apply later)."
    )
    prompts: int | None = None
    candidates: int | None = None
    mean_score: float | None = None
    train_examples: int | None = None
    train_loss: float | None = None
    champion: dict[str, float | None] | None = Field(
        default=None, description="Held-out values of the champion."
    )
    challenger: dict[str, float | None] | None = Field(
        default=None, description="Held-out values of the new model."
    )
    promoted: bool | None = None
    verdict: str | None = None
    gate: RoundGate | None = Field(
        default=None, description="The promotion gate's figures (report.json: all)."
    )
    model_uri: str | None = None
    usage: Usage | None = Field(
        default=None, description="What the round used (tokens by endpoint, CPU/GPU-seconds) and its price."
    )
    export_uri: str | None = Field(
        default=None, description="Where the promoted champion was exported (spec.export)."
    )
    stages: list[StageStatus] = Field(default_factory=list)


class PreflightStatus(CamelModel):
    """The scorer preflight's summary (the whole report is in storage, beside round 1)."""

    signal: bool = Field(description="Whether the scorers told the sampled candidates apart.")
    informative_share: float | None = Field(
        default=None, description="Share of sampled prompts whose candidates got different scores."
    )
    mean_spread: float | None = Field(default=None, description="Mean (max - min) score within a prompt.")
    unscored_share: float | None = Field(default=None, description="Share of candidates no scorer judged.")
    verdict: str = ""
    report: str | None = Field(default=None, description="URI of the full report.")


class ChampionStatus(CamelModel):
    round: int = Field(description="0: the base model.")
    uri: str
    score: float | None = None


class ServingStatus(CamelModel):
    round: int
    model_uri: str
    url: str
    deployment: str
    ready: bool = False


class TAOJobStatus(CamelModel):
    phase: Phase = "Pending"
    round: int = 0
    observed_generation: int | None = None
    run_uri: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    rounds: list[RoundStatus] = Field(default_factory=list)
    pruned_rounds: int = Field(
        default=0,
        description="Rounds 1..prunedRounds, all complete, are no longer listed (see spec.historyLimit).",
    )
    preflight: PreflightStatus | None = None
    champion: ChampionStatus | None = None
    serving: ServingStatus | None = None
    message: str | None = None
    retry: int = Field(default=0, ge=0, description="The last tao.dev/retry annotation value acted on.")
    spec_digest: dict[str, str] = Field(default_factory=dict, description="The immutable fields' digests.")
    usage: Usage | None = Field(
        default=None,
        description="What the whole run used (pruned rounds included) and its price: spec.budget's.",
    )

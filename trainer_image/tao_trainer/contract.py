"""What a stage reads and reports: the contract between an executor (the operator or `tao run`) and a stage.

Everything here is pure pydantic: no torch, no Kubernetes, no I/O. The operator image imports this module.
"""

from __future__ import annotations

from pydantic import Field

from tao_trainer.spec import CamelModel, LoopSpec, Stage

CANDIDATE_SOURCES: tuple[str, ...] = ("teacher", "model")
"""Who wrote a candidate: the `sources` of candidates and scores rows, and the `source` of training examples."""

CANDIDATE_FIELDS: tuple[str, ...] = ("candidates", "sources", "missing")
"""What the generate stage adds to a prompt record to make its candidates row: without them, the prompt record."""


class StageConfig(CamelModel):
    """Everything one stage process needs: written by the executor, read by `tao-stage <stage> --config`."""

    stage: Stage
    round: int = Field(ge=1)
    run_uri: str = Field(description="Root of this run's artifacts: <storage>/<namespace>/<name>/<uid>.")
    model_uri: str = Field(description="The round's starting model (the champion).")
    spec: LoopSpec
    shards: list[int] | None = Field(
        default=None,
        description="Shards this process handles (default: all; a pod uses JOB_COMPLETION_INDEX).",
    )


class StageResult(CamelModel):
    """What a stage reports: small (< 4 KiB, a pod termination message); big artifacts stay in storage."""

    stage: Stage
    round: int
    ok: bool = True
    message: str = ""
    counts: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float | None] = Field(default_factory=dict)
    outputs: dict[str, str] = Field(default_factory=dict)
    promoted: bool | None = Field(default=None, description="evaluate only: the gate's verdict.")
    duration_seconds: float = 0.0

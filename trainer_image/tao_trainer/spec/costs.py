"""`spec.costs` (prices, to turn what a run used into money) and `spec.budget` (caps that stop a run)."""

from __future__ import annotations

from pydantic import Field, model_validator

from tao_trainer.spec.base import CamelModel


class TokenPrice(CamelModel):
    """What an endpoint charges, per 1000 tokens."""

    input_per_1k: float = Field(
        default=0.0, ge=0, le=1e6, alias="inputPer1k", description="Price of 1000 prompt tokens."
    )
    output_per_1k: float = Field(
        default=0.0, ge=0, le=1e6, alias="outputPer1k", description="Price of 1000 completion tokens."
    )


class CostsSpec(CamelModel):
    """Prices: a run's report, status and `tao run` table then say what each round cost in money."""

    currency: str = Field(default="USD", pattern=r"^[A-Za-z]{1,8}$", description="A label for the figures.")
    endpoints: dict[str, TokenPrice] = Field(
        default_factory=dict,
        description="Token prices by endpoint: `teacher` (generation.teacher.endpoint), a judge scorer's name, or "
        "`model` (what serving the tuned model costs: its cost per success in the evaluation report).",
    )
    gpu_hour: float | None = Field(
        default=None, ge=0, le=1e6, description="Price of one GPU-hour of a stage."
    )
    cpu_hour: float | None = Field(
        default=None, ge=0, le=1e6, description="Price of one CPU-hour (a core busy for an hour) of a stage."
    )


class BudgetSpec(CamelModel):
    """Caps on what a run may use, over all its rounds. Once one is reached no new stage starts (a running one
    finishes); raising the cap lets the run go on where it stopped."""

    gpu_hours: float | None = Field(default=None, gt=0, le=1e9, description="GPU-hours of all stages.")
    cpu_hours: float | None = Field(default=None, gt=0, le=1e9, description="CPU-hours of all stages.")
    tokens: int | None = Field(
        default=None,
        gt=0,
        le=10**15,
        description="Prompt + completion tokens of every endpoint (teacher, judges).",
    )
    money: float | None = Field(
        default=None, gt=0, le=1e12, description="Spend at spec.costs prices (needs them)."
    )

    @model_validator(mode="after")
    def _some_cap(self) -> BudgetSpec:
        if all(v is None for v in (self.gpu_hours, self.cpu_hours, self.tokens, self.money)):
            raise ValueError("budget needs at least one of gpuHours, cpuHours, tokens and money")
        return self


def check_costs(costs: CostsSpec | None, budget: BudgetSpec | None, endpoints: list[str]) -> None:
    """A money cap needs prices, and prices name endpoints the spec has (`teacher`, or a scorer's name)."""
    if budget is not None and budget.money is not None and costs is None:
        raise ValueError("budget.money needs spec.costs (the prices that turn use into money)")
    for name in costs.endpoints if costs is not None else {}:
        if name not in endpoints:
            raise ValueError(f"costs.endpoints.{name}: no such endpoint; known: {', '.join(endpoints)}")

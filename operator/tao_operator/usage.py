"""What a run used (endpoint tokens, CPU- and GPU-seconds), what that cost at `spec.costs` prices, and whether
`spec.budget` lets another stage start. Pure: both executors and the report call these on stage results.

A stage reports its use in its result's counts: `<endpoint>.promptTokens` / `.completionTokens` (the teacher's
as `teacher.*`, a judge's under its scorer name), `cpuSeconds` and `gpuSeconds` (see `tao_trainer.cli`).
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import Field

from tao_trainer.contract import StageResult
from tao_trainer.spec import BudgetSpec, CamelModel, CostsSpec

_TOKEN_COUNTS = {"promptTokens": "input", "completionTokens": "output"}


class TokenUse(CamelModel):
    input: int = 0
    output: int = 0


class Usage(CamelModel):
    """Use of a stage, a round or a run, and its price when `spec.costs` sets one."""

    tokens: dict[str, TokenUse] = Field(default_factory=dict, description="Tokens by endpoint.")
    cpu_seconds: int = 0
    gpu_seconds: int = 0
    money: float | None = Field(default=None, description="At spec.costs prices; none without them.")

    def total_tokens(self) -> int:
        return sum(t.input + t.output for t in self.tokens.values())


def stage_usage(result: StageResult) -> Usage:
    """A stage's use, from its counts.

    >>> stage_usage(StageResult(stage="score", round=1, counts={"judge.promptTokens": 90, "judge.completionTokens": 8,
    ...                                                         "cpuSeconds": 12, "candidates": 40})).tokens
    {'judge': TokenUse(input=90, output=8)}
    """
    usage = Usage(
        cpu_seconds=result.counts.get("cpuSeconds", 0), gpu_seconds=result.counts.get("gpuSeconds", 0)
    )
    for key, n in result.counts.items():
        endpoint, _, counter = key.rpartition(".")
        if endpoint and counter in _TOKEN_COUNTS:
            use = usage.tokens.setdefault(endpoint, TokenUse())
            setattr(use, _TOKEN_COUNTS[counter], getattr(use, _TOKEN_COUNTS[counter]) + n)
    return usage


def add(usages: Iterable[Usage], costs: CostsSpec | None = None) -> Usage:
    """The sum of `usages`, priced at `costs` when given.

    >>> a = Usage(tokens={"teacher": TokenUse(input=1000, output=500)}, cpu_seconds=3600)
    >>> b = Usage(tokens={"teacher": TokenUse(input=1000)}, gpu_seconds=1800)
    >>> costs = CostsSpec.model_validate({"endpoints": {"teacher": {"inputPer1k": 1, "outputPer1k": 4}},
    ...                                   "gpuHour": 2.0, "cpuHour": 0.1})
    >>> total = add([a, b], costs)
    >>> total.tokens["teacher"], total.money
    (TokenUse(input=2000, output=500), 5.1)
    """
    total = Usage()
    for usage in usages:
        total.cpu_seconds += usage.cpu_seconds
        total.gpu_seconds += usage.gpu_seconds
        for endpoint, use in usage.tokens.items():
            mine = total.tokens.setdefault(endpoint, TokenUse())
            mine.input += use.input
            mine.output += use.output
    total.money = price(total, costs)
    return total


def price(usage: Usage, costs: CostsSpec | None) -> float | None:
    """`usage` in money at `costs`' prices (endpoints without a price cost nothing); None without prices."""
    if costs is None:
        return None
    money = sum(
        use.input / 1000 * costs.endpoints[name].input_per_1k
        + use.output / 1000 * costs.endpoints[name].output_per_1k
        for name, use in usage.tokens.items()
        if name in costs.endpoints
    )
    money += usage.gpu_seconds / 3600 * (costs.gpu_hour or 0.0) + usage.cpu_seconds / 3600 * (
        costs.cpu_hour or 0.0
    )
    return round(money, 6)


def budget_exhausted(budget: BudgetSpec | None, used: Usage) -> str | None:
    """The message of the first cap `used` reached (None: the budget allows another stage). `used` is priced.

    >>> used = Usage(tokens={"teacher": TokenUse(input=900, output=200)}, gpu_seconds=7200)
    >>> budget_exhausted(BudgetSpec(tokens=1000), used)
    'budget reached: 1100 tokens used (teacher 1100), budget.tokens is 1000; raise spec.budget.tokens to go on'
    >>> budget_exhausted(BudgetSpec(gpuHours=3), used) is None
    True
    """
    if budget is None:
        return None
    by_endpoint = ", ".join(f"{name} {use.input + use.output}" for name, use in sorted(used.tokens.items()))
    caps = [
        (
            "gpuHours",
            budget.gpu_hours,
            used.gpu_seconds / 3600,
            f"{used.gpu_seconds / 3600:.4g} GPU-hours used",
        ),
        (
            "cpuHours",
            budget.cpu_hours,
            used.cpu_seconds / 3600,
            f"{used.cpu_seconds / 3600:.4g} CPU-hours used",
        ),
        ("tokens", budget.tokens, used.total_tokens(), f"{used.total_tokens()} tokens used ({by_endpoint})"),
        ("money", budget.money, used.money or 0.0, f"{used.money or 0.0:.4g} spent"),
    ]
    for field, cap, value, what in caps:
        if cap is not None and value >= cap:
            return f"budget reached: {what}, budget.{field} is {cap:g}; raise spec.budget.{field} to go on"
    return None


def with_money_per_success(side: str, figures: dict[str, float | None], costs: CostsSpec | None) -> None:
    """Add `moneyPerSuccess` to one side's held-out figures (champion, challenger: `costs.endpoints.model`;
    teacher: `.teacher`), from its tokens per success.

    >>> figures = {"inputTokensPerSuccess": 2000.0, "outputTokensPerSuccess": 500.0}
    >>> with_money_per_success("teacher", figures, CostsSpec.model_validate(
    ...     {"endpoints": {"teacher": {"inputPer1k": 1, "outputPer1k": 4}}}))
    >>> figures["moneyPerSuccess"]
    4.0
    """
    price = costs.endpoints.get("teacher" if side == "teacher" else "model") if costs is not None else None
    inputs, outputs = figures.get("inputTokensPerSuccess"), figures.get("outputTokensPerSuccess")
    if price is not None and inputs is not None and outputs is not None:
        figures["moneyPerSuccess"] = round(
            inputs / 1000 * price.input_per_1k + outputs / 1000 * price.output_per_1k, 8
        )

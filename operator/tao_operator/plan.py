"""The TAO loop as a pure function: (spec, stage results observed so far) -> the next thing to do.

Both executors (`tao run` locally, the kopf operator on a cluster) call `next_action` and carry the action
out; neither keeps progress in memory, so a restarted executor picks up exactly where results say it is.
No I/O here: results are passed in, actions and reports are returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tao_operator import usage
from tao_trainer.contract import CANDIDATE_SOURCES, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec, Stage

Results = dict[tuple[int, str], StageResult]


@dataclass(frozen=True)
class RunStage:
    round: int
    stage: Stage
    model_uri: str  # the round's starting model: the champion after the previous rounds


@dataclass(frozen=True)
class Finished:
    champion_round: int  # 0: the base model was never beaten
    champion_uri: str


@dataclass(frozen=True)
class Failed:
    round: int
    stage: Stage
    message: str


Action = RunStage | Finished | Failed


@dataclass(frozen=True)
class Serve:
    round: int  # 0: the base model
    model_uri: str
    # The champion the served round replaced (None: it replaced the base): an unmerged LoRA adapter server keeps
    # it loaded beside the served one, so that clients can switch back by name while a rollback rolls out.
    previous_uri: str | None = None


@dataclass(frozen=True)
class UnknownPinnedRound:
    round: int  # spec.serving.pinnedRound names a round that trained no model


ServingDecision = Serve | UnknownPinnedRound | None


def champion(spec: LoopSpec, layout: RunLayout, results: Results, before_round: int) -> tuple[int, str]:
    """The best model known before `before_round` starts: the last promoted challenger, else the base.

    >>> from tao_trainer.contract import StageResult
    >>> spec = _example_spec()
    >>> lay = RunLayout("file:///runs/x")
    >>> res = {(1, "evaluate"): StageResult(stage="evaluate", round=1, promoted=True),
    ...        (2, "evaluate"): StageResult(stage="evaluate", round=2, promoted=False)}
    >>> champion(spec, lay, res, 3)
    (1, 'file:///runs/x/round-001/train/model')
    >>> champion(spec, lay, res, 1)
    (0, 'file:///base')
    """
    best = (0, spec.model.uri)
    for r in range(1, before_round):
        evaluated = results.get((r, "evaluate"))
        if evaluated is not None and evaluated.ok and evaluated.promoted:
            best = (r, layout.model(r))
    return best


def next_action(spec: LoopSpec, layout: RunLayout, results: Results) -> Action:
    """The first stage without a result, in round order; a failed stage stops the run (terminal).

    >>> spec = _example_spec()
    >>> lay = RunLayout("file:///runs/x")
    >>> next_action(spec, lay, {})
    RunStage(round=1, stage='preflight', model_uri='file:///base')
    >>> done = {(1, s): StageResult(stage=s, round=1) for s in ("preflight", "prepare", "generate")}
    >>> next_action(spec, lay, done)
    RunStage(round=1, stage='score', model_uri='file:///base')
    >>> done[(1, "score")] = StageResult(stage="score", round=1, ok=False, message="boom")
    >>> next_action(spec, lay, done)
    Failed(round=1, stage='score', message='boom')
    """
    last = spec.last_round()
    r = 1
    while last is None or r <= last:  # continuous without a limit: some stage of a later round is always next
        _, start = champion(spec, layout, results, r)
        stages = spec.stages(r)
        for i, stage in enumerate(stages):
            result = results.get((r, stage))
            if result is None:
                if any((r, later) in results for later in stages[i + 1 :]):
                    # The round went past it: a stage its spec then did not have (a spec edited since, or a
                    # default of a newer version, e.g. GRPO's generate stage for votes), which nothing needs now.
                    continue
                return RunStage(r, stage, start)
            if not result.ok:
                return Failed(r, stage, result.message)
        r += 1
    return Finished(*champion(spec, layout, results, last + 1))


def what_to_serve(
    spec: LoopSpec, layout: RunLayout, results: Results, *, enabled: bool, pinned_round: int | None
) -> ServingDecision:
    """The model to serve: the pinned round when one is set (0: the base, a rollback), else the champion.

    None: serve nothing (serving disabled, or no round beat the base and none is pinned). A pinned round is
    served only if it trained a model; a rejected challenger is never served unless pinned.

    >>> spec, lay = _example_spec(), RunLayout("file:///runs/x")
    >>> res = {(1, "train"): StageResult(stage="train", round=1),
    ...        (1, "evaluate"): StageResult(stage="evaluate", round=1, promoted=False)}
    >>> what_to_serve(spec, lay, res, enabled=True, pinned_round=None) is None  # the base was never beaten
    True
    >>> what_to_serve(spec, lay, res, enabled=True, pinned_round=1)
    Serve(round=1, model_uri='file:///runs/x/round-001/train/model', previous_uri=None)
    >>> what_to_serve(spec, lay, res, enabled=True, pinned_round=2)
    UnknownPinnedRound(round=2)
    >>> res |= {(2, "train"): StageResult(stage="train", round=2),
    ...         (1, "evaluate"): StageResult(stage="evaluate", round=1, promoted=True),
    ...         (2, "evaluate"): StageResult(stage="evaluate", round=2, promoted=True)}
    >>> what_to_serve(spec, lay, res, enabled=True, pinned_round=None).previous_uri  # round 2 replaced round 1
    'file:///runs/x/round-001/train/model'
    """
    if not enabled:
        return None
    if pinned_round == 0:
        return Serve(0, spec.model.uri)
    if pinned_round is not None:
        trained = results.get((pinned_round, "train"))
        if trained is None or not trained.ok:
            return UnknownPinnedRound(pinned_round)
        return Serve(pinned_round, layout.model(pinned_round), _replaced(spec, layout, results, pinned_round))
    champ_round, champ_uri = champion(spec, layout, results, rounds_seen(spec, results) + 1)
    return (
        Serve(champ_round, champ_uri, _replaced(spec, layout, results, champ_round)) if champ_round else None
    )


def _replaced(spec: LoopSpec, layout: RunLayout, results: Results, round_: int) -> str | None:
    """The champion that round `round_` started from, unless that was the base."""
    before, uri = champion(spec, layout, results, round_)
    return uri if before else None


def rounds_seen(spec: LoopSpec, results: Results) -> int:
    """The rounds a report covers: the fixed count, or in continuous mode every round that has begun."""
    if spec.continuous is None:
        return spec.rounds
    return max((r for r, _ in results), default=0)


def side_metrics(metrics: dict[str, float | None], side: str) -> dict[str, float | None]:
    """One model's values from an evaluate result: `champion.score` -> `score` for side `champion`.

    >>> side_metrics({"champion.score": 0.4, "challenger.score": 0.8, "winRate": 1.0}, "challenger")
    {'score': 0.8}
    """
    prefix = f"{side}."
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}


def build_report(name: str, spec: LoopSpec, layout: RunLayout, results: Results) -> dict[str, Any]:
    """The run's summary (written as report.json and printed as the final table).

    `base` holds the base model's held-out values (round 1's champion); each round holds the champion's and
    the challenger's values on that round's held-out prompts, and the challenger's values at top level.
    Metric values computed from label fields are listed under `labelMetrics`: they were reported, never used.
    """
    rounds: list[dict[str, Any]] = []
    base: dict[str, float | None] = {}
    for r in range(1, rounds_seen(spec, results) + 1):
        row: dict[str, Any] = {"round": r}
        prepared, generated, scored = (results.get((r, s)) for s in ("prepare", "generate", "score"))
        trained, evaluated = results.get((r, "train")), results.get((r, "evaluate"))
        if prepared is None:
            break
        row["prompts"] = prepared.counts.get("prompts", 0)
        row["heldOut"] = prepared.counts.get("heldOut", 0)
        row["rejects"] = prepared.counts.get("rejects", 0)
        if generated is not None:
            row["candidates"] = generated.counts.get("candidates", 0)
        if scored is not None:
            row["meanCandidateScore"] = scored.metrics.get("meanScore")
        if trained is not None:
            row["trainExamples"] = trained.counts.get("examples", 0)
            row["trainLoss"] = trained.metrics.get("trainLoss")
            row["candidates"] = row.get("candidates", trained.counts.get("candidates", 0))
        round_results = [res for (rr, _), res in results.items() if rr == r]
        row["usage"] = usage.add(map(usage.stage_usage, round_results), spec.costs).model_dump(
            mode="json", by_alias=True, exclude_none=True
        )
        if trained is not None and "examplesFromTeacher" in trained.counts:
            row["examplesFrom"] = {
                s: trained.counts.get(f"examplesFrom{s.title()}", 0) for s in CANDIDATE_SOURCES
            }
        if evaluated is not None and evaluated.ok:
            for side in ("champion", "challenger", "teacher"):
                if figures := side_metrics(evaluated.metrics, side):
                    usage.with_money_per_success(side, figures, spec.costs)
                    row[side] = figures
            row.setdefault("champion", {})
            row.setdefault("challenger", {})
            row.update(row["challenger"])
            row["winRate"] = evaluated.metrics.get("winRate")
            row["promoted"] = bool(evaluated.promoted)
            row["verdict"] = evaluated.message
            row["modelUri"] = layout.model(r)
            if "export" in evaluated.outputs:
                row["exportUri"] = evaluated.outputs["export"]
            if r == 1:
                base = dict(row["champion"])
        rounds.append(row)
    champ_round, champ_uri = champion(spec, layout, results, rounds_seen(spec, results) + 1)
    preflight = results.get((1, "preflight"))
    return {
        "job": name,
        "runUri": layout.root,
        "preflight": {"message": preflight.message, **preflight.metrics} if preflight is not None else None,
        "base": base,
        "rounds": rounds,
        "champion": {"round": champ_round, "uri": champ_uri},
        "usage": usage.add(map(usage.stage_usage, results.values()), spec.costs).model_dump(
            mode="json", by_alias=True, exclude_none=True
        ),
        "currency": spec.costs.currency if spec.costs is not None else None,
        "labelMetrics": [m.name for m in spec.evaluation.metrics],
    }


def _example_spec() -> LoopSpec:
    """A minimal valid spec for doctests."""
    return LoopSpec.model_validate(
        {
            "model": {"uri": "file:///base"},
            "prompts": {"uri": "file:///p.jsonl"},
            "storage": {"uri": "file:///runs"},
            "rounds": 2,
            "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
        }
    )

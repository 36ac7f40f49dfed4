"""Scorer preflight: before round 1 pays for training, check that the scorers can tell candidates apart.

TAO learns only from differences between the candidates of one prompt. If every candidate of every prompt
gets the same score (a verifier that nothing passes, a judge whose answers never parse, a majority vote
that never reaches `minAgreement`), no round can help, however many GPUs it uses. The preflight samples a
few prompts from the training pool, generates and scores them exactly as round 1 would, and reports:

- `informativeShare`: the share of prompts whose candidates got different combined scores (the signal);
- `meanSpread`: the mean (max - min) combined score within a prompt, and `scoreStd` over all candidates;
- `unscoredShare`: candidates no scorer judged; per scorer its own informative and abstention shares
  (a judge's parse failures show up as abstentions, and in its counters);
- for each majority scorer, `greedyAgreement`: how often the greedy answer already equals the vote of the
  samples. Near 1, greedy decoding already does what the vote would teach; far below, there is room.

`analyse` is pure (tested on plain lists); `run_preflight` is the stage around it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tao_trainer import prompts, storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.generation import Sampling
from tao_trainer.layout import RunLayout
from tao_trainer.stages import model_worker
from tao_trainer.stages.common import candidate_engine, candidate_source, log, trl_prompt_kwargs
from tao_trainer.stages.score import flatten, score_rows

# Scores closer than this are the same score (sums of float weights).
_TIE = 1e-9


def sample_prompts(pool: Sequence[prompts.PromptRecord], n: int) -> list[prompts.PromptRecord]:
    """`n` prompts spread over the whole pool, the same ones on every run: ordered by a hash of the id
    (not file order, where similar prompts often sit together).

    >>> recs = [prompts.PromptRecord(id=str(i), prompt=f"p{i}") for i in range(10)]
    >>> [r.id for r in sample_prompts(recs, 3)] == [r.id for r in sample_prompts(list(reversed(recs)), 3)]
    True
    """
    ranked = sorted(pool, key=lambda rec: hashlib.sha256(rec.id.encode()).hexdigest())
    return ranked[:n]


def _spread(values: Sequence[float | None]) -> float | None:
    valued = [v for v in values if v is not None]
    return max(valued) - min(valued) if valued else None


def _informative(values: Sequence[float | None]) -> bool:
    spread = _spread(values)
    return spread is not None and spread > _TIE


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def analyse(
    groups: Sequence[int],
    totals: Sequence[float | None],
    per_scorer: Mapping[str, Sequence[float | None]],
    min_informative_share: float,
    greedy_agreement: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """Summary of one scored sample. `groups[i]` is the number of candidates of prompt i; `totals` and each
    of `per_scorer`'s lists hold one value per candidate, the candidates of a prompt consecutive.

    >>> report = analyse([3, 3], [1.0, 0.0, 1.0, 0.0, 0.0, 0.0], {"vote": [1, 0, 1, 0, 0, 0]}, 0.5)
    >>> report["informativeShare"], report["signal"], report["scorers"]["vote"]["informativeShare"]
    (0.5, True, 0.5)
    >>> analyse([2], [None, None], {"judge": [None, None]}, 0.1)["verdict"]
    'no signal: no candidate got a score (every scorer abstained); check the scorers before training'
    """
    if sum(groups) != len(totals):
        raise ValueError(f"{len(totals)} scores for {sum(groups)} candidates")
    spans, start = [], 0
    for size in groups:
        spans.append((start, start + size))
        start += size

    def by_prompt(values: Sequence[float | None]) -> list[Sequence[float | None]]:
        return [values[a:b] for a, b in spans]

    prompt_totals = by_prompt(totals)
    informative = sum(_informative(g) for g in prompt_totals)
    spreads = [s for g in prompt_totals if (s := _spread(g)) is not None]
    valued = [v for v in totals if v is not None]
    mean = sum(valued) / len(valued) if valued else None
    std = math.sqrt(sum((v - mean) ** 2 for v in valued) / len(valued)) if mean is not None else None
    scorers: dict[str, dict[str, float | None]] = {}
    for name, values in per_scorer.items():
        own = [v for v in values if v is not None]
        scorers[name] = {
            "informativeShare": _share(sum(_informative(g) for g in by_prompt(values)), len(groups)),
            "abstainShare": _share(len(values) - len(own), len(values)),
            "meanScore": round(sum(own) / len(own), 4) if own else None,
        }
        if greedy_agreement and name in greedy_agreement:
            scorers[name]["greedyAgreement"] = greedy_agreement[name]
    share = _share(informative, len(groups)) or 0.0
    signal = bool(valued) and share >= min_informative_share
    if not valued:
        verdict = (
            "no signal: no candidate got a score (every scorer abstained); check the scorers before training"
        )
    elif signal:
        verdict = (
            f"signal: {informative}/{len(groups)} sampled prompts have candidates with different scores "
            f"(at least {min_informative_share:.0%} needed)"
        )
    else:
        verdict = (
            f"no signal: only {informative}/{len(groups)} sampled prompts have candidates with different scores "
            f"(at least {min_informative_share:.0%} needed); training would have nothing to prefer. Check each "
            "scorer's abstainShare and meanScore in the report, or raise generation.candidates / temperature"
        )
    # A scorer that never answers (a judge that is down, or whose replies never parse) leaves the others to
    # decide alone: say so even when they give a signal.
    silent = [name for name, values in scorers.items() if values["abstainShare"] == 1.0]
    if silent and valued:
        verdict += f"; warning: {', '.join(silent)} gave no value for any candidate (see its counters)"
    return {
        "prompts": len(groups),
        "candidates": len(totals),
        "informativeShare": share,
        "meanSpread": round(sum(spreads) / len(spreads), 4) if spreads else None,
        "scoreStd": round(std, 4) if std is not None else None,
        "meanScore": round(mean, 4) if mean is not None else None,
        "unscoredShare": _share(len(totals) - len(valued), len(totals)),
        "scorers": scorers,
        "signal": signal,
        "verdict": verdict,
    }


def greedy_agreement(
    scorers: Sequence[Any], candidates: Sequence[Sequence[str]], greedy: Sequence[str]
) -> dict[str, float | None]:
    """For each majority scorer: the share of prompts with a confident vote whose greedy answer equals it.

    >>> from tao_trainer.scorers import build_scorers
    >>> vote = build_scorers([{"type": "majority", "extract": r"=(\\d+)"}])
    >>> greedy_agreement(vote, [["=4", "=4", "=5"], ["=1", "=2", "=3"]], ["=4", "=9"])
    {'majority': 1.0}
    """
    from tao_trainer.scorers.majority import MajorityScorer

    out: dict[str, float | None] = {}
    for scorer in scorers:
        if not isinstance(scorer, MajorityScorer):
            continue
        agree = confident = 0
        for samples, answer in zip(candidates, greedy, strict=True):
            voted = scorer.vote(samples)
            if voted is None:
                continue
            confident += 1
            agree += scorer.answer(answer) == voted
        out[scorer.name] = _share(agree, confident)
    return out


def run_preflight(cfg: StageConfig) -> StageResult:
    from tao_trainer.promotion import max_prompts_too_small
    from tao_trainer.scorers import FunctionScorer, MajorityScorer, build_scorer, score_all
    from tao_trainer.scorers.combine import stats_counts
    from tao_trainer.scorers.signatures import user_code_failure

    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    loaded = prompts.load_prompts(spec.prompts.uri, spec.prompts.field, spec.prompts.max_line_bytes)
    if not loaded.records:
        raise ValueError(
            f"prompts.uri {spec.prompts.uri!r}: no valid prompt in {len(loaded.sources)} file(s)"
        )
    pool, held_out = prompts.split(loaded.records, spec.prompts.held_out_fraction)
    chosen = [
        prompts.strip_fields(rec, spec.prompts.label_fields).model_dump()
        for rec in sample_prompts(pool or loaded.records, spec.preflight.prompts)
    ]
    scorers = [build_scorer(s) for s in spec.scoring.scorers]
    columns = sorted({key for rec in chosen for key in rec["fields"]})
    for (
        scorer
    ) in scorers:  # before any generation: a signature that cannot take TRL's call fails here, by name
        if isinstance(scorer, FunctionScorer):
            scorer.check(columns)
    gen_spec = spec.generation
    source, revision = candidate_source(gen_spec, cfg.model_uri)
    log(f"preflight: {len(chosen)} prompts x {gen_spec.candidates} candidates from {source}")

    seed = gen_spec.seed + 104729  # not round 1's seed: the sample is a check, not a preview of round 1
    samplings = [Sampling.from_spec(gen_spec, seed)]
    if any(isinstance(s, MajorityScorer) for s in scorers):
        samplings.append(Sampling.greedy(gen_spec, seed))
    # The model is gone before scoring (on vLLM with its process): a reward model or a local judge may need the memory.
    outputs = model_worker.sample(gen_spec, source, chosen, samplings, revision, candidate_engine(gen_spec))
    sampled = outputs[0]
    greedy: list[str] = [g[0] for g in outputs[1]] if len(outputs) > 1 else []

    def tokenizer() -> Any:
        from tao_trainer import models

        return models.load_tokenizer(models.resolve(source, revision))

    records = [{**rec, "candidates": cands} for rec, cands in zip(chosen, sampled, strict=True)]
    prompts_, completions, kwargs = flatten(records)
    kwargs |= trl_prompt_kwargs(
        scorers, records, gen_spec.system_prompt, tokenizer, [len(c) for c in sampled]
    )
    try:
        batch = score_all(scorers, prompts_, completions, **kwargs)
    except Exception as exc:
        failure = user_code_failure(exc)
        if failure is None:
            raise
        raise failure from exc
    report = analyse(
        [len(c) for c in sampled],
        batch.total,
        batch.per_scorer,
        spec.preflight.min_informative_share,
        greedy_agreement(scorers, sampled, greedy) if greedy else None,
    )
    stats = stats_counts(scorers)
    report["scorerCounters"] = stats
    # What is valid but cannot work as meant (a gate that can never promote), as `tao validate` and `tao run`
    # print it: on a cluster, this verdict (status.preflight, the ScorersInformative condition) is where it shows.
    # Here the prompts are read, so a held-out split too small for the gate is caught as well.
    evaluation = spec.evaluation
    too_few = max_prompts_too_small(
        evaluation.max_prompts, evaluation.min_improvement, evaluation.confidence, held_out=len(held_out)
    )
    if too_few:
        report["warnings"] = [too_few]
        report["verdict"] += f"; warning: {too_few}"
    storage.write_json(lay.preflight_report(r), report)
    # The same rows as a scores file (raw values, each scorer's details), with the candidates beside them.
    rows = [
        {
            "prompt": rec["prompt"],
            "candidates": rec["candidates"],
            **row,
            **({"greedy": greedy[i]} if greedy else {}),
        }
        for i, (rec, row) in enumerate(zip(records, score_rows(records, batch), strict=True))
    ]
    storage.write_jsonl(lay.preflight_samples(r), rows)
    log(f"preflight: {report['verdict']}")

    metrics: dict[str, float | None] = {
        key: report[key]
        for key in ("informativeShare", "meanSpread", "scoreStd", "meanScore", "unscoredShare")
    }
    metrics["signal"] = 1.0 if report["signal"] else 0.0
    for name, values in report["scorers"].items():
        metrics.update({f"{name}.{key}": value for key, value in values.items()})
    stop = not report["signal"] and spec.preflight.stop_on_no_signal
    message = report["verdict"]
    if stop:
        message += " (set preflight.stopOnNoSignal: false to train anyway)"
    return StageResult(
        stage="preflight",
        round=r,
        ok=not stop,
        message=message,
        counts={"prompts": report["prompts"], "candidates": report["candidates"], **stats},
        metrics=metrics,
        outputs={"report": lay.preflight_report(r), "samples": lay.preflight_samples(r)},
    )

"""Stage 4: champion vs challenger on held-out prompts, and the promotion verdict.

Each model answers every held-out prompt once, greedily: that is how the tuned model will be used, at the
base model's inference cost. The gate compares mean label-free scores. Group scorers (majority) judge a
greedy answer against N samples of each model, pooled: "does one cheap answer match what the models reach
by spending test-time compute?", which is what TAO sets out to teach. Pooling both models' samples matters:
a model's greedy answer is the mode of its own samples, so judging against one side's samples favours it.

`evaluation.metrics` may read label fields; they are computed here, reported, and never consulted by the gate.
"""

from __future__ import annotations

import gc
import re
from typing import Any

from tao_trainer import models, storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.generation import Sampling
from tao_trainer.layout import RunLayout
from tao_trainer.promotion import decide, mean
from tao_trainer.spec import MetricSpec
from tao_trainer.stages.common import log, open_generator, render
from tao_trainer.stages.score import flatten


def extract_answer(text: str, pattern: str | None) -> str | None:
    """The last match of `pattern` (its group 1 if it has one), or the whole stripped text.

    >>> extract_answer("3+4=7;7", r";(\\d+)$"), extract_answer(" 7 ", None), extract_answer("x", r"\\d")
    ('7', '7', None)
    """
    if pattern is None:
        return text.strip()
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None
    m = matches[-1]
    return (m.group(1) if m.re.groups else m.group(0)).strip()


def metric_values(metric: MetricSpec, answers: list[str], labels: list[Any]) -> list[float]:
    """Per-answer values of a reporting metric (exact match against the label field).

    >>> m = MetricSpec(name="accuracy", field="answer", extract=r";(\\d+)$")
    >>> metric_values(m, ["..;12", "..;13", "junk"], ["12", 12, "12"])
    [1.0, 0.0, 0.0]
    """
    out = []
    for answer, label in zip(answers, labels, strict=True):
        got = extract_answer(answer, metric.extract)
        out.append(1.0 if got is not None and label is not None and got == str(label).strip() else 0.0)
    return out


def _answers(
    model_uri: str, held: list[dict[str, Any]], cfg: StageConfig, references: int
) -> tuple[list[str], list[list[str]]]:
    """Greedy answers (and `references` samples per prompt, if asked) of one model; frees it afterwards."""
    gen_spec = cfg.spec.generation
    generator = open_generator(gen_spec, model_uri)
    rendered = render(generator, held, gen_spec.system_prompt)
    greedy = [g[0] for g in generator.generate(rendered, Sampling.greedy(gen_spec, gen_spec.seed))]
    refs: list[list[str]] = [[] for _ in rendered]
    if references:
        refs = generator.generate(rendered, Sampling.from_spec(gen_spec, gen_spec.seed + 7919, n=references))
    del generator
    gc.collect()
    return greedy, refs


def score_sides(
    scorers: list[Any],
    prompts_: list[Any],
    sides: dict[str, list[str]],
    references: list[list[str]],
    kwargs: dict[str, list[Any]],
) -> dict[str, Any]:
    """Each side's `ScoredBatch`, scored in one batch with a prompt's answers side by side: a group_*
    normalisation then compares the models' answers to the same prompt (each alone would be a group of one,
    and the scorer would drop out of the gate).

    >>> from tao_trainer.scorers import build_scorers
    >>> scorers = build_scorers([{"type": "regex", "pattern": "4", "normalization": "group_minmax"}])
    >>> out = score_sides(scorers, ["2+2", "3+1"], {"champion": ["4", "5"], "challenger": ["5", "4"]}, [[], []], {})
    >>> out["champion"].total, out["challenger"].total
    ([1.0, 0.0], [0.0, 1.0])
    """
    from tao_trainer.scorers import ScoredBatch, score_against_all

    names, k = list(sides), len(sides)

    def each(values: list[Any]) -> list[Any]:
        return [v for v in values for _ in range(k)]

    answers = [sides[name][i] for i in range(len(prompts_)) for name in names]
    both = score_against_all(
        scorers, each(prompts_), answers, each(references), **{key: each(v) for key, v in kwargs.items()}
    )

    def side(j: int) -> ScoredBatch:
        def cut(by_name: dict[str, list[Any]]) -> dict[str, list[Any]]:
            return {name: values[j::k] for name, values in by_name.items()}

        return ScoredBatch(
            total=both.total[j::k],
            per_scorer=cut(both.per_scorer),
            raw=cut(both.raw),
            details=cut(both.details),
        )

    return {name: side(j) for j, name in enumerate(names)}


def append_history(layout: RunLayout, report: dict[str, Any]) -> None:
    """Add (or replace, on a re-run) the round's line in the run's history: the full record of every round,
    while a TAOJob's status keeps only the latest ones. Rewritten whole: object stores have no append."""
    rows = storage.read_jsonl(layout.history) if storage.exists(layout.history) else []
    rows = [row for row in rows if row.get("round") != report["round"]]
    storage.write_jsonl(layout.history, sorted([*rows, report], key=lambda row: row["round"]))


def run_evaluate(cfg: StageConfig) -> StageResult:
    from tao_trainer.scorers import build_scorer, stats_counts

    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    models.cpu_threads()
    held = storage.read_jsonl(lay.heldout(r))
    labels = {row["id"]: row for row in storage.read_jsonl(lay.heldout_labels(r))}
    scorers = [build_scorer(s) for s in spec.gate_scorers()]
    n_refs = (
        (spec.evaluation.reference_samples or spec.generation.candidates)
        if any(s.is_group for s in scorers)
        else 0
    )

    champion_uri, challenger_uri = cfg.model_uri, lay.model(r)
    log(f"evaluate: {len(held)} held-out prompts, champion {champion_uri} vs challenger {challenger_uri}")
    champ_greedy, champ_refs = _answers(champion_uri, held, cfg, n_refs)
    chall_greedy, chall_refs = _answers(challenger_uri, held, cfg, n_refs)
    references = [a + b for a, b in zip(champ_refs, chall_refs, strict=True)]

    prompts_, _, kwargs = flatten([{**rec, "candidates": [""]} for rec in held])
    sides = {"champion": champ_greedy, "challenger": chall_greedy}
    scores = score_sides(scorers, prompts_, sides, references, kwargs)
    metrics: dict[str, float | None] = {}
    per_metric: dict[str, dict[str, list[float]]] = {}
    for side, answers in sides.items():
        metrics[f"{side}.score"] = mean(scores[side].total)
        for m in spec.evaluation.metrics:
            vals = metric_values(m, answers, [labels.get(rec["id"], {}).get(m.field) for rec in held])
            per_metric.setdefault(side, {})[m.name] = vals
            metrics[f"{side}.{m.name}"] = mean(list(vals))

    verdict = decide(scores["champion"].total, scores["challenger"].total, spec.evaluation.min_improvement)
    metrics.update(verdict.metrics())

    samples = []
    for i, rec in enumerate(held):
        samples.append(
            {
                "id": rec["id"],
                "prompt": rec["prompt"],
                "champion": {
                    "answer": champ_greedy[i],
                    "score": scores["champion"].total[i],
                    **{k: v[i] for k, v in per_metric.get("champion", {}).items()},
                },
                "challenger": {
                    "answer": chall_greedy[i],
                    "score": scores["challenger"].total[i],
                    **{k: v[i] for k, v in per_metric.get("challenger", {}).items()},
                },
            }
        )
    storage.write_jsonl(lay.eval_samples(r), samples)
    report = {
        "round": r,
        "champion": champion_uri,
        "challenger": challenger_uri,
        "heldOutPrompts": len(held),
        "referenceSamples": 2 * n_refs,
        "metrics": metrics,
        "gateScorers": [s.name for s in scorers],
        "labelMetrics": {
            m.name: {"field": m.field, "usesLabels": True, "gates": False} for m in spec.evaluation.metrics
        },
        "promoted": verdict.promoted,
        "verdict": verdict.message,
    }
    storage.write_json(lay.eval_report(r), report)
    append_history(lay, report)
    return StageResult(
        stage="evaluate",
        round=r,
        counts={"heldOut": len(held), "wins": verdict.wins, "losses": verdict.losses} | stats_counts(scorers),
        metrics=metrics,
        promoted=verdict.promoted,
        message=verdict.message,
        outputs={"report": lay.eval_report(r), "challenger": challenger_uri},
    )

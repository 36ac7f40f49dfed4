"""Stage 4: champion vs challenger on held-out prompts, and the promotion verdict.

Each model answers every held-out prompt once, greedily: that is how the tuned model will be used, at the
base model's inference cost. The gate (promotion.decide) takes the paired per-prompt label-free scores and
promotes on a confidence bound of the improvement. Group scorers (majority) judge a greedy answer against N
samples of each model, pooled: "does one cheap answer match what the models reach by spending test-time
compute?". Pooling lets a collapsed challenger supply the majority itself, which is why each model's samples
are also kept apart for the alarms: diversity of its own samples, and whether the challenger's answers are
supported by the *champion's* samples.

`evaluation.metrics` may read label fields; they are reported, and consulted only when a metric sets
`gate: true` (a guard that can veto, never cause, a promotion).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from tao_trainer import export, models, storage
from tao_trainer.answer_cache import request_key
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.generation import Sampling
from tao_trainer.layout import RunLayout
from tao_trainer.promotion import Guard, Health, decide, mean
from tao_trainer.spec import MetricSpec
from tao_trainer.stages import evaluate_costs, evaluate_tasks, model_worker
from tao_trainer.stages.common import log, trl_prompt_kwargs
from tao_trainer.stages.score import flatten


def extract_answer(text: str, pattern: str | None) -> str | None:
    """The last match of `pattern` (its group 1 if it has one), or the whole stripped text; None when
    nothing matches or the pattern runs past its time budget (`safe_regex`: no answer, not a hang).

    >>> extract_answer("3+4=7;7", r";(\\d+)$"), extract_answer(" 7 ", None), extract_answer("x", r"\\d")
    ('7', '7', None)
    """
    from tao_trainer.safe_regex import RegexTimeout, user_regex

    if pattern is None:
        return text.strip()
    compiled = user_regex(pattern)
    try:
        m = compiled.last_match(text)
    except RegexTimeout:
        return None
    if m is None:
        return None
    found = m.group(1) if compiled.groups else m.group(0)
    return str(found or "").strip()


def metric_values(
    metric: MetricSpec, answers: list[str], labels: list[Any], rows: list[dict[str, Any]] | None = None
) -> list[float]:
    """Per-answer values of a reporting metric: `labels` holds each prompt's `metric.field`, `rows` all its label
    fields (for a python metric).

    >>> m = MetricSpec(name="accuracy", field="answer", extract=r";(\\d+)$")
    >>> metric_values(m, ["..;12", "..;13", "junk"], ["12", 12, "12"])
    [1.0, 0.0, 0.0]
    >>> j = MetricSpec(name="fields", type="json_equal", field="answer")
    >>> metric_values(j, ['Here: {"a": 1, "b": [2]} done', '{"a": 2}', "no json"], ['{"b": [2], "a": 1}', {"a": 2}, "{}"])
    [1.0, 1.0, 0.0]
    """
    if metric.type == "python":
        return python_metric(metric, answers, rows if rows is not None else [{} for _ in answers])
    out = []
    for answer, label in zip(answers, labels, strict=True):
        if label is None:
            out.append(0.0)
        elif metric.type == "json_equal":
            got = json_value(extract_answer(answer, metric.extract) if metric.extract else answer)
            want = json_value(label) if isinstance(label, str) else label
            out.append(1.0 if got is not _NO_JSON and want is not _NO_JSON and got == want else 0.0)
        else:
            got = extract_answer(answer, metric.extract)
            out.append(1.0 if got is not None and got == str(label).strip() else 0.0)
    return out


_NO_JSON = object()


def label_metrics(
    metrics: list[MetricSpec], answers: list[str], label_rows: list[dict[str, Any]]
) -> dict[str, list[float]]:
    """Each reporting metric's per-answer values (`metric_values`); `label_rows` holds each prompt's label fields.

    >>> label_metrics([MetricSpec(name="accuracy", field="answer")], ["4", "5"], [{"answer": "4"}, {}])
    {'accuracy': [1.0, 0.0]}
    """
    return {
        m.name: metric_values(m, answers, [row.get(m.field or "") for row in label_rows], label_rows)
        for m in metrics
    }


def json_value(text: str | None) -> Any:
    """The JSON value a text holds: the whole (stripped, without a Markdown code fence), else its first object
    or array; `_NO_JSON` when there is none.

    >>> json_value('```json\\n{"a": 1}\\n```'), json_value('x [1, 2] y {"b": 2}'), json_value("none") is _NO_JSON
    ({'a': 1}, [1, 2], True)
    """
    if text is None:
        return _NO_JSON
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0].strip()
    try:
        return json.loads(body)
    except ValueError:
        pass
    decoder = json.JSONDecoder()
    for i, ch in enumerate(body):
        if ch in "{[":
            try:
                return decoder.raw_decode(body, i)[0]
            except ValueError:
                continue
    return _NO_JSON


def python_metric(metric: MetricSpec, answers: list[str], rows: list[dict[str, Any]]) -> list[float]:
    """A user function's values: `function(completions, labels, **args)`, one float (or None: 0) per answer."""
    from tao_trainer.scorers.function import load_function
    from tao_trainer.spec import PythonSpec

    code = PythonSpec(
        type="python",
        name=metric.name,
        path=metric.path,
        module=metric.module,
        function=metric.function or "",
    )
    values = list(load_function(code)(completions=answers, labels=rows, **metric.args))
    if len(values) != len(answers):
        raise ValueError(f"metric {metric.name!r}: {len(values)} values for {len(answers)} answers")
    return [0.0 if v is None else float(v) for v in values]


def diversity(samples: list[str], pattern: str | None) -> float | None:
    """(distinct answers - 1) / (samples - 1): 0 when every sample gives one answer, 1 when all differ.

    >>> diversity(["a;1", "b;1", "c;2"], r";(\\d+)$"), diversity(["x"], None), diversity(["1", "1"], None)
    (0.5, None, 0.0)
    """
    if len(samples) < 2:
        return None
    return (len({extract_answer(s, pattern) for s in samples}) - 1) / (len(samples) - 1)


def health(
    greedy: list[str],
    own_refs: list[list[str]],
    champion_refs: list[list[str]],
    totals: list[float | None],
    pattern: str | None,
) -> tuple[Health, list[bool | None]]:
    """One model's collapse and reward-hacking figures, and per prompt whether its greedy answer is among
    the champion's samples (None without samples).

    >>> h, sup = health(["1+1=2;2", "x"], [["2", "3"], ["4", "4"]], [["..;2", "..;5"], ["..;4", "..;4"]],
    ...                 [1.0, None], r";?(\\d+)$")
    >>> h, sup
    (Health(diversity=0.5, support=0.5, length=4.0, unscored=0.5), [True, False])
    """
    supported: list[bool | None] = []
    for answer, refs in zip(greedy, champion_refs, strict=True):
        got = extract_answer(answer, pattern)
        supported.append(
            None if not refs else got is not None and got in {extract_answer(r, pattern) for r in refs}
        )
    divs = [diversity(refs, pattern) for refs in own_refs]
    return (
        Health(
            diversity=mean(divs),
            support=mean([None if x is None else float(x) for x in supported]),
            length=mean([float(len(a)) for a in greedy]),
            unscored=mean([1.0 if t is None else 0.0 for t in totals]),
        ),
        supported,
    )


def answer_pattern(spec: Any, scorers: list[Any]) -> str | None:
    """The final-answer regex of the alarms: evaluation.answerExtract, else the first majority scorer's."""
    if spec.evaluation.answer_extract is not None:
        return str(spec.evaluation.answer_extract)
    for s in spec.gate_scorers():
        if getattr(s, "type", None) == "majority":
            return str(s.extract)
    return None


def answers_key(
    model_uri: str, held: list[dict[str, Any]], cfg: StageConfig, samplings: list[Sampling]
) -> str | None:
    """What decides a model's held-out answers: its files (each one's size and etag or mtime, so a model
    rewritten at the same URI is answered afresh), the held-out prompts, and the generation settings. None
    for a model outside the run's storage schemes (an hf:// id): nothing tells when its files change."""
    try:
        files = storage.list_versions(model_uri)
    except ValueError:
        return None
    if not files:
        return None
    body = {
        "files": files,
        "held": [[rec["id"], rec["prompt"]] for rec in held],
        "generation": cfg.spec.generation.model_dump(mode="json"),
        "samplings": [dataclasses.asdict(s) for s in samplings],
    }
    return request_key(model_uri, "evaluate", body)


def _answers(
    model_uri: str, held: list[dict[str, Any]], cfg: StageConfig, references: int
) -> tuple[list[str], list[list[str]], bool]:
    """Greedy answers (and `references` samples per prompt, if asked) of one model, loaded alone: on vLLM in a
    process of its own (model_worker), so that the champion's engine is gone before the challenger's starts.
    With evaluation.reuseAnswers, a model evaluated before on the same prompts and settings is read back
    instead (the last item says so): a promoted challenger is next round's champion."""
    gen_spec = cfg.spec.generation
    samplings = [Sampling.greedy(gen_spec, gen_spec.seed)]
    if references:
        samplings.append(Sampling.from_spec(gen_spec, gen_spec.seed + 7919, n=references))
    key = answers_key(model_uri, held, cfg, samplings) if cfg.spec.evaluation.reuse_answers else None
    kept_uri = RunLayout(cfg.run_uri).model_answers(key) if key is not None else None
    if kept_uri is not None and storage.exists(kept_uri):
        kept = storage.read_json(kept_uri)
        log(f"evaluate: reusing the answers {model_uri} gave to these prompts in an earlier evaluation")
        return kept["greedy"], kept["references"], True
    outputs = model_worker.sample(gen_spec, model_uri, held, samplings, engine=gen_spec.engine)
    greedy = [g[0] for g in outputs[0]]
    refs: list[list[str]] = outputs[1] if references else [[] for _ in held]
    if kept_uri is not None:
        storage.write_json(kept_uri, {"model": model_uri, "greedy": greedy, "references": refs})
    return greedy, refs, False


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


def _cost_per_success(
    cfg: StageConfig,
    held: list[dict[str, Any]],
    label_rows: list[dict[str, Any]],
    sides: dict[str, list[str]],
    scores: dict[str, Any],
    per_metric: dict[str, dict[str, list[float]]],
    scoring: tuple[list[Any], list[Any], list[list[str]], dict[str, list[Any]]],
) -> tuple[dict[str, float | None], dict[str, int]]:
    """Each side's successes and tokens per success (`evaluate_costs`); the teacher's too, with its metrics,
    when evaluation.teacherBaseline asks for it (then also the teacher client's counters, for the result)."""
    spec = cfg.spec
    first = spec.evaluation.metrics[0].name if spec.evaluation.metrics else None
    tokenizer = models.load_tokenizer(models.resolve(cfg.model_uri))
    out: dict[str, float | None] = {}
    inputs = evaluate_costs.prompt_tokens(tokenizer, held, spec.generation.system_prompt)
    for side, answers in sides.items():
        won = evaluate_costs.successes(scores[side].total, per_metric[side][first] if first else None)
        out |= evaluate_costs.per_success(side, won, inputs, evaluate_costs.answer_tokens(tokenizer, answers))
    if not spec.evaluation.teacher_baseline:
        return out, {}
    texts, teacher_inputs, teacher_outputs, counters = evaluate_costs.teacher_answers(cfg, held)
    scorers, prompts_, references, kwargs = scoring
    teacher_scores = score_sides(scorers, prompts_, {"teacher": texts}, references, kwargs)["teacher"].total
    out["teacher.score"] = mean(teacher_scores)
    teacher_metrics = label_metrics(spec.evaluation.metrics, texts, label_rows)
    out |= {f"teacher.{name}": mean(list(values)) for name, values in teacher_metrics.items()}
    won = evaluate_costs.successes(teacher_scores, teacher_metrics[first] if first else None)
    return out | evaluate_costs.per_success("teacher", won, teacher_inputs, teacher_outputs), counters


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
    guard_scorers = [build_scorer(s) for s in (spec.evaluation.guards or [])]
    # Samples per prompt and model: for group scorers, and for the alarms (diversity, support).
    needs_refs = spec.evaluation.alarms or any(s.is_group for s in [*scorers, *guard_scorers])
    n_refs = (spec.evaluation.reference_samples or spec.generation.candidates) if needs_refs else 0

    champion_uri, challenger_uri = cfg.model_uri, lay.model(r)
    log(f"evaluate: {len(held)} held-out prompts, champion {champion_uri} vs challenger {challenger_uri}")
    champ_greedy, champ_refs, champ_reused = _answers(champion_uri, held, cfg, n_refs)
    chall_greedy, chall_refs, chall_reused = _answers(challenger_uri, held, cfg, n_refs)
    references = [a + b for a, b in zip(champ_refs, chall_refs, strict=True)]

    prompts_, _, kwargs = flatten([{**rec, "candidates": [""]} for rec in held])
    kwargs |= trl_prompt_kwargs(
        [*scorers, *guard_scorers],
        held,
        spec.generation.system_prompt,
        lambda: models.load_tokenizer(models.resolve(champion_uri)),
    )
    sides = {"champion": champ_greedy, "challenger": chall_greedy}
    scores = score_sides(scorers, prompts_, sides, references, kwargs)
    metrics: dict[str, float | None] = {}
    per_metric: dict[str, dict[str, list[float]]] = {}
    guards: dict[str, Guard] = {}
    label_rows = [{k: v for k, v in labels.get(rec["id"], {}).items() if k != "id"} for rec in held]
    for side, answers in sides.items():
        metrics[f"{side}.score"] = mean(scores[side].total)
        per_metric[side] = label_metrics(spec.evaluation.metrics, answers, label_rows)
        metrics |= {f"{side}.{name}": mean(list(values)) for name, values in per_metric[side].items()}
    for m in spec.evaluation.metrics:
        if m.gate:  # a labeled canary: only the prompts that carry the label count
            # A python metric (no single field) counts a prompt that carries any label field.
            has = [
                labels.get(rec["id"], {}).get(m.field) is not None
                if m.field
                else any(v is not None for k, v in labels.get(rec["id"], {}).items() if k != "id")
                for rec in held
            ]
            champ_v, chall_v = (
                [v if h else None for v, h in zip(per_metric[side][m.name], has, strict=True)]
                for side in ("champion", "challenger")
            )
            tolerance = m.tolerance if m.tolerance is not None else spec.evaluation.guard_tolerance
            guards[m.name] = Guard(champ_v, chall_v, tolerance, uses_labels=True)
    for g in guard_scorers:
        g_scores = score_sides([g], prompts_, sides, references, kwargs)
        tol = spec.evaluation.guard_tolerance
        guards[g.name] = Guard(g_scores["champion"].total, g_scores["challenger"].total, tol)
    # Multi-task: each task reported apart, and each one a guard (a regression on any task vetoes), its
    # labeled canaries too.
    ev = spec.evaluation
    task_metrics, task_guards = evaluate_tasks.per_task(
        held,
        {side: scores[side].total for side in sides},
        per_metric,
        ev.task_tolerance if ev.task_tolerance is not None else ev.guard_tolerance,
        ev.allow_task_regression,
        canaries={g: guards[g] for g in guards if guards[g].uses_labels},
    )
    metrics |= task_metrics
    guards |= task_guards

    pattern = answer_pattern(spec, scorers)
    champ_health, _ = health(champ_greedy, champ_refs, champ_refs, scores["champion"].total, pattern)
    chall_health, supported = health(
        chall_greedy, chall_refs, champ_refs, scores["challenger"].total, pattern
    )
    verdict = decide(
        scores["champion"].total,
        scores["challenger"].total,
        spec.evaluation.min_improvement,
        confidence=spec.evaluation.confidence,
        alarms=spec.evaluation.alarms,
        # Support compares final answers: with no answer regex (free-form JSON or prose), a challenger that learned
        # a new format never repeats the champion's texts verbatim, and every win would read as unsupported.
        supported=supported if n_refs and pattern is not None else None,
        champion_health=champ_health,
        challenger_health=chall_health,
        guards=guards,
    )
    metrics.update(verdict.metrics())
    per_success, teacher_counts = _cost_per_success(
        cfg, held, label_rows, sides, scores, per_metric, (scorers, prompts_, references, kwargs)
    )
    metrics.update(per_success)
    # Before anything records the promotion: a failed export fails this stage, and its re-run exports again.
    exported = None
    if verdict.promoted and spec.export is not None:
        held_out = {
            k.removeprefix("challenger."): v for k, v in metrics.items() if k.startswith("challenger.")
        }
        exported = export.export_champion(spec.export, challenger_uri, r, held_out)

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
                    "supported": supported[i],
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
            m.name: {"type": m.type, "field": m.field, "usesLabels": True, "gates": m.gate}
            for m in spec.evaluation.metrics
        },
        "promoted": verdict.promoted,
        "verdict": verdict.message,
        "gate": verdict.report(),
        "export": exported,
    }
    storage.write_json(lay.eval_report(r), report)
    append_history(lay, report)
    return StageResult(
        stage="evaluate",
        round=r,
        counts={
            "heldOut": len(held),
            "wins": verdict.wins,
            "losses": verdict.losses,
            "pairs": verdict.bound.pairs,
            "reusedAnswers": int(champ_reused) + int(chall_reused),  # models not generated again
        }
        | stats_counts(scorers)
        | teacher_counts,  # the teacher's held-out answers (evaluation.teacherBaseline): tokens paid
        metrics=metrics,
        promoted=verdict.promoted,
        message=verdict.message,
        outputs={"report": lay.eval_report(r), "challenger": challenger_uri, "reason": verdict.reason}
        | ({"export": exported["uri"]} if exported else {}),
    )

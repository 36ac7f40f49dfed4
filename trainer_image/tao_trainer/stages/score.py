"""Stage `score`: candidates -> scores, with the scorers laid out as TRL reward functions expect.

A shard is written once, whole; a stage run again skips the shards that already exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tao_trainer import storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.stages.common import candidate_source, my_shards, trl_prompt_kwargs


def flatten(records: Sequence[dict[str, Any]]) -> tuple[list[Any], list[str], dict[str, list[Any]]]:
    """Candidates laid out as TRL reward functions expect: a prompt's completions consecutive, fields as kwargs.

    >>> flatten([{"prompt": "p", "fields": {"db": "x"}, "candidates": ["a", "b"]}])
    (['p', 'p'], ['a', 'b'], {'db': ['x', 'x']})
    """
    names = sorted({k for rec in records for k in rec.get("fields", {})})
    prompts_: list[Any] = []
    completions: list[str] = []
    kwargs: dict[str, list[Any]] = {k: [] for k in names}
    for rec in records:
        for cand in rec["candidates"]:
            prompts_.append(rec["prompt"])
            completions.append(cand)
            for k in names:
                kwargs[k].append(rec.get("fields", {}).get(k))
    return prompts_, completions, kwargs


def score_rows(records: Sequence[dict[str, Any]], batch: Any) -> list[dict[str, Any]]:
    """One scores-file row per candidates record, from the `ScoredBatch` of the records' flattened candidates.

    A row holds, per candidate in order: `scores` (the combined score that training reads), `perScorer`
    (each scorer's value as used in it, i.e. normalised), `raw` (values before normalisation, for
    scorers with a normalization), `details` (what scorers said about each candidate, for scorers that
    said something about one of the record's candidates) and, with a teacher, `sources` (who wrote each
    candidate). `raw`, `details` and `sources` are left out when empty.

    >>> from tao_trainer.scorers import ScoredBatch
    >>> batch = ScoredBatch(total=[0.0, 0.7, 0.5], per_scorer={"rm": [0.0, 1.0, 0.5]},
    ...                     raw={"rm": [-2.0, 1.0, 0.3]}, details={"rm": [None, {"truncatedTo": 8}, None]})
    >>> first, second = score_rows([{"id": "a", "candidates": ["x", "y"]}, {"id": "b", "candidates": ["z"]}], batch)
    >>> first["raw"], first["details"]
    ({'rm': [-2.0, 1.0]}, {'rm': [None, {'truncatedTo': 8}]})
    >>> sorted(second)  # nothing to explain about candidate z
    ['id', 'perScorer', 'raw', 'scores']
    """
    rows, pos = [], 0
    for rec in records:
        end = pos + len(rec["candidates"])
        row: dict[str, Any] = {
            "id": rec["id"],
            "scores": batch.total[pos:end],
            "perScorer": {name: vals[pos:end] for name, vals in batch.per_scorer.items()},
        }
        raw = {name: vals[pos:end] for name, vals in batch.raw.items()}
        details = {
            name: d[pos:end] for name, d in batch.details.items() if any(x is not None for x in d[pos:end])
        }
        if "sources" in rec:  # distillation: who wrote each candidate (the teacher, the model)
            row["sources"] = rec["sources"]
        if raw:
            row["raw"] = raw
        if details:
            row["details"] = details
        rows.append(row)
        pos = end
    return rows


def run_score(cfg: StageConfig) -> StageResult:
    from tao_trainer.scorers import build_scorer, score_all, stats_counts
    from tao_trainer.scorers.signatures import user_code_failure

    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    scorers = [build_scorer(s) for s in spec.scoring.scorers]
    tokenizer: Any = None

    def load_tokenizer() -> Any:  # user reward code gets completion ids and chat-shaped prompts, as in GRPO
        nonlocal tokenizer
        if tokenizer is None:
            from tao_trainer import models

            tokenizer = models.load_tokenizer(
                models.resolve(*candidate_source(spec.generation, cfg.model_uri))
            )
        return tokenizer

    shards = my_shards(cfg)
    todo = [i for i in shards if not storage.exists(lay.shard("scores", r, i))]
    for i in todo:
        records = storage.read_jsonl(lay.shard("candidates", r, i))
        prompts_, completions, kwargs = flatten(records)
        counts = [len(rec["candidates"]) for rec in records]
        kwargs |= trl_prompt_kwargs(scorers, records, spec.generation.system_prompt, load_tokenizer, counts)
        try:
            batch = score_all(scorers, prompts_, completions, **kwargs)
        except Exception as exc:
            failure = user_code_failure(exc)
            if failure is None:
                raise
            raise failure from exc
        storage.write_jsonl(lay.shard("scores", r, i), score_rows(records, batch))
    totals = [
        s for i in shards for row in storage.read_jsonl(lay.shard("scores", r, i)) for s in row["scores"]
    ]
    valued = [s for s in totals if s is not None]
    return StageResult(
        stage="score",
        round=r,
        # Scorer counters (judge calls, parse failures, truncations) as "<scorer>.<counter>", this run's shards only.
        counts={
            "candidates": len(totals),
            "unscored": len(totals) - len(valued),
            "shardsDone": len(todo),
            "shardsSkipped": len(shards) - len(todo),
        }
        | stats_counts(scorers),
        metrics={"meanScore": round(sum(valued) / len(valued), 4) if valued else None},
        outputs={"scores": f"{lay.round_dir(r)}/scores/"},
    )

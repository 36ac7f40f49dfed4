"""The data stages: prepare (prompts -> shards), generate (shards -> candidates), score (candidates -> scores).

Each shard is written once, whole (storage writes are atomic), and a stage run again skips the shards that
already exist: an interrupted stage resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from tao_trainer import prompts, storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout

# ------------------------------------------------------------------------------------------------ prepare


def round_slice(
    pool: Sequence[prompts.PromptRecord], round_: int, per_round: int | None
) -> list[prompts.PromptRecord]:
    """Round r takes the r-th slice of `per_round` prompts, wrapping around when the pool runs out.

    >>> round_slice(list("abcde"), 1, 2), round_slice(list("abcde"), 3, 2), round_slice(list("abc"), 2, None)
    (['a', 'b'], ['e', 'a'], ['a', 'b', 'c'])
    """
    if per_round is None or per_round >= len(pool):
        return list(pool)
    start = ((round_ - 1) * per_round) % len(pool)
    return [pool[(start + i) % len(pool)] for i in range(per_round)]


def split_shards(items: Sequence[Any], shards: int) -> list[list[Any]]:
    """Contiguous, nearly equal shards (some may be empty when there are fewer items than shards).

    >>> split_shards(list(range(5)), 2)
    [[0, 1, 2], [3, 4]]
    """
    size, extra = divmod(len(items), shards)
    out, start = [], 0
    for i in range(shards):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def run_prepare(cfg: StageConfig) -> StageResult:
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    # Listed before loading: an object that arrives while this round loads counts as new for the next one.
    versions = storage.list_versions(spec.prompts.uri) if spec.continuous is not None else {}
    loaded = prompts.load_prompts(spec.prompts.uri, spec.prompts.field)
    if loaded.rejects:
        # Never silently dropped: every bad line is kept with its file, line number and reason.
        storage.write_jsonl(lay.rejects(r), (rej.model_dump() for rej in loaded.rejects))
        log(f"prepare: {len(loaded.rejects)} malformed prompt line(s) set aside in {lay.rejects(r)}")
    if not loaded.records:
        raise ValueError(
            f"prompts.uri {spec.prompts.uri!r}: no valid prompt in {len(loaded.sources)} file(s)"
        )
    pool, held = prompts.split(loaded.records, spec.prompts.held_out_fraction)
    if not held:
        raise ValueError(
            f"prompts.heldOutFraction={spec.prompts.held_out_fraction} leaves no held-out prompt out of "
            f"{len(loaded.records)}: raise it or add prompts (evaluation needs held-out prompts)"
        )
    if not pool:
        raise ValueError("every prompt landed in the held-out set: lower prompts.heldOutFraction")
    labels = spec.prompts.label_fields
    held_all, held = held, held[: spec.evaluation.max_prompts]
    storage.write_jsonl(lay.heldout(r), (_public(p, labels) for p in held))
    storage.write_jsonl(
        lay.heldout_labels(r), ({"id": p.id, **{k: p.fields.get(k) for k in labels}} for p in held)
    )
    if spec.continuous is None:
        chosen = round_slice(pool, r, spec.prompts.max_per_round)
    else:
        # The flywheel trains each round on prompts no earlier round used (a backlog beyond maxPerRound waits).
        from tao_trainer import flywheel

        seen = flywheel.seen_ids(lay, r)
        chosen = round_slice([p for p in pool if p.id not in seen], 1, spec.prompts.max_per_round)
        if not chosen:
            raise ValueError(
                f"round {r}: no prompt under {spec.prompts.uri!r} that an earlier round has not used"
            )
        flywheel.record_round(lay, r, versions, [p.id for p in chosen] + [p.id for p in held_all])
    for i, shard in enumerate(split_shards(chosen, spec.generation.shards)):
        storage.write_jsonl(lay.shard("prompts", r, i), (_public(p, labels) for p in shard))
    return StageResult(
        stage="prepare",
        round=r,
        counts={
            "prompts": len(chosen),
            "pool": len(pool),
            "heldOut": len(held),
            "rejects": len(loaded.rejects),
            "duplicates": loaded.duplicates,
            "files": len(loaded.sources),
        },
        outputs={"prompts": f"{lay.round_dir(r)}/prompts/", "heldOut": lay.heldout(r)}
        | ({"rejects": lay.rejects(r)} if loaded.rejects else {}),
    )


def _public(record: prompts.PromptRecord, label_fields: Sequence[str]) -> dict[str, Any]:
    """A prompt record as the loop may see it: label fields removed."""
    return prompts.strip_fields(record, label_fields).model_dump()


# ----------------------------------------------------------------------------------------------- generate


def shard_seed(base: int, round_: int, shard: int) -> int:
    """A distinct, reproducible seed for each (round, shard)."""
    digest = hashlib.sha256(f"{base}:{round_}:{shard}".encode()).hexdigest()
    return int(digest[:8], 16)


def my_shards(cfg: StageConfig) -> list[int]:
    """The shards this process handles: the config's list, else the pod's completion index, else all."""
    if cfg.shards is not None:
        return cfg.shards
    index = os.environ.get("JOB_COMPLETION_INDEX")
    if index is not None:
        return [int(index)]
    return list(range(cfg.spec.generation.shards))


def run_generate(cfg: StageConfig) -> StageResult:
    from tao_trainer import generate, models

    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    gen_spec = spec.generation
    shards = my_shards(cfg)
    todo = [i for i in shards if not storage.exists(lay.shard("candidates", r, i))]
    source = gen_spec.teacher.uri if gen_spec.teacher else cfg.model_uri
    if todo:
        models.cpu_threads()
        generator = generate.load_generator(
            models.resolve(source, gen_spec.teacher.revision if gen_spec.teacher else None),
            gen_spec.backend,
            gen_spec.batch_size,
        )
        shard_records = {i: storage.read_jsonl(lay.shard("prompts", r, i)) for i in todo}
        bar = progress_bar(sum(len(v) for v in shard_records.values()), f"round {r} generate")
        for i in todo:
            records = shard_records[i]
            rendered = [
                models.render_prompt(generator.tokenizer, rec["prompt"], gen_spec.system_prompt)
                for rec in records
            ]
            sampling = generate.Sampling(
                n=gen_spec.candidates,
                temperature=gen_spec.temperature,
                top_p=gen_spec.top_p,
                max_new_tokens=gen_spec.max_new_tokens,
                seed=shard_seed(gen_spec.seed, r, i),
            )
            outs = generator.generate(rendered, sampling, progress=bar.update)
            storage.write_jsonl(
                lay.shard("candidates", r, i),
                ({**rec, "candidates": cands} for rec, cands in zip(records, outs, strict=True)),
            )
        bar.close()
    n_prompts = sum(len(storage.read_jsonl(lay.shard("candidates", r, i))) for i in shards)
    return StageResult(
        stage="generate",
        round=r,
        counts={
            "prompts": n_prompts,
            "candidates": n_prompts * gen_spec.candidates,
            "shardsDone": len(todo),
            "shardsSkipped": len(shards) - len(todo),
        },
        outputs={"candidates": f"{lay.round_dir(r)}/candidates/", "generator": source},
    )


# -------------------------------------------------------------------------------------------------- score


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
    scorers with a normalization) and `details` (what scorers said about each candidate, for scorers that
    said something about one of the record's candidates). `raw` and `details` are left out when empty.

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
        if raw:
            row["raw"] = raw
        if details:
            row["details"] = details
        rows.append(row)
        pos = end
    return rows


def run_score(cfg: StageConfig) -> StageResult:
    from tao_trainer.scorers import build_scorer, score_all, stats_counts

    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    scorers = [build_scorer(s) for s in spec.scoring.scorers]
    shards = my_shards(cfg)
    todo = [i for i in shards if not storage.exists(lay.shard("scores", r, i))]
    for i in todo:
        records = storage.read_jsonl(lay.shard("candidates", r, i))
        prompts_, completions, kwargs = flatten(records)
        batch = score_all(scorers, prompts_, completions, **kwargs)
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


# ------------------------------------------------------------------------------------------------- shared


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def progress_bar(total: int, desc: str) -> Any:
    """tqdm on a terminal; nothing in pods and CI, whose logs a bar would flood."""
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", leave=False)

"""Stage `prepare`: prompts -> the round's prompt shards and its held-out set (label fields split off).

Each shard is written once, whole (storage writes are atomic); prepare run again rewrites the same shards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tao_trainer import prompt_history, prompts, storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.stages.common import log, split_shards


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


def run_prepare(cfg: StageConfig) -> StageResult:
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    # Listed before loading: an object that arrives while this round loads counts as new for the next one.
    versions = storage.list_versions(spec.prompts.uri) if spec.continuous is not None else {}
    loaded = prompts.load_prompts(spec.prompts.uri, spec.prompts.field, spec.prompts.max_line_bytes)
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
        seen = prompt_history.seen_ids(lay, r)
        chosen = round_slice([p for p in pool if p.id not in seen], 1, spec.prompts.max_per_round)
        if not chosen:
            raise ValueError(
                f"round {r}: no prompt under {spec.prompts.uri!r} that an earlier round has not used"
            )
        prompt_history.record_round(lay, r, versions, [p.id for p in chosen] + [p.id for p in held_all])
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

"""Stage `prepare`: prompts -> the round's prompt shards and its held-out set (label fields split off).

Each shard is written once, whole (storage writes are atomic); prepare run again rewrites the same shards.
The prompts are read once into local scratch (`prepare_spill`), not into memory: the stage's memory does not
grow with the number of prompts (disk does: about the size of the prompts).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from itertools import chain, islice
from pathlib import Path

from tao_trainer import prompt_history, prompts, storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.stages.common import log, split_sizes
from tao_trainer.stages.prepare_spill import HELD, POOL, Spill


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


def chosen_ranges(available: int, round_: int, per_round: int | None) -> list[tuple[int, int]]:
    """`round_slice` as ranges of positions: the round's prompts are these, in this order.

    >>> chosen_ranges(5, 1, 2), chosen_ranges(5, 3, 2), chosen_ranges(3, 2, None), chosen_ranges(5, 2, 3)
    ([(0, 2)], [(4, 5), (0, 1)], [(0, 3)], [(3, 5), (0, 1)])
    """
    if per_round is None or per_round >= available:
        return [(0, available)]
    start = ((round_ - 1) * per_round) % available
    end = start + per_round
    return [(start, end)] if end <= available else [(start, available), (0, end - available)]


def run_prepare(cfg: StageConfig) -> StageResult:
    """One pass over the prompts into local scratch (`prepare_spill`), then the outputs copied from it: memory
    stays bounded whatever the number of prompts."""
    import numpy as np

    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    # Listed before loading: an object that arrives while this round loads counts as new for the next one.
    versions = storage.list_versions(spec.prompts.uri) if spec.continuous is not None else {}
    sources = prompts.resolve_sources(spec.prompts.uri)
    fraction = spec.prompts.held_out_fraction
    with tempfile.TemporaryDirectory(prefix="tao-prepare-") as scratch:
        spill = Spill(Path(scratch), spec.prompts.label_fields)
        spill.read(sources, spec.prompts.field, spec.prompts.max_line_bytes, fraction)
        if spec.continuous is not None:
            for seen_id in prompt_history.iter_seen_ids(lay, r):
                spill.add_seen(seen_id)
        keep, seen = spill.finish()
        kept = {side: int(mask.sum()) for side, mask in keep.items()}
        duplicates = sum(spill.count.values()) - sum(kept.values())
        if spill.rejects:
            # Never silently dropped: every bad line is kept with its file, line number and reason.
            storage.write_lines(lay.rejects(r), spill.reject_lines())
            log(f"prepare: {spill.rejects} malformed prompt line(s) set aside in {lay.rejects(r)}")
        if not sum(kept.values()):
            raise ValueError(f"prompts.uri {spec.prompts.uri!r}: no valid prompt in {len(sources)} file(s)")
        if not kept[HELD]:
            raise ValueError(
                f"prompts.heldOutFraction={fraction} leaves no held-out prompt out of {sum(kept.values())}: "
                "raise it or add prompts (evaluation needs held-out prompts)"
            )
        if not kept[POOL]:
            raise ValueError("every prompt landed in the held-out set: lower prompts.heldOutFraction")
        held_n = min(kept[HELD], spec.evaluation.max_prompts)
        storage.write_lines(
            lay.heldout(r), (line for line, _, _ in islice(spill.lines(HELD, keep[HELD]), held_n))
        )
        storage.write_lines(
            lay.heldout_labels(r), (label for _, _, label in islice(spill.lines(HELD, keep[HELD]), held_n))
        )
        if spec.continuous is None:
            eligible, ranges = keep[POOL], chosen_ranges(kept[POOL], r, spec.prompts.max_per_round)
        else:
            # The flywheel trains each round on prompts no earlier round used (a backlog beyond maxPerRound waits).
            eligible = keep[POOL] & ~seen
            ranges = chosen_ranges(int(eligible.sum()), 1, spec.prompts.max_per_round)
            if not ranges[0][1]:
                raise ValueError(
                    f"round {r}: no prompt under {spec.prompts.uri!r} that an earlier round has not used"
                )
        chosen = sum(end - start for start, end in ranges)
        stream = chain.from_iterable(islice(spill.lines(POOL, eligible, a), b - a) for a, b in ranges)
        used: list[str] = []
        for i, size in enumerate(split_sizes(chosen, spec.generation.shards)):
            shard: Iterator[tuple[bytes, str, bytes]] = islice(stream, size)
            if spec.continuous is not None:
                shard = _noting_ids(shard, used)
            storage.write_lines(lay.shard("prompts", r, i), (line for line, _, _ in shard))
        if spec.continuous is not None:
            held_ids = (record_id for _, record_id, _ in spill.lines(HELD, keep[HELD]))
            ids = np.unique(np.array([int(x, 16) for x in chain(used, held_ids)], dtype=np.uint64))
            prompt_history.record_round(lay, r, versions, (f"{x:016x}" for x in ids.tolist()))
    return StageResult(
        stage="prepare",
        round=r,
        counts={
            "prompts": chosen,
            "pool": kept[POOL],
            "heldOut": held_n,
            "rejects": spill.rejects,
            "duplicates": duplicates,
            "files": len(sources),
        },
        outputs={"prompts": f"{lay.round_dir(r)}/prompts/", "heldOut": lay.heldout(r)}
        | ({"rejects": lay.rejects(r)} if spill.rejects else {}),
    )


def _noting_ids(
    lines: Iterator[tuple[bytes, str, bytes]], ids: list[str]
) -> Iterator[tuple[bytes, str, bytes]]:
    for row in lines:
        ids.append(row[1])
        yield row

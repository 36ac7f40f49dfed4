"""Continuous mode (the data flywheel): which prompts are new, and the `watch` stage that waits for them.

Round 1 uses every prompt, as in fixed mode. Each prepare then records two things beside its round:

- a watermark: the version tag of every prompt object it listed (`storage.list_versions`), so that a later
  check knows which objects are new or changed without reading the others;
- the ids of the prompts it used first (ids are content hashes): the union over earlier rounds is "seen".

A later round starts with `watch`, a stage that polls the prompts location every `continuous.interval`:
it reads only objects that are new or changed since the previous round's watermark and counts the prompts
in them that no round has seen. Once there are `minNewPrompts`, it reports and the round goes on: prepare
takes the unseen prompts (the held-out set stays the stable hash split of all prompts).

The watch runs as a stage pod, not inside the operator: reading the prompts needs the job's storage
credentials, which only stage pods hold, and the operator never reads user data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from tao_trainer import prompts, storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec
from tao_trainer.stages import log


def seen_ids(layout: RunLayout, before_round: int) -> set[str]:
    """Ids of the prompts used by rounds 1 .. before_round - 1."""
    seen: set[str] = set()
    for r in range(1, before_round):
        uri = layout.new_ids(r)
        if storage.exists(uri):
            seen.update(line for line in storage.read_text(uri).splitlines() if line)
    return seen


def changed_objects(now: dict[str, str], before: dict[str, str]) -> list[str]:
    """Objects that are new, or whose version changed (appended to, rewritten), since `before`.

    >>> changed_objects({"a": "1:x", "b": "2:y", "c": "1:z"}, {"a": "1:x", "b": "1:y"})
    ['b', 'c']
    """
    return sorted(uri for uri, version in now.items() if before.get(uri) != version)


def record_round(layout: RunLayout, round_: int, versions: dict[str, str], used: Iterable[str]) -> None:
    """Write the round's watermark and the ids it used first (call after its prompts were chosen)."""
    storage.write_json(layout.watermark(round_), versions)
    storage.write_text(layout.new_ids(round_), "".join(f"{i}\n" for i in sorted(set(used))))


def count_new(spec: LoopSpec, layout: RunLayout, round_: int) -> tuple[int, int, int]:
    """(new prompts, changed objects, rejected lines) since round `round_ - 1`'s watermark."""
    previous = layout.watermark(round_ - 1)
    before = storage.read_json(previous) if storage.exists(previous) else {}
    changed = changed_objects(storage.list_versions(spec.prompts.uri), before)
    changed = [uri for uri in changed if prompts.is_prompt_source(uri)]
    if not changed:
        return 0, 0, 0
    loaded = prompts.load_sources(changed, spec.prompts.field)
    seen = seen_ids(layout, round_)
    return sum(rec.id not in seen for rec in loaded.records), len(changed), len(loaded.rejects)


# A storage outage must not fail a TAOJob that waits for days; a location that stays unreadable for this many
# polls in a row (a wrong bucket, revoked credentials) fails the stage with the error, so that it is seen.
MAX_FAILED_POLLS = 10


def run_watch(cfg: StageConfig, sleep: Callable[[float], None] = time.sleep) -> StageResult:
    """Poll until `minNewPrompts` unseen prompts have arrived; a pod may run this for days (it is cheap)."""
    spec, lay, r = cfg.spec, RunLayout(cfg.run_uri), cfg.round
    if spec.continuous is None:
        raise ValueError("the watch stage runs only in continuous mode (spec.continuous)")
    wanted, interval = spec.continuous.min_new_prompts, spec.continuous.interval_seconds()
    polls = failed = 0
    while True:
        polls += 1
        try:
            new, objects, rejects = count_new(spec, lay, r)
        except Exception as exc:  # noqa: BLE001 - any storage error is retried, up to MAX_FAILED_POLLS in a row
            failed += 1
            if failed >= MAX_FAILED_POLLS:
                raise RuntimeError(
                    f"prompts.uri {spec.prompts.uri!r} unreadable in {failed} polls in a row: {exc}"
                ) from exc
            log(
                f"watch: cannot read {spec.prompts.uri} ({type(exc).__name__}: {exc}); retrying in {interval}s"
            )
            sleep(interval)
            continue
        failed = 0
        log(
            f"watch: round {r}: {new}/{wanted} new prompts in {objects} new or changed object(s) under "
            f"{spec.prompts.uri}"
        )
        if new >= wanted:
            return StageResult(
                stage="watch",
                round=r,
                message=f"{new} new prompts since round {r - 1} (at least {wanted} start a round)",
                counts={"newPrompts": new, "changedObjects": objects, "rejects": rejects, "polls": polls},
            )
        sleep(interval)

"""Continuous mode (the data flywheel): which prompts are new since earlier rounds. Imports no stage (but the
prepare stage's scratch, `stages.prepare_spill`, imported when counting).

Round 1 uses every prompt, as in fixed mode. Each prepare then records two things beside its round:

- a watermark: the version tag of every prompt object it listed (`storage.list_versions`), so that a later
  check knows which objects are new or changed without reading the others;
- the ids of the prompts it used first (ids are content hashes): the union over earlier rounds is "seen".

A later round starts with the `watch` stage (`stages/watch.py`), which polls the prompts location every `continuous.interval`:
it reads only objects that are new or changed since the previous round's watermark and counts the prompts
in them that no round has seen. Once there are `minNewPrompts`, it reports and the round goes on: prepare
takes the unseen prompts (the held-out set stays the stable hash split of all prompts).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from tao_trainer import prompts, storage
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec


def iter_seen_ids(layout: RunLayout, before_round: int) -> Iterator[str]:
    """Ids of the prompts used by rounds 1 .. before_round - 1, streamed (an id may repeat)."""
    for r in range(1, before_round):
        uri = layout.new_ids(r)
        if storage.exists(uri):
            yield from (line.decode() for line in storage.iter_lines(uri) if line)


def changed_objects(now: dict[str, str], before: dict[str, str]) -> list[str]:
    """Objects that are new, or whose version changed (appended to, rewritten), since `before`.

    >>> changed_objects({"a": "1:x", "b": "2:y", "c": "1:z"}, {"a": "1:x", "b": "1:y"})
    ['b', 'c']
    """
    return sorted(uri for uri, version in now.items() if before.get(uri) != version)


def record_round(layout: RunLayout, round_: int, versions: dict[str, str], used: Iterable[str]) -> None:
    """Write the round's watermark and the ids it used first (call after its prompts were chosen), `used` in
    sorted order without repeats (a stream: millions of ids are never held as strings)."""
    storage.write_json(layout.watermark(round_), versions)
    storage.write_lines(layout.new_ids(round_), (f"{i}\n".encode() for i in used))


def count_new(spec: LoopSpec, layout: RunLayout, round_: int) -> tuple[int, int, int]:
    """(new prompts, changed objects, rejected lines) since round `round_ - 1`'s watermark."""
    previous = layout.watermark(round_ - 1)
    before = storage.read_json(previous) if storage.exists(previous) else {}
    changed = changed_objects(storage.list_versions(spec.prompts.uri), before)
    changed = [uri for uri in changed if prompts.is_prompt_source(uri)]
    if not changed:
        return 0, 0, 0
    # Through the prepare stage's scratch: memory stays bounded however many prompts arrived or were seen.
    from tao_trainer.stages.prepare_spill import POOL, Spill

    sources = [storage.normalize(uri) for uri in changed]
    with tempfile.TemporaryDirectory(prefix="tao-watch-") as scratch:
        spill = Spill(Path(scratch), ())
        spill.read(sources, spec.prompts.field, spec.prompts.max_line_bytes, held_fraction=0.0)
        for seen_id in iter_seen_ids(layout, round_):
            spill.add_seen(seen_id)
        keep, seen = spill.finish()
        return int((keep[POOL] & ~seen).sum()), len(changed), spill.rejects

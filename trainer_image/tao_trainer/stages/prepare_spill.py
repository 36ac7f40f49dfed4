"""The prepare stage's scratch: prompts read once and kept on local disk, never all in memory.

Held as objects, a parsed prompt cost ~1.6 KB (benchmarks/data_plane.py): 10M prompts would need a 20 GB pod
for a bookkeeping stage. Instead one pass writes each valid prompt's output line (what a shard or the held-out
file holds: the id, the prompt and the fields the loop may see) to a spill file of its side (training pool or
held-out), its id to a parallel id file, and (id, position, side) to one of `BUCKETS` files chosen by the
id's top bits. Duplicates, and in continuous mode the prompts earlier rounds used, are then found one bucket
at a time. What stays in memory is a byte per prompt (two masks), one bucket, and the write buffers; the
outputs are the lines of the spill files, copied in order.
"""

from __future__ import annotations

import contextlib
import gc
import json
import struct
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO, Any

from tao_trainer import prompts
from tao_trainer.prompts import Reject

BUCKETS = 64
POOL, HELD = 0, 1
_ENTRY = struct.Struct("<QQB")  # id, key (0: used by an earlier round; else position in its side + 1), side
_ID = struct.Struct("<Q")


class Spill:
    """Prompts written as they are read; `finish` then tells which are duplicates or seen before."""

    def __init__(self, workdir: Path, label_fields: Collection[str]) -> None:
        self.dir = workdir
        self.labels = tuple(label_fields)
        self._encode = json.JSONEncoder(ensure_ascii=False).encode  # what storage.write_jsonl writes
        self.count = {POOL: 0, HELD: 0}
        self.rejects = 0
        self._out: dict[str, IO[bytes]] = {
            name: open(workdir / name, "wb")  # noqa: SIM115 - closed in finish()
            for name in (
                "pool.jsonl",
                "pool.ids",
                "held.jsonl",
                "held.ids",
                "held-labels.jsonl",
                "rejects.jsonl",
            )
        }
        self._buckets = [open(workdir / f"bucket-{i:02d}", "wb") for i in range(BUCKETS)]  # noqa: SIM115

    def add(self, record_id: str, prompt: Any, fields: dict[str, Any], held: bool) -> None:
        side, name = (HELD, "held") if held else (POOL, "pool")
        public = {k: v for k, v in fields.items() if k not in self.labels}
        line = self._encode({"id": record_id, "prompt": prompt, "fields": public})
        self._out[f"{name}.jsonl"].write(line.encode("utf-8") + b"\n")
        if held:
            labels = {"id": record_id, **{k: fields.get(k) for k in self.labels}}
            self._out["held-labels.jsonl"].write(self._encode(labels).encode("utf-8") + b"\n")
        number = int(record_id, 16)
        self._out[f"{name}.ids"].write(_ID.pack(number))
        self.count[side] += 1
        self._buckets[number >> 58].write(_ENTRY.pack(number, self.count[side], side))

    def read(self, sources: list[str], field: str, max_line_bytes: int, held_fraction: float) -> None:
        """Every row of the sources, once: valid prompts by their side of the held-out split, bad rows as rejects."""
        gc_was_enabled = gc.isenabled()
        gc.disable()  # nothing read here makes reference cycles: no GC rescans of a growing heap
        try:
            for row in prompts.iter_records(sources, field, max_line_bytes):
                if isinstance(row, Reject):
                    self.add_reject(row)
                else:
                    self.add(*row, held=prompts.is_held_out(row[0], held_fraction))
        finally:
            if gc_was_enabled:
                gc.enable()

    def add_reject(self, reject: Reject) -> None:
        self._out["rejects.jsonl"].write(self._encode(reject.model_dump()).encode("utf-8") + b"\n")
        self.rejects += 1

    def add_seen(self, record_id: str) -> None:
        """A prompt an earlier round used (continuous mode): the pool's copy of it is not chosen again."""
        number = int(record_id, 16)
        self._buckets[number >> 58].write(_ENTRY.pack(number, 0, POOL))

    def finish(self) -> tuple[dict[int, Any], Any]:
        """(per side, a mask of the prompts to keep: the first of each id; the pool's mask of prompts seen by an
        earlier round). Buckets are read one at a time and deleted."""
        import numpy as np

        for f in [*self._out.values(), *self._buckets]:
            f.close()
        keep = {side: np.ones(n, dtype=bool) for side, n in self.count.items()}
        seen = np.zeros(self.count[POOL], dtype=bool)
        dtype = np.dtype([("id", "<u8"), ("key", "<u8"), ("side", "u1")])
        for i in range(BUCKETS):
            path = self.dir / f"bucket-{i:02d}"
            e = np.fromfile(path, dtype=dtype)
            path.unlink()
            if not len(e):
                continue
            e = e[np.lexsort((e["key"], e["id"]))]  # by id, then seen first, then in input order
            first = np.ones(len(e), dtype=bool)
            first[1:] = e["id"][1:] != e["id"][:-1]
            record = e["key"] > 0
            after_record = np.zeros(len(e), dtype=bool)
            after_record[1:] = record[:-1]
            duplicate = record & ~first & after_record  # another copy of the id came before it
            group_seen = (e["key"][first] == 0)[np.cumsum(first) - 1]
            for side in (POOL, HELD):
                mine = e["side"] == side
                keep[side][e["key"][record & mine & duplicate] - 1] = False
            seen[e["key"][record & (e["side"] == POOL) & group_seen] - 1] = True
        return keep, seen

    def lines(self, side: int, keep: Any, start: int = 0) -> Iterator[tuple[bytes, str, bytes]]:
        """(output line, id, label line) of each kept prompt of a side in input order, from the `start`-th kept
        one on (the label line is empty for the pool)."""
        name = "held" if side == HELD else "pool"
        position = -1
        with (
            open(self.dir / f"{name}.jsonl", "rb") as lines,
            open(self.dir / f"{name}.ids", "rb") as ids,
            open(self.dir / "held-labels.jsonl", "rb")
            if side == HELD
            else contextlib.nullcontext() as labels,
        ):
            for index, line in enumerate(lines):
                number = _ID.unpack(ids.read(_ID.size))[0]
                label = labels.readline() if labels is not None else b""
                if not keep[index]:
                    continue
                position += 1
                if position >= start:
                    yield line, f"{number:016x}", label

    def reject_lines(self) -> Iterator[bytes]:
        with open(self.dir / "rejects.jsonl", "rb") as f:
            yield from f

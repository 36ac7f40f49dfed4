"""The streaming prepare writes what loading every prompt into memory would: the same held-out split and files,
labels split off, the same round slices with maxPerRound's wrap-around, duplicates kept once (the first, across
files), rejects with their lines, and in continuous mode the same unseen prompts and recorded ids. The reference
here is the in-memory path (`prompts.load_prompts`, `split`, `round_slice`, contiguous shards)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tao_trainer import prompt_history, prompts, storage
from tao_trainer.contract import StageConfig
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec
from tao_trainer.stages.common import split_sizes
from tao_trainer.stages.prepare import round_slice, run_prepare

LABELS = ["answer"]


def write_prompts(root: Path, n: int, seed: int = 0) -> Path:
    """Two files: plain and chat prompts, labels, extra fields, duplicates within and across files, bad lines."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        prompt: Any = f"q{i}: {rng.random()}" if i % 3 else [{"role": "user", "content": f"chat {i} ü"}]
        rows.append(
            json.dumps({"prompt": prompt, "answer": str(i), "topic": f"t{i % 4}"}, ensure_ascii=False)
        )
    rows[n // 2 : n // 2] = [rows[3], rows[7], "{not json", '{"prompt": ""}', '{"other": 1}']
    half = len(rows) // 2
    (root / "a.jsonl").write_text("\n".join(rows[:half]) + "\n")
    (root / "b.jsonl").write_text("\n".join([rows[1], *rows[half:]]) + "\n")  # a cross-file duplicate
    return root


def spec_for(src: Path, runs: Path, continuous: bool = False, **prompts_over: Any) -> LoopSpec:
    return LoopSpec.model_validate(
        {
            "model": {"uri": "file:///models/base"},
            "prompts": {"uri": src.as_uri(), "heldOutFraction": 0.25, "labelFields": LABELS} | prompts_over,
            "storage": {"uri": runs.as_uri()},
            "generation": {"shards": 3},
            "scoring": {"scorers": [{"type": "regex", "pattern": "."}]},
            "evaluation": {"maxPrompts": 7},
        }
        | ({"continuous": {"minNewPrompts": 1}} if continuous else {})
    )


def public(record: prompts.PromptRecord) -> dict[str, Any]:
    return prompts.strip_fields(record, LABELS).model_dump()


def run(spec: LoopSpec, runs: Path, round_: int) -> tuple[Any, RunLayout]:
    cfg = StageConfig(
        stage="prepare", round=round_, run_uri=(runs / "run").as_uri(), model_uri=spec.model.uri, spec=spec
    )
    return run_prepare(cfg), RunLayout(cfg.run_uri)


@pytest.mark.parametrize(("per_round", "rounds"), [(None, 1), (40, 4), (17, 6)])
def test_outputs_match_the_in_memory_prepare(tmp_path: Path, per_round: int | None, rounds: int) -> None:
    src = write_prompts(tmp_path / "src", 120)
    spec = spec_for(src, tmp_path / "runs", **({"maxPerRound": per_round} if per_round else {}))
    loaded = prompts.load_prompts(src.as_uri())
    pool, held = prompts.split(loaded.records, 0.25)
    for r in range(1, rounds + 1):
        result, lay = run(spec, tmp_path / "runs", r)
        chosen = round_slice(pool, r, per_round)
        shards = [storage.read_jsonl(lay.shard("prompts", r, i)) for i in range(3)]
        starts = [sum(split_sizes(len(chosen), 3)[:i]) for i in range(4)]
        expected = [[public(p) for p in chosen[starts[i] : starts[i + 1]]] for i in range(3)]
        assert shards == expected, f"round {r}"
        assert storage.read_jsonl(lay.heldout(r)) == [public(p) for p in held[:7]]
        assert storage.read_jsonl(lay.heldout_labels(r)) == [
            {"id": p.id, "answer": p.fields["answer"]} for p in held[:7]
        ]
        assert result.counts == {
            "prompts": len(chosen),
            "pool": len(pool),
            "heldOut": 7,
            "rejects": 3,
            "duplicates": loaded.duplicates,
            "files": 2,
        }
        assert loaded.duplicates == 3
        rejects = storage.read_jsonl(lay.rejects(r))
        assert rejects == [rej.model_dump() for rej in loaded.rejects]
    # Byte for byte what storage.write_jsonl writes (non-ASCII kept as is, the same separators).
    reference = (tmp_path / "reference.jsonl").as_uri()
    storage.write_jsonl(reference, [public(p) for p in held[:7]])
    assert storage.read_bytes(lay.heldout(rounds)) == storage.read_bytes(reference)
    assert "ü".encode() in storage.read_bytes(reference)


def test_continuous_rounds_take_only_unseen_prompts_and_record_them(tmp_path: Path) -> None:
    src = write_prompts(tmp_path / "src", 60)
    spec = spec_for(src, tmp_path / "runs", maxPerRound=20, continuous=True)
    loaded = prompts.load_prompts(src.as_uri())
    pool, held = prompts.split(loaded.records, 0.25)
    used: set[str] = set()
    for r in (1, 2):
        result, lay = run(spec, tmp_path / "runs", r)
        expected = round_slice([p for p in pool if p.id not in used], 1, 20)
        got = [row for i in range(3) for row in storage.read_jsonl(lay.shard("prompts", r, i))]
        assert got == [public(p) for p in expected]
        recorded = storage.read_text(lay.new_ids(r)).splitlines()
        assert recorded == sorted({p.id for p in expected} | {p.id for p in held})
        assert set(prompt_history.iter_seen_ids(lay, r + 1)) >= {p.id for p in expected}
        used |= {p.id for p in expected}
        assert result.counts["prompts"] == 20
    # Round 3 takes the last unseen ones; once none is left, prepare says so.
    run(spec, tmp_path / "runs", 3)
    with pytest.raises(ValueError, match="no prompt .* that an earlier round has not used"):
        run(spec, tmp_path / "runs", 4)


def test_no_valid_or_no_held_out_prompt_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "p.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="no valid prompt in 1 file"):
        run(spec_for(bad, tmp_path / "runs"), tmp_path / "runs", 1)
    one = tmp_path / "one"
    one.mkdir()
    (one / "p.jsonl").write_text('{"prompt": "only one"}\n')
    with pytest.raises(ValueError, match="heldOutFraction|held-out set"):
        run(spec_for(one, tmp_path / "runs", heldOutFraction=0.0), tmp_path / "runs", 1)

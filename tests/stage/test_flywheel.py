"""Continuous mode's data side: the watermark, which prompts are new, and the watch stage that waits for them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tao_trainer import prompt_history, storage
from tao_trainer.contract import StageConfig
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec
from tao_trainer.stages.prepare import run_prepare
from tao_trainer.stages.watch import run_watch


def write_prompts(path: Path, texts: list[str], mode: str = "w") -> None:
    with path.open(mode) as f:
        f.writelines(json.dumps({"prompt": t}) + "\n" for t in texts)


def loop_spec(prompts_uri: str, min_new: int = 3) -> LoopSpec:
    return LoopSpec.model_validate(
        {
            "model": {"uri": "file:///unused"},
            "prompts": {"uri": prompts_uri, "heldOutFraction": 0.2},
            "storage": {"uri": "file:///unused"},
            "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
            "continuous": {"interval": "1s", "minNewPrompts": min_new},
        }
    )


def config(spec: LoopSpec, run: Path, round_: int, stage: str = "prepare") -> StageConfig:
    return StageConfig(stage=stage, round=round_, run_uri=run.as_uri(), model_uri="file:///unused", spec=spec)


def shard_prompts(run: Path, round_: int) -> set[str]:
    lay = RunLayout(run.as_uri())
    return {row["prompt"] for row in storage.read_jsonl(lay.shard("prompts", round_, 0))}


def test_only_prompts_no_round_has_seen_count_and_train_the_next_round(tmp_path: Path) -> None:
    data, run = tmp_path / "prompts", tmp_path / "run"
    data.mkdir()
    write_prompts(data / "a.jsonl", [f"old {i}" for i in range(30)])
    spec, lay = loop_spec(data.as_uri()), RunLayout(run.as_uri())
    run_prepare(config(spec, run, 1))
    first = shard_prompts(run, 1)
    assert first and first <= {f"old {i}" for i in range(30)}
    assert prompt_history.count_new(spec, lay, 2) == (0, 0, 0)  # nothing arrived

    # Lines appended to a seen file, a repeat of a seen prompt, a new object with one malformed line.
    write_prompts(data / "a.jsonl", ["appended 1", "appended 2", "old 3"], mode="a")
    write_prompts(data / "captured-0001.jsonl", ["captured 1", "captured 2"])
    with (data / "captured-0001.jsonl").open("a") as f:
        f.write("{not json\n")
    (data / "_SUCCESS").write_text("")  # not a prompt file: ignored
    new, objects, rejects = prompt_history.count_new(spec, lay, 2)
    assert (new, objects, rejects) == (4, 2, 1)

    run_prepare(config(spec, run, 2))
    second = shard_prompts(run, 2)
    assert second and second <= {"appended 1", "appended 2", "captured 1", "captured 2"}
    assert not second & first
    # Round 2's watermark and ids now count as seen: nothing is new for round 3.
    assert prompt_history.count_new(spec, lay, 3) == (0, 0, 0)


def test_the_watch_polls_until_enough_new_prompts_arrived(tmp_path: Path) -> None:
    data, run = tmp_path / "prompts", tmp_path / "run"
    data.mkdir()
    write_prompts(data / "a.jsonl", [f"old {i}" for i in range(10)])
    spec = loop_spec(data.as_uri(), min_new=4)
    run_prepare(config(spec, run, 1))
    write_prompts(data / "b.jsonl", ["new 1", "new 2"])
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # prompts keep arriving while the watch waits
        sleeps.append(seconds)
        write_prompts(data / f"c{len(sleeps)}.jsonl", [f"later {len(sleeps)}"])

    result = run_watch(config(spec, run, 2, "watch"), sleep=sleep)
    assert result.ok and result.counts["newPrompts"] == 4 and result.counts["polls"] == 3
    assert sleeps == [1, 1]  # continuous.interval, between polls


def test_object_versions_on_s3_change_with_the_object(s3_bucket: str) -> None:
    prefix = f"s3://{s3_bucket}/flywheel/prompts/"
    storage.write_text(prefix + "a.jsonl", '{"prompt": "x"}\n')
    storage.write_text(prefix + "sub/b.jsonl", '{"prompt": "y"}\n')
    before = storage.list_versions(prefix)
    assert sorted(before) == [prefix + "a.jsonl", prefix + "sub/b.jsonl"]
    assert storage.list_versions(prefix + "a.jsonl") == {prefix + "a.jsonl": before[prefix + "a.jsonl"]}
    storage.write_text(prefix + "a.jsonl", '{"prompt": "x"}\n{"prompt": "z"}\n')
    after: dict[str, Any] = storage.list_versions(prefix)
    assert prompt_history.changed_objects(after, before) == [prefix + "a.jsonl"]
    assert storage.list_versions(f"s3://{s3_bucket}/flywheel/nothing-here/") == {}


def test_the_watch_rides_out_a_storage_outage_but_not_a_location_that_never_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, run = tmp_path / "prompts", tmp_path / "run"
    data.mkdir()
    write_prompts(data / "a.jsonl", [f"old {i}" for i in range(10)])
    spec = loop_spec(data.as_uri(), min_new=1)
    run_prepare(config(spec, run, 1))
    write_prompts(data / "b.jsonl", ["new"])
    real, outage = storage.list_versions, {"polls": 2}

    def flaky(uri: str) -> dict[str, str]:
        if outage["polls"] > 0:
            outage["polls"] -= 1
            raise ConnectionError("endpoint unreachable")
        return real(uri)

    monkeypatch.setattr(storage, "list_versions", flaky)
    result = run_watch(config(spec, run, 2, "watch"), sleep=lambda _: None)
    assert result.counts["newPrompts"] == 1 and result.counts["polls"] == 3

    outage["polls"] = 10**6
    with pytest.raises(RuntimeError, match=r"unreadable in 10 polls in a row: endpoint unreachable"):
        run_watch(config(spec, run, 2, "watch"), sleep=lambda _: None)

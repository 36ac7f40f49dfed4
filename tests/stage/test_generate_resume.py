"""A generate pod killed mid-shard resumes from the parts it saved: finished parts are not sampled again, and
the shard it writes is the one an uninterrupted run writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tao_trainer import storage
from tao_trainer.contract import StageConfig
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec
from tao_trainer.stages.generate import finished_part

pytestmark = pytest.mark.filterwarnings("ignore")

PART = 2


def _config(tiny_model: Path, prompts: Path, run: Path, **generation: Any) -> StageConfig:
    spec = LoopSpec.model_validate(
        {
            "model": {"uri": tiny_model.as_uri()},
            "prompts": {"uri": prompts.as_uri(), "heldOutFraction": 0.2},
            "storage": {"uri": run.parent.as_uri()},
            "generation": {"candidates": 3, "maxNewTokens": 8, "partSize": PART, "batchSize": 8} | generation,
            "scoring": {"scorers": [{"type": "regex", "pattern": r"\d"}]},
        }
    )
    return StageConfig(stage="generate", round=1, run_uri=run.as_uri(), model_uri=spec.model.uri, spec=spec)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"{a} times {b} is"}) + "\n" for a in range(6) for b in range(6))
    )
    return path


def _prepare(cfg: StageConfig) -> None:
    from tao_trainer.cli import _runner

    _runner("prepare")(cfg.model_copy(update={"stage": "prepare"}))


def _kill_after_first_part(cfg: StageConfig, tmp_path: Path) -> None:
    """`tao-stage generate` in a process of its own, killed (SIGKILL, as the kubelet does after the grace period)
    as soon as its first part is on disk."""
    cfg_path = tmp_path / "generate.json"
    cfg_path.write_text(cfg.model_dump_json(by_alias=True))
    first = Path(RunLayout(cfg.run_uri).shard_part(1, 0, 0).removeprefix("file://"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tao_trainer.cli", "generate", "--config", str(cfg_path)],
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while not first.exists():
            if proc.poll() is not None:
                pytest.fail(f"generate exited ({proc.returncode}) before writing its first part")
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def test_a_killed_generate_resumes_from_its_parts_and_writes_the_same_shard(
    tiny_model: Path, prompts: Path, tmp_path: Path
) -> None:
    from tao_trainer.cli import _runner

    cfg = _config(tiny_model, prompts, tmp_path / "runs" / "killed")
    lay = RunLayout(cfg.run_uri)
    _prepare(cfg)
    total = len(storage.read_jsonl(lay.shard("prompts", 1, 0)))
    assert total > 8 * PART

    _kill_after_first_part(cfg, tmp_path)
    assert not storage.exists(lay.shard("candidates", 1, 0)), "the shard is written only once it is whole"
    parts_dir = Path(lay.shard_part(1, 0, 0).removeprefix("file://")).parent
    saved = sorted(parts_dir.glob("part-*.jsonl"))
    done = sum(len(storage.read_jsonl(p.as_uri())) for p in saved)
    assert 1 <= len(saved) < total // PART and done == PART * len(saved)

    again = _runner("generate")(cfg)
    assert again.ok
    assert (again.counts["promptsFromParts"], again.counts["promptsSampled"]) == (done, total - done)
    assert not list(parts_dir.glob("part-*.jsonl")), "parts go once the whole shard holds them"

    reference_cfg = _config(tiny_model, prompts, tmp_path / "runs" / "whole")
    _prepare(reference_cfg)
    whole = _runner("generate")(reference_cfg)
    assert (whole.counts["promptsFromParts"], whole.counts["promptsSampled"]) == (0, total)
    resumed = storage.read_jsonl(lay.shard("candidates", 1, 0))
    assert resumed == storage.read_jsonl(RunLayout(reference_cfg.run_uri).shard("candidates", 1, 0))
    assert all(len(row["candidates"]) == 3 for row in resumed)


def test_a_part_left_by_other_settings_is_sampled_again(
    tiny_model: Path, prompts: Path, tmp_path: Path
) -> None:
    from tao_trainer.cli import _runner

    cfg = _config(tiny_model, prompts, tmp_path / "runs" / "r")
    lay = RunLayout(cfg.run_uri)
    _prepare(cfg)
    chunk = storage.read_jsonl(lay.shard("prompts", 1, 0))[:PART]
    # A part from a run with another partSize (three prompts) and one with fewer candidates per prompt.
    wider = [{**rec, "candidates": ["x"] * 3} for rec in storage.read_jsonl(lay.shard("prompts", 1, 0))[:3]]
    fewer = [{**rec, "candidates": ["x"]} for rec in chunk]
    for stale in (wider, fewer):
        storage.write_jsonl(lay.shard_part(1, 0, 0), stale)
        assert finished_part(lay.shard_part(1, 0, 0), chunk, candidates=3) is None
    result = _runner("generate")(cfg)
    assert result.counts["promptsFromParts"] == 0
    first = storage.read_jsonl(lay.shard("candidates", 1, 0))[:PART]
    assert all(c != "x" for row in first for c in row["candidates"])


def test_a_part_size_that_is_a_multiple_of_the_batch_size_samples_what_one_go_samples(
    tiny_model: Path, prompts: Path, tmp_path: Path
) -> None:
    """partSize is a checkpointing knob, not a sampling setting: 8-prompt parts (the batch size) and one part for
    the whole shard give the same candidates, so results do not depend on how often progress is saved."""
    from tao_trainer.cli import _runner

    shards = []
    for name, part_size in (("parts", 8), ("one-go", 1000)):
        cfg = _config(tiny_model, prompts, tmp_path / "runs" / name, partSize=part_size, temperature=1.0)
        _prepare(cfg)
        result = _runner("generate")(cfg)
        assert result.counts["promptsSampled"] > 8
        shards.append(storage.read_jsonl(RunLayout(cfg.run_uri).shard("candidates", 1, 0)))
    assert shards[0] == shards[1]
    assert len({c for row in shards[0] for c in row["candidates"]}) > len(shards[0])  # sampled, not greedy

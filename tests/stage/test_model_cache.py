"""One model download per round on a shared cache (`spec.storage.cache`): the round's stages run as separate
processes, as their pods do (four generate shards at once, then score, train, evaluate), on S3 storage and one
cache directory standing in for the volume. Their results' byte counters show the base model pulled once, and
the trained model not at all (train caches what it uploads, evaluate reads it there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from stage import test_stages as stage_tests
from stage.test_stages import loop_spec

from tao_trainer import storage
from tao_trainer.contract import StageConfig
from tao_trainer.spec import LoopSpec

pytestmark = pytest.mark.filterwarnings("ignore")

workspace = stage_tests.workspace  # the fixture, shared with the other stage tests
SHARDS = 4


def stage(cfg: StageConfig, work: Path, cache: Path, index: int | None = None) -> subprocess.Popen[str]:
    """`tao-stage STAGE` as a pod runs it: its own process, the config in a file, the shared cache."""
    name = f"{cfg.stage}-{index}" if index is not None else cfg.stage
    (work / f"{name}.json").write_text(cfg.model_dump_json(by_alias=True))
    env = os.environ | {"TAO_CACHE_DIR": str(cache), "HOME": str(work), "HF_HUB_OFFLINE": "1"}
    if index is not None:
        env["JOB_COMPLETION_INDEX"] = str(index)
    cmd = [sys.executable, "-m", "tao_trainer.cli", cfg.stage, "--config", str(work / f"{name}.json")]
    cmd += ["--result", str(work / f"{name}.result.json")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], work: Path, name: str) -> dict[str, Any]:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return dict(json.loads((work / f"{name}.result.json").read_text())["counts"])


def test_a_round_pulls_the_model_once_on_a_shared_cache(
    workspace: dict[str, Path], s3_bucket: str, tmp_path: Path
) -> None:
    base_uri = f"s3://{s3_bucket}/models/base"
    storage.upload_dir(workspace["model"], base_uri)
    model_bytes = sum(p.stat().st_size for p in workspace["model"].rglob("*") if p.is_file())
    doc = loop_spec(
        workspace["model"],
        workspace["prompts"],
        workspace["runs"],
        generation={"candidates": 2, "maxNewTokens": 4, "shards": SHARDS, "batchSize": 8},
    ).model_dump(by_alias=True, exclude_none=True)
    doc["model"]["uri"], doc["storage"]["uri"] = base_uri, f"s3://{s3_bucket}/runs"
    spec = LoopSpec.model_validate(doc)
    run_uri = f"s3://{s3_bucket}/runs/ns/job/uid"
    work, cache = tmp_path / "work", tmp_path / "volume"
    work.mkdir()

    def cfg(name: str) -> StageConfig:
        return StageConfig(stage=name, round=1, run_uri=run_uri, model_uri=base_uri, spec=spec)

    counts = {"prepare": finish(stage(cfg("prepare"), work, cache), work, "prepare")}
    shards = [stage(cfg("generate"), work, cache, i) for i in range(SHARDS)]  # at once, as an Indexed Job
    counts |= {f"generate-{i}": finish(p, work, f"generate-{i}") for i, p in enumerate(shards)}
    for name in ("score", "train", "evaluate"):
        counts[name] = finish(stage(cfg(name), work, cache), work, name)

    pulled = {name: c.get("treesPulled", 0) for name, c in counts.items()}
    assert sum(pulled.values()) == 1, pulled  # the base model, by whichever stage came first
    assert sum(c.get("treeBytesPulled", 0) for c in counts.values()) == model_bytes
    hits = {name: c.get("treeCacheHits", 0) for name, c in counts.items()}
    # Every shard loaded the model: one from storage, the others from the cache (they waited for it).
    assert all(pulled[f"generate-{i}"] + hits[f"generate-{i}"] == 1 for i in range(SHARDS)), (pulled, hits)
    assert hits["train"] >= 1  # the base model, from the cache
    assert hits["evaluate"] >= 2  # the base model (champion) and the trained one (cached by train)
    # Every stage still read its inputs from storage: the counter of object bytes moved for all of them.
    assert all(c.get("bytesPulled", 0) > 0 for name, c in counts.items() if name != "prepare")

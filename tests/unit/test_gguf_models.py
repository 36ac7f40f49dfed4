"""GGUF model URIs without a model: where the converted folder goes, which dtype, reuse, and clear refusals.
(tests/e2e/test_real_llm.py converts a real one.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tao_trainer import gguf_models, models


def fake_converted(root: Path, gguf: Path, dtype: str) -> Path:
    target = root / gguf_models.folder_name(gguf, dtype)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    return target


def test_a_converted_folder_is_reused_per_file_and_dtype(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gguf = tmp_path / "m.Q4_1.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.setenv("TAO_MODELS_DIR", str(tmp_path / "run" / "models"))
    monkeypatch.delenv("TAO_GGUF_DTYPE", raising=False)
    monkeypatch.delenv("TAO_GGUF_DTYPES", raising=False)
    bf16 = fake_converted(tmp_path / "run" / "models", gguf, "bfloat16")
    f32 = fake_converted(tmp_path / "run" / "models", gguf, "float32")
    assert models.resolve(gguf.as_uri()) == str(bf16)  # the default dtype; no conversion: the folder is there
    monkeypatch.setenv("TAO_GGUF_DTYPE", "float32")
    assert models.resolve(gguf.as_uri()) == str(f32)
    # A teacher's own dtype, by URI, wins over the model's.
    monkeypatch.setenv("TAO_GGUF_DTYPES", json.dumps({gguf.as_uri(): "bfloat16"}))
    assert models.resolve(gguf.as_uri()) == str(bf16)
    assert bf16.name.startswith("m.Q4_1-bfloat16-")


def test_refusals_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        models.resolve((tmp_path / "missing.gguf").as_uri())
    with pytest.raises(ValueError, match="not a hub id"):
        gguf_models.resolve_gguf("hf://org/model.gguf")
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="expected one of"):
        gguf_models.resolve_gguf((tmp_path / "x.gguf").as_uri(), dtype="int8")


def test_stage_entrypoint_puts_conversions_in_the_runs_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    from tao_trainer.cli import gguf_env
    from tao_trainer.contract import StageConfig

    for var in ("TAO_MODELS_DIR", "TAO_GGUF_DTYPE", "TAO_GGUF_DTYPES"):
        monkeypatch.delenv(var, raising=False)
    cfg = StageConfig.model_validate(
        {
            "stage": "generate",
            "round": 1,
            "runUri": "file:///runs/ns/job/uid",
            "modelUri": "file:///m.gguf",
            "spec": {
                "model": {"uri": "file:///m.gguf", "ggufDtype": "float16"},
                "prompts": {"uri": "file:///p.jsonl"},
                "storage": {"uri": "file:///runs"},
                "scoring": {"scorers": [{"type": "regex", "pattern": "x"}]},
            },
        }
    )
    gguf_env(cfg)
    assert os.environ["TAO_MODELS_DIR"] == "/runs/ns/job/uid/models"
    assert os.environ["TAO_GGUF_DTYPE"] == "float16"

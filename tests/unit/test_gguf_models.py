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
    monkeypatch.delenv("TAO_GGUF_STORE", raising=False)
    bf16 = fake_converted(tmp_path / "run" / "models", gguf, "bfloat16")
    f32 = fake_converted(tmp_path / "run" / "models", gguf, "float32")
    assert models.resolve(gguf.as_uri()) == str(bf16)  # the default dtype; no conversion: the folder is there
    monkeypatch.setenv("TAO_GGUF_DTYPE", "float32")
    assert models.resolve(gguf.as_uri()) == str(f32)
    # A teacher's own dtype, by URI, wins over the model's.
    monkeypatch.setenv("TAO_GGUF_DTYPES", json.dumps({gguf.as_uri(): "bfloat16"}))
    assert models.resolve(gguf.as_uri()) == str(bf16)
    assert bf16.name.startswith("m.Q4_1-bfloat16-")


def test_refusals_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAO_GGUF_STORE", raising=False)
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

    for var in ("TAO_MODELS_DIR", "TAO_GGUF_DTYPE", "TAO_GGUF_DTYPES", "TAO_GGUF_STORE"):
        monkeypatch.setenv(var, "")  # recorded, so that what gguf_env sets is undone after the test
        monkeypatch.delenv(var)
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
    assert os.environ["TAO_GGUF_STORE"] == "file:///runs/ns/job/uid/models"
    assert os.environ["TAO_GGUF_DTYPE"] == "float16"


def test_in_a_runs_store_a_recorded_conversion_is_reused_and_a_changed_file_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The record beside the stored folder decides; a real conversion is in tests/e2e/test_real_llm.py."""
    from tao_trainer import storage

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    store = f"file://{tmp_path}/run/models"
    monkeypatch.setenv("TAO_GGUF_STORE", store)
    monkeypatch.setenv("TAO_CACHE_DIR", str(tmp_path / "cache"))
    folder = gguf_models.stored_folder(store, gguf.as_uri(), "bfloat16")
    storage.write_json(folder + "/config.json", {})
    record = {
        "source": gguf.as_uri(),
        "version": gguf_models.source_version(gguf.as_uri()),
        "dtype": "bfloat16",
    }
    storage.write_json(folder + ".source.json", record)
    assert models.resolve(gguf.as_uri()) == folder.removeprefix("file://")

    # Rewritten: its version no longer matches the record, so it is converted again (and this is no model).
    capsys.readouterr()
    gguf.write_bytes(b"GGUF, another file")
    with pytest.raises(Exception):  # noqa: B017 - whatever the GGUF reader says of 18 bytes
        models.resolve(gguf.as_uri())
    assert "converting" in capsys.readouterr().err
    assert storage.read_json(folder + ".source.json") == record  # a failed conversion stores nothing


def test_serving_a_gguf_base_reads_the_runs_conversion_and_a_rounds_model_does_not() -> None:
    from tao_operator.api import TAOJob
    from tao_operator.builders.common import OperatorDefaults
    from tao_operator.builders.serving import serving_deployment

    job = TAOJob.model_validate(
        {
            "apiVersion": "tao.dev/v1alpha1",
            "kind": "TAOJob",
            "metadata": {"name": "smol", "namespace": "ns", "uid": "u1"},
            "spec": {
                "model": {"uri": "s3://m/SmolLM2.gguf", "ggufDtype": "float16"},
                "prompts": {"uri": "s3://d/p.jsonl"},
                "storage": {"uri": "s3://runs"},
                "scoring": {"scorers": [{"type": "regex", "pattern": "x"}]},
            },
        }
    )

    def download_command(model_uri: str, round_: int) -> list[str]:
        deployment = serving_deployment(job, model_uri, round_, OperatorDefaults())
        (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
        return list(init["command"])

    base = download_command("s3://m/SmolLM2.gguf", 0)
    assert base[base.index("--gguf-store") + 1] == "s3://runs/ns/smol/u1/models"
    assert base[base.index("--gguf-dtype") + 1] == "float16"
    assert "--gguf-store" not in download_command("s3://runs/ns/smol/u1/round-001/train/model", 1)

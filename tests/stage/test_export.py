"""`spec.export`: a promoted champion is published where a user loads it without tao (full weights, an adapter
naming its base, or the adapter merged), `latest.json` names the newest, and the Hub push fails clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from stage import test_stages as stage_tests
from stage.test_stages import config, run_through

from tao_trainer import export, models, storage
from tao_trainer.cli import _runner
from tao_trainer.spec import ExportSpec

pytestmark = pytest.mark.filterwarnings("ignore")

workspace = stage_tests.workspace  # the fixture, shared with the other stage tests

STAGES = ("prepare", "generate", "score", "train", "evaluate")
ADAPTER = {"r": 4, "alpha": 8, "targetModules": ["c_attn"], "merge": False}
IDS = [[1, 2, 3, 4, 5]]


def _logits(model: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(torch.tensor(IDS)).logits


def _path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_a_promoted_round_exports_the_champion_and_a_rejected_one_does_not(
    workspace: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    exports = tmp_path / "exports"
    results = run_through(workspace, *STAGES, export={"uri": exports.as_uri()})
    evaluate, train = results["evaluate"], results["train"]
    assert evaluate.promoted, evaluate.message  # the stage tests force promotion (minImprovement: -1)
    dest = exports / "round-001"
    assert evaluate.outputs["export"] == dest.as_uri()

    record = json.loads((dest / export.EXPORT_FILE).read_text())
    assert record["round"] == 1 and record["format"] == "full" and record["source"] == train.outputs["model"]
    report = storage.read_json(evaluate.outputs["report"])
    assert report["export"] == record
    # The held-out figures of the exported model, as the gate measured them.
    assert record["metrics"]["accuracy"] == report["metrics"]["challenger.accuracy"]
    assert json.loads((exports / export.LATEST_FILE).read_text()) == record
    # Loads without tao, and is the challenger the round trained.
    exported = AutoModelForCausalLM.from_pretrained(dest)
    trained = AutoModelForCausalLM.from_pretrained(_path(train.outputs["model"]))
    assert _logits(exported).equal(_logits(trained))

    # A re-run of the same evaluate that the gate rejects exports nothing and reports no export.
    rejected = _runner("evaluate")(
        config(workspace, "evaluate", export={"uri": exports.as_uri()}, evaluation={"minImprovement": 5.0})
    )
    assert rejected.promoted is False and "export" not in rejected.outputs
    assert storage.read_json(rejected.outputs["report"])["export"] is None


def test_an_adapter_champion_exports_as_trained_or_merged(workspace: dict[str, Path], tmp_path: Path) -> None:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    training = {"learningRate": 1e-2, "lora": ADAPTER}
    exports = tmp_path / "exports"
    results = run_through(workspace, *STAGES, training=training, export={"uri": exports.as_uri()})
    assert results["evaluate"].promoted, results["evaluate"].message
    source = _path(results["train"].outputs["model"])
    expected = _logits(models.load_causal_lm(str(source)))  # base + adapter, as tao evaluates it
    assert not expected.equal(_logits(models.load_causal_lm(str(workspace["model"]))))  # the adapter matters

    dest = exports / "round-001"
    record = json.loads((dest / export.EXPORT_FILE).read_text())
    assert record["format"] == "adapter" and record["base"] == workspace["model"].as_uri()
    # peft's own loader finds the base by the name the export wrote, not the training pod's local path.
    assert json.loads((dest / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        workspace["model"]
    )
    assert not (dest / "config.json").exists()
    assert _logits(AutoPeftModelForCausalLM.from_pretrained(dest)).allclose(expected, atol=1e-5)

    merged_spec = ExportSpec(uri=(tmp_path / "merged").as_uri(), format="merged")
    merged = export.export_champion(merged_spec, source.as_uri(), 1, {})
    assert merged["format"] == "merged" and merged["base"] == workspace["model"].as_uri()
    merged_dir = _path(merged["uri"])
    assert (merged_dir / "config.json").exists() and not (merged_dir / "adapter_config.json").exists()
    assert not (merged_dir / models.ADAPTER_BASE_FILE).exists()  # a plain model: tao loads it as one too
    assert _logits(AutoModelForCausalLM.from_pretrained(merged_dir)).allclose(expected, atol=1e-5)


def test_export_to_s3_keeps_latest_on_the_newest_round(s3_bucket: str, tiny_model: Path) -> None:
    spec = ExportSpec(uri=f"s3://{s3_bucket}/exports/bot")
    export.export_champion(spec, tiny_model.as_uri(), 3, {"accuracy": 0.5})
    export.export_champion(spec, tiny_model.as_uri(), 2, {"accuracy": 0.4})  # an older round, re-run
    files = storage.list_uris(f"s3://{s3_bucket}/exports/bot/round-003")
    assert {Path(u).name for u in files} >= {"config.json", "model.safetensors", export.EXPORT_FILE}
    latest = storage.read_json(f"s3://{s3_bucket}/exports/bot/{export.LATEST_FILE}")
    assert latest["round"] == 3 and latest["uri"] == f"s3://{s3_bucket}/exports/bot/round-003"
    assert storage.exists(f"s3://{s3_bucket}/exports/bot/round-002/{export.EXPORT_FILE}")


def test_a_hub_export_without_its_token_fails_naming_the_variable(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TAO_EXPORT_HUB_TOKEN", raising=False)
    spec = ExportSpec(uri=(tmp_path / "e").as_uri(), hub={"repo": "acme/support-bot"})
    with pytest.raises(RuntimeError, match=r"TAO_EXPORT_HUB_TOKEN \(export\.hub\.tokenEnv\) is not set"):
        export.export_champion(spec, tiny_model.as_uri(), 1, {})
    # The storage export is done before the push: a user who fixes the token loses nothing.
    assert (tmp_path / "e" / "round-001" / export.EXPORT_FILE).exists()


def test_a_failed_hub_push_names_the_repo_and_never_the_token(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "hf_" + "Zq9" * 12
    monkeypatch.setenv("HUB_WRITE", token)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub = {
        "repo": "acme/support-bot",
        "tokenEnv": "HUB_WRITE",
        "endpoint": "http://127.0.0.1:9",
    }  # nothing listens
    spec = ExportSpec(uri=(tmp_path / "e").as_uri(), hub=hub)
    with pytest.raises(
        RuntimeError, match=r"export\.hub: pushing round 1 to 'acme/support-bot' failed"
    ) as err:
        export.export_champion(spec, tiny_model.as_uri(), 1, {})
    assert token not in str(err.value) and err.value.__cause__ is None


@pytest.mark.parametrize(
    ("export_doc", "message"),
    [
        ({"uri": "ftp://host/x"}, "export uri 'ftp://host/x' must start with one of"),
        ({"uri": "s3://bucket/../other"}, "export uri"),
        ({"uri": "file:///x", "format": "gguf"}, "format"),
        ({"uri": "file:///x", "hub": {"repo": "no-owner"}}, "repo"),
        ({"uri": "file:///x", "hub": {"repo": "a/b", "tokenEnv": "HF TOKEN"}}, "tokenEnv"),
    ],
)
def test_a_bad_export_spec_is_refused_naming_the_field(export_doc: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        ExportSpec.model_validate(export_doc)

"""`training.lora.merge: false` across rounds on the tiny model: every round continues the champion's adapter over
the run's original base, records that base, and generates and evaluates as base + adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from stage import test_stages as stage_tests
from stage.test_stages import config

from tao_trainer import models, storage
from tao_trainer.cli import _runner
from tao_trainer.layout import RunLayout
from tao_trainer.stages.train import training_model

pytestmark = pytest.mark.filterwarnings("ignore")

workspace = stage_tests.workspace  # the fixture, shared with the other stage tests

LORA = {"r": 4, "alpha": 8, "targetModules": ["c_attn"], "merge": False}
TRAINING = {"method": "sft", "learningRate": 1e-2, "batchSize": 4, "sft": {"minScore": 0.0}, "lora": LORA}


def _round(ws: dict[str, Path], round_: int, champion: str, **training: Any) -> dict[str, Any]:
    """One round's stages with `champion` as the model generated from and trained on."""
    results = {}
    for stage in ("prepare", "generate", "score", "train", "evaluate"):
        cfg = config(ws, stage, round_, model_uri=champion, training=TRAINING | training)
        results[stage] = _runner(stage)(cfg)
    return results


def _lora_b(model_dir: Path) -> Any:
    from safetensors.torch import load_file

    weights = load_file(model_dir / "adapter_model.safetensors")
    return {k: v for k, v in weights.items() if "lora_B" in k}


def test_three_unmerged_rounds_keep_one_adapter_over_the_original_base(workspace: dict[str, Path]) -> None:
    import torch

    base_uri = workspace["model"].as_uri()
    champion, adapters = base_uri, []
    for round_ in (1, 2, 3):
        res = _round(workspace, round_, champion)
        train = res["train"]
        assert train.ok and train.counts["steps"] >= 1, train
        assert res["evaluate"].ok, res["evaluate"]
        model_dir = Path(train.outputs["model"].removeprefix("file://"))
        # An adapter, never a full model; its recorded base is the original one, not the previous adapter.
        assert (model_dir / "adapter_config.json").exists() and not (model_dir / "config.json").exists()
        assert json.loads((model_dir / models.ADAPTER_BASE_FILE).read_text()) == {"uri": base_uri}
        assert models.adapter_base_uri(str(model_dir)) == base_uri
        adapters.append(model_dir)
        champion = train.outputs["model"]  # forced promotion: the next round starts from this adapter

    # Round 2 continued round 1's adapter (same modules, further trained), not a new one stacked on it: what the
    # train stage hands TRL for an adapter champion is that adapter, trainable, its weights as round 1 left them.
    first, second = _lora_b(adapters[0]), _lora_b(adapters[1])
    assert first.keys() == second.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)
    model, weights = training_model(str(adapters[0]), lora=True)
    assert weights == str(workspace["model"])
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    loaded_b = sorted(p.detach().abs().sum().item() for n, p in trainable.items() if "lora_B" in n)
    assert loaded_b == pytest.approx(sorted(v.abs().sum().item() for v in first.values()))
    config_2 = json.loads((adapters[1] / "adapter_config.json").read_text())
    assert config_2["r"] == 4 and config_2["target_modules"] == ["c_attn"]

    # Round 3's adapter loads on the original base and changes its outputs.
    plain = models.load_causal_lm(str(workspace["model"]))
    adapted = models.load_causal_lm(str(adapters[2]))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits, adapted(ids).logits)
    # Generation in round 3 ran from round 2's adapter.
    lay = RunLayout(config(workspace, "evaluate").run_uri)
    assert storage.read_jsonl(lay.shard("candidates", 3, 0))


def test_a_merged_round_after_an_adapter_champion_writes_a_full_model(workspace: dict[str, Path]) -> None:
    first = _round(workspace, 1, workspace["model"].as_uri())["train"]
    res = _round(workspace, 2, first.outputs["model"], lora=LORA | {"merge": True})["train"]
    model_dir = Path(res.outputs["model"].removeprefix("file://"))
    assert (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists()
    assert not (model_dir / models.ADAPTER_BASE_FILE).exists()


@pytest.mark.parametrize("method", ["dpo", "grpo"])
def test_dpo_and_grpo_continue_an_adapter_champion(workspace: dict[str, Path], method: str) -> None:
    first = _round(workspace, 1, workspace["model"].as_uri())["train"]
    training = TRAINING | {"method": method, "dpo": {"minMargin": 0.1}, "epochs": 1}
    # The round's own stages up to train (GRPO's majority vote needs generate's candidates).
    spec = config(workspace, "train", 2, training=training).spec
    stages = spec.stages(2)[: spec.stages(2).index("train") + 1]
    for stage in stages:
        res = _runner(stage)(config(workspace, stage, 2, model_uri=first.outputs["model"], training=training))
    assert res.ok and res.counts["steps"] >= 1, res
    model_dir = Path(res.outputs["model"].removeprefix("file://"))
    assert models.adapter_base_uri(str(model_dir)) == workspace["model"].as_uri()
    assert _lora_b(model_dir).keys() == _lora_b(Path(first.outputs["model"].removeprefix("file://"))).keys()


def test_a_cpu_train_stage_refuses_qlora_naming_the_field(workspace: dict[str, Path]) -> None:
    lora = LORA | {"quantization": "4bit"}
    with pytest.raises(ValueError, match=r"training\.lora\.quantization: 4bit \(QLoRA\) needs a GPU"):
        _runner("train")(config(workspace, "train", 1, training=TRAINING | {"lora": lora}))

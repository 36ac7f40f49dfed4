"""training.grpo's loss settings reach TRL's GRPOConfig under TRL's meaning, and bad values are refused early."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tao_trainer.spec.loop import TrainingSpec
from tao_trainer.stages.train import grpo_loss_args


def test_the_loss_settings_are_trl_grpo_config_fields_with_trls_defaults(tmp_path: Path) -> None:
    from trl import GRPOConfig

    # Unset, each is TRL's own default: a spec that says nothing trains as TRL would (beta aside: ours is 0.04).
    ours = GRPOConfig(output_dir=str(tmp_path), bf16=False, **grpo_loss_args(TrainingSpec()))
    trls = GRPOConfig(output_dir=str(tmp_path), bf16=False)
    for field in ("loss_type", "scale_rewards", "epsilon", "epsilon_high"):
        assert getattr(ours, field) == getattr(trls, field), field
    assert ours.beta == 0.04

    spec = TrainingSpec.model_validate(
        {"grpo": {"lossType": "dr_grpo", "scaleRewards": "none", "epsilon": 0.1, "epsilonHigh": 0.28}}
    )
    config = GRPOConfig(output_dir=str(tmp_path), bf16=False, **grpo_loss_args(spec))
    assert (config.loss_type, config.scale_rewards, config.epsilon, config.epsilon_high) == (
        "dr_grpo",
        "none",
        0.1,
        0.28,
    )


@pytest.mark.parametrize(
    ("grpo", "field"),
    [
        ({"lossType": "ppo"}, "lossType"),
        ({"scaleRewards": True}, "scaleRewards"),
        ({"epsilon": 0}, "epsilon"),
        ({"epsilonHigh": -0.1}, "epsilonHigh"),
    ],
)
def test_a_setting_trl_would_refuse_or_misread_is_refused_by_name(
    grpo: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        TrainingSpec.model_validate({"grpo": grpo})
    assert field in str(refused.value)


def test_the_crd_offers_the_loss_settings() -> None:
    from tao_operator.crd import render_crd

    spec = render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    grpo = spec["properties"]["training"]["properties"]["grpo"]["properties"]
    assert grpo["lossType"]["enum"] == ["dapo", "grpo", "dr_grpo", "bnpo"]
    assert grpo["scaleRewards"]["enum"] == ["group", "batch", "none"]
    assert {"epsilon", "epsilonHigh"} <= set(grpo)

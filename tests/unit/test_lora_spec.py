"""`training.lora.quantization`: QLoRA is accepted in the schema for GPUs, and only for unmerged adapters."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tao_trainer.spec import LoopSpec


def _spec(lora: dict[str, Any]) -> LoopSpec:
    return LoopSpec.model_validate(
        {
            "model": {"uri": "s3://b/model"},
            "prompts": {"uri": "s3://b/prompts.jsonl"},
            "storage": {"uri": "s3://b/runs"},
            "scoring": {"scorers": [{"type": "regex", "pattern": "x"}]},
            "training": {"lora": lora},
        }
    )


def test_4bit_is_accepted_for_an_unmerged_adapter() -> None:
    lora = _spec({"quantization": "4bit", "merge": False}).training.lora
    assert lora is not None and lora.quantization == "4bit"
    assert _spec({}).training.lora.quantization is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("lora", "error"),
    [
        ({"quantization": "4bit"}, "needs training.lora.merge: false"),  # merge defaults to true
        ({"quantization": "8bit", "merge": False}, "4bit"),
    ],
)
def test_unsupported_quantization_is_refused_naming_the_field(lora: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        _spec(lora)

"""`training.lora`: train a LoRA adapter (peft) instead of every weight, optionally over a 4-bit base (QLoRA)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tao_trainer.spec.base import CamelModel


class LoraSpec(CamelModel):
    """Train a LoRA adapter (peft) instead of every weight."""

    r: int = Field(default=16, ge=1, le=4096, description="Rank.")
    alpha: int = Field(default=32, ge=1, le=65536, description="Scaling numerator (lora_alpha).")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="Dropout on the adapter.")
    target_modules: list[str] | str = Field(default="all-linear", description="Modules to adapt.")
    merge: bool = Field(
        default=True,
        description="Merge the adapter into the weights when saving (simplest to serve); false keeps the "
        "adapter alone (small artifacts, served with vLLM --enable-lora).",
    )
    quantization: Literal["4bit"] | None = Field(
        default=None,
        description="4bit: QLoRA, the base loaded in 4-bit NF4 (bitsandbytes, double quantization, bf16 compute) "
        "under a bf16 adapter: an 8B model trains in ~10 GB of GPU memory. GPUs only (a train stage on the CPU "
        "refuses it); needs merge: false (an adapter merged into 4-bit weights would lose precision).",
    )

    @model_validator(mode="after")
    def _quantized_adapters_stay_unmerged(self) -> LoraSpec:
        if self.quantization is not None and self.merge:
            raise ValueError(
                "training.lora.quantization: 4bit needs training.lora.merge: false (the adapter is served over "
                "the full-precision base; merging it into 4-bit weights would lose precision)"
            )
        return self

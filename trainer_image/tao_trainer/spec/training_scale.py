"""How training scales to large models: the parallel strategy, gradient checkpointing, checkpoints to storage.

These are fields of `training` (TrainingSpec); the nodes a train stage spans are a pod setting
(`pods.train.nodes`), since only the cluster executor can give it more than one machine.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tao_trainer.spec.base import CamelModel

Strategy = Literal["ddp", "fsdp", "deepspeed-zero3"]

STRATEGY_DESCRIPTION = (
    "How the training processes share the work (an accelerate config the train stage writes): ddp, a full copy "
    "of the model per GPU (fits when weights, gradients and Adam states fit one GPU, i.e. small models or "
    "LoRA); fsdp, PyTorch FSDP full sharding of weights, gradients and optimizer states across every GPU of "
    "every node; deepspeed-zero3, DeepSpeed ZeRO stage 3 (the deepspeed package must be in the trainer image)."
)

# Above this many parameters a full fine-tune's activations no longer fit beside the weights on one GPU.
GRADIENT_CHECKPOINTING_ABOVE = 1_000_000_000


class CheckpointSpec(CamelModel):
    """Checkpoints of a running train stage in the run's storage; a restarted train stage (a preempted or
    evicted pod) resumes from the newest one instead of from step 0."""

    every_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Save a checkpoint every this many optimizer steps."
    )
    every_minutes: float | None = Field(
        default=30.0,
        gt=0.0,
        le=10_080.0,
        description="Save a checkpoint when this many minutes passed since the stage started or last saved "
        "(checked after each optimizer step). Null with everySteps null: no checkpoints.",
    )
    keep: int = Field(
        default=1, ge=1, le=100, description="Newest checkpoints kept in storage (older ones are deleted)."
    )

    @property
    def enabled(self) -> bool:
        return self.every_steps is not None or self.every_minutes is not None


class TrainingScale(CamelModel):
    """Mixed into TrainingSpec: the settings that make training fit and survive on large models."""

    strategy: Strategy = Field(default="ddp", description=STRATEGY_DESCRIPTION)
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute activations in the backward pass (less GPU memory, about a third more time). "
        f"Default: on for models above {GRADIENT_CHECKPOINTING_ABOVE:,} parameters.",
    )
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)


def use_gradient_checkpointing(setting: bool | None, parameters: int | None) -> bool:
    """An explicit setting wins; by default on above 1B parameters (unknown size: off).

    >>> use_gradient_checkpointing(None, 8_000_000_000), use_gradient_checkpointing(None, 135_000_000)
    (True, False)
    >>> use_gradient_checkpointing(True, 135_000_000), use_gradient_checkpointing(None, None)
    (True, False)
    """
    if setting is not None:
        return setting
    return parameters is not None and parameters > GRADIENT_CHECKPOINTING_ABOVE

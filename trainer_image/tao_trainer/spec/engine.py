"""vLLM engine settings (`generation.engine`, `generation.teacher.engine`) and their mapping to `vllm.LLM(...)`.

Pure: no vLLM import. The names on the right of `vllm_engine_kwargs` are vLLM's own (`vllm.LLM.__init__` and
`vllm.EngineArgs`), so a setting that vLLM documents can be looked up under the same name in `extraArgs`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from tao_trainer.spec.base import CamelModel

# Engine arguments the project sets itself, and the field a user sets them with instead. `model` is the model
# being run (model.uri, the challenger, or teacher.uri); the stages read the engine's tokenizer, so vLLM must
# load it (skip_tokenizer_init would leave none).
OWN_ENGINE_ARGS: dict[str, str] = {
    "model": "model.uri (or teacher.uri)",
    "tensor_parallel_size": "engine.tensorParallelSize",
    "gpu_memory_utilization": "engine.gpuMemoryUtilization",
    "max_model_len": "engine.maxModelLen",
    "dtype": "engine.dtype",
    "enforce_eager": "engine.enforceEager",
    "skip_tokenizer_init": "nothing: the stages need the engine's tokenizer",
}

JsonScalar = str | int | float | bool | None
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


def _snake(name: str) -> str:
    """`maxModelLen` -> `max_model_len`: the camelCase spelling of one of our own arguments is refused too."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class EngineSpec(CamelModel):
    """How vLLM runs one model (generation backend vllm, or auto on a GPU); the transformers backend ignores it."""

    tensor_parallel_size: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="GPUs the model is split over (vLLM tensor_parallel_size); default: every GPU the pod has.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Share of each GPU's memory vLLM may take for weights, activations and KV cache.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Longest prompt plus completion, in tokens (vLLM max_model_len); default: the model's own. "
        "Lower it when the KV cache for the model's full context does not fit.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto",
        description="Weights and activations dtype; auto: the model config's (float32 checkpoints run in float16).",
    )
    enforce_eager: bool = Field(
        default=False,
        description="Run without CUDA graphs: less memory and a faster start, slower decoding.",
    )
    extra_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Further vllm.LLM / EngineArgs keyword arguments by their vLLM (snake_case) names, with "
        "string, number, boolean or null values, e.g. {max_num_seqs: 256, enable_prefix_caching: true}.",
    )

    @field_validator("extra_args")
    @classmethod
    def _extra_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        for key, value in args.items():
            own = OWN_ENGINE_ARGS.get(_snake(key))
            if own is not None:
                raise ValueError(f"engine.extraArgs: {key!r} is set by the project; use {own}")
            if not _IDENTIFIER.match(key):
                raise ValueError(f"engine.extraArgs: {key!r} is not a vLLM argument name (snake_case)")
            if not isinstance(value, JsonScalar):
                raise ValueError(
                    f"engine.extraArgs.{key}: a string, number, boolean or null, not {type(value).__name__}"
                )
        return args


class GrpoVllmSpec(CamelModel):
    """training.grpo's vLLM settings (the rest of GrpoSpec is in spec.loop); `generation.grpo_vllm_args` maps them."""

    vllm: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Sample GRPO's completions with vLLM inside each training process (TRL's colocate mode); "
        "auto: when vllm is installed and a GPU is present.",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.3,
        gt=0.0,
        lt=1.0,
        description="Share of each GPU the colocated vLLM engine takes; training keeps the rest.",
    )


# The ranks vLLM's LoRAConfig accepts as max_lora_rank (its `MaxLoRARanks`).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of `rank`.

    >>> vllm_max_lora_rank(4), vllm_max_lora_rank(16), vllm_max_lora_rank(17)
    (8, 16, 32)
    """
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]})")


def vllm_engine_kwargs(
    engine: EngineSpec, model_path: str, gpus: int, lora_rank: int | None = None
) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for `model_path` on a process that sees `gpus` GPUs. With `lora_rank`,
    `model_path` is the base of an adapter of that rank, which every request then names (a LoRARequest).

    >>> vllm_engine_kwargs(EngineSpec(extraArgs={"max_num_seqs": 64}), "/m", gpus=4)
    {'max_num_seqs': 64, 'model': '/m', 'tensor_parallel_size': 4, 'gpu_memory_utilization': 0.9, 'dtype': 'auto', 'enforce_eager': False}
    >>> kw = vllm_engine_kwargs(EngineSpec(), "/base", gpus=1, lora_rank=4)
    >>> kw["model"], kw["enable_lora"], kw["max_lora_rank"], kw["max_loras"]
    ('/base', True, 8, 1)
    """
    kwargs: dict[str, Any] = dict(engine.extra_args)
    kwargs.update(
        model=model_path,
        tensor_parallel_size=engine.tensor_parallel_size or max(gpus, 1),
        gpu_memory_utilization=engine.gpu_memory_utilization,
        dtype=engine.dtype,
        enforce_eager=engine.enforce_eager,
    )
    if engine.max_model_len is not None:  # vLLM's default is the model's own context length
        kwargs["max_model_len"] = engine.max_model_len
    if lora_rank is not None:
        kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(lora_rank), max_loras=1)
    return kwargs

"""Generation backends with one interface: transformers (CPU or GPU, batched) and vLLM (GPU), lazily imported."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tao_trainer import models
from tao_trainer.spec import GenerationSpec
from tao_trainer.spec.engine import EngineSpec, vllm_engine_kwargs


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float  # 0: greedy
    top_p: float
    max_new_tokens: int
    seed: int
    # Where these prompts start within the shard they belong to: a shard sampled in parts (generate) draws the
    # same random numbers for each batch as the whole shard would, so partSize never changes the candidates.
    first_index: int = 0

    @classmethod
    def from_spec(
        cls, gen: GenerationSpec, seed: int, n: int | None = None, first_index: int = 0
    ) -> Sampling:
        """The spec's sampling (temperature, top_p, length), `n` samples per prompt (default: candidates)."""
        return cls(n or gen.candidates, gen.temperature, gen.top_p, gen.max_new_tokens, seed, first_index)

    @classmethod
    def greedy(cls, gen: GenerationSpec, seed: int) -> Sampling:
        """One greedy answer per prompt: how the tuned model is used, at the base model's inference cost."""
        return cls(1, 0.0, 1.0, gen.max_new_tokens, seed)


PromptIds = list[int]
"""A prompt as token ids, from `models.prepare_prompt`: every backend generates from exactly these tokens."""


class Generator(Protocol):
    tokenizer: Any

    def generate(
        self, prompts: list[PromptIds], sampling: Sampling, progress: Callable[[int], None] | None = None
    ) -> list[list[str]]:
        """For each prompt, `sampling.n` completions (new text only, special tokens removed)."""
        ...


def left_padded(prompts: list[PromptIds], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input_ids, attention_mask), padded on the left so that every prompt ends where generation starts.

    >>> left_padded([[5, 6, 7], [8]], 0)
    ([[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]])
    """
    width = max((len(ids) for ids in prompts), default=0)
    ids = [[pad_id] * (width - len(p)) + list(p) for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return ids, mask


def check_positions(prompt_tokens: int, max_new_tokens: int, config: Any) -> None:
    """A prompt and its answer must fit the model's positions (`max_position_embeddings`, GPT-2's
    `n_positions`): past them a model with learned positions fails deep inside torch ("index out of range"),
    one with rotary positions writes text it was never trained to. vLLM refuses the same (max_model_len).

    >>> from types import SimpleNamespace
    >>> check_positions(18, 40, SimpleNamespace(n_positions=64))
    >>> check_positions(18, 48, SimpleNamespace(n_positions=64))
    Traceback (most recent call last):
    ...
    ValueError: a prompt of 18 tokens and generation.maxNewTokens 48 need 66 positions; the model has 64: lower generation.maxNewTokens to at most 46, or shorten the prompts
    """
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and prompt_tokens + max_new_tokens > limit:
        raise ValueError(
            f"a prompt of {prompt_tokens} tokens and generation.maxNewTokens {max_new_tokens} need "
            f"{prompt_tokens + max_new_tokens} positions; the model has {limit}: lower generation.maxNewTokens "
            f"to at most {max(limit - prompt_tokens, 0)}, or shorten the prompts"
        )


class TransformersGenerator:
    """Batched `model.generate` on the prompts' own token ids, left-padded here (the tokenizer's padding side and
    special-token settings play no part). Positions follow the attention mask, so a padded prompt is read as the
    same prompt alone."""

    def __init__(self, model_path: str, batch_size: int = 32) -> None:
        self.tokenizer = models.load_tokenizer(model_path)
        self.model = models.load_causal_lm(model_path)
        self.batch_size = batch_size

    def generate(
        self, prompts: list[PromptIds], sampling: Sampling, progress: Callable[[int], None] | None = None
    ) -> list[list[str]]:
        import torch

        out: list[list[str]] = []
        greedy = sampling.temperature <= 0.0
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            # A seed per batch, by its place in the shard: a shard re-run after an interruption, or sampled in
            # parts whose size is a multiple of the batch size, reproduces the same candidates.
            torch.manual_seed(sampling.seed * 1_000_003 + sampling.first_index + start)
            ids, mask = left_padded(batch, self.tokenizer.pad_token_id)
            check_positions(len(ids[0]), sampling.max_new_tokens, self.model.config)
            input_ids = torch.tensor(ids, dtype=torch.long, device=self.model.device)
            attention_mask = torch.tensor(mask, dtype=torch.long, device=self.model.device)
            kwargs: dict[str, Any] = {
                "max_new_tokens": sampling.max_new_tokens,
                "pad_token_id": self.tokenizer.pad_token_id,
                "num_return_sequences": 1 if greedy else sampling.n,
            }
            if greedy:
                kwargs.update(do_sample=False)
            else:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            with torch.inference_mode():
                seqs = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            new = seqs[:, input_ids.shape[1] :]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            per = kwargs["num_return_sequences"]
            for i in range(len(batch)):
                group = texts[i * per : (i + 1) * per]
                out.append(group * sampling.n if greedy else group)
            if progress is not None:
                progress(len(batch))
        return out


class VllmGenerator:
    """vLLM offline engine: continuous batching on GPUs; same interface as the transformers backend. Prompts go in
    as token ids, so vLLM does no tokenization of its own (its defaults could add or omit a BOS). An unmerged
    LoRA champion runs as its base with LoRA enabled, every request naming the adapter (`vllm_lora`)."""

    def __init__(self, model_path: str, engine: EngineSpec | None = None, gpus: int = 1) -> None:
        from vllm import LLM

        adapter = models.adapter_of(model_path)
        base, rank = (model_path, None) if adapter is None else (adapter.base, adapter.rank)
        self.llm = LLM(**vllm_engine_kwargs(engine or EngineSpec(), base, gpus, lora_rank=rank))
        self.lora_request = None if adapter is None else vllm_lora(adapter)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self, prompts: list[PromptIds], sampling: Sampling, progress: Callable[[int], None] | None = None
    ) -> list[list[str]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=sampling.n if sampling.temperature > 0 else 1,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed,
            skip_special_tokens=True,
        )
        inputs = [{"prompt_token_ids": list(ids)} for ids in prompts]  # vLLM's TokensPrompt
        results = self.llm.generate(inputs, params, use_tqdm=False, lora_request=self.lora_request)
        out = []
        for r in results:
            texts = [o.text for o in r.outputs]
            out.append(texts * sampling.n if sampling.temperature <= 0 else texts)
        if progress is not None:
            progress(len(prompts))
        return out


def vllm_lora_args(adapter: models.Adapter) -> dict[str, Any]:
    """`vllm.lora.request.LoRARequest`'s arguments for the one adapter an engine serves (its id must be >= 1).

    >>> vllm_lora_args(models.Adapter(base="/base", path="/round-002/train/model", rank=8))
    {'lora_name': 'champion', 'lora_int_id': 1, 'lora_path': '/round-002/train/model'}
    """
    return {"lora_name": "champion", "lora_int_id": 1, "lora_path": adapter.path}


def vllm_lora(adapter: models.Adapter) -> Any:
    from vllm.lora.request import LoRARequest

    return LoRARequest(**vllm_lora_args(adapter))


def vllm_usable() -> bool:
    """vllm is installed and a GPU is present: what `auto` asks for before choosing vLLM."""
    return importlib.util.find_spec("vllm") is not None and models.device() == "cuda"


def pick_backend(requested: str) -> str:
    """`auto` means vLLM when it is installed and a GPU is present; else transformers."""
    if requested != "auto":
        return requested
    return "vllm" if vllm_usable() else "transformers"


def grpo_vllm_args(
    mode: str, memory_share: float, engine: EngineSpec, usable: bool | None = None
) -> dict[str, Any]:
    """TRL GRPOConfig's vLLM arguments for training.grpo.vllm (auto, on, off): TRL's colocate mode, a vLLM engine
    inside each training process on that process's GPU, taking `memory_share` of it (the rest trains). `usable`:
    whether vLLM can run here (default: `vllm_usable()`). generation.engine.maxModelLen bounds its context too.

    >>> grpo_vllm_args("auto", 0.3, EngineSpec(), usable=False)
    {'use_vllm': False}
    >>> grpo_vllm_args("auto", 0.3, EngineSpec(maxModelLen=2048), usable=True)
    {'use_vllm': True, 'vllm_mode': 'colocate', 'vllm_gpu_memory_utilization': 0.3, 'vllm_max_model_length': 2048}
    """
    if mode == "off":
        return {"use_vllm": False}
    if usable is None:
        usable = vllm_usable()
    if not usable:
        if mode == "on":
            raise RuntimeError(
                "training.grpo.vllm is 'on' but vllm cannot run here (it needs vllm installed and a GPU: "
                "pip install 'tao-operator[vllm]' on a GPU machine, or set it to auto)"
            )
        return {"use_vllm": False}
    args: dict[str, Any] = {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": memory_share,
    }
    if engine.max_model_len is not None:
        args["vllm_max_model_length"] = engine.max_model_len
    return args


def visible_gpus() -> int:
    """CUDA devices this process may use (the pod's nvidia.com/gpu): vLLM's default tensor parallel size."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def load_generator(
    model_path: str, backend: str, batch_size: int, engine: EngineSpec | None = None
) -> Generator:
    """A generator on `model_path`; `engine` configures vLLM (the transformers backend has no use for it)."""
    chosen = pick_backend(backend)
    if chosen == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(
                "generation.backend is 'vllm' but vllm is not installed (pip install 'tao-operator[vllm]' on a GPU machine)"
            )
        return VllmGenerator(model_path, engine, gpus=visible_gpus())
    return TransformersGenerator(model_path, batch_size=batch_size)

"""Generation backends with one interface: transformers (CPU or GPU, batched) and vLLM (GPU), lazily imported."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tao_trainer import models
from tao_trainer.spec import GenerationSpec


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float  # 0: greedy
    top_p: float
    max_new_tokens: int
    seed: int

    @classmethod
    def from_spec(cls, gen: GenerationSpec, seed: int, n: int | None = None) -> Sampling:
        """The spec's sampling (temperature, top_p, length), `n` samples per prompt (default: candidates)."""
        return cls(n or gen.candidates, gen.temperature, gen.top_p, gen.max_new_tokens, seed)

    @classmethod
    def greedy(cls, gen: GenerationSpec, seed: int) -> Sampling:
        """One greedy answer per prompt: how the tuned model is used, at the base model's inference cost."""
        return cls(1, 0.0, 1.0, gen.max_new_tokens, seed)


class Generator(Protocol):
    tokenizer: Any

    def generate(
        self, prompts: list[str], sampling: Sampling, progress: Callable[[int], None] | None = None
    ) -> list[list[str]]:
        """For each rendered prompt, `sampling.n` completions (new text only, special tokens removed)."""
        ...


class TransformersGenerator:
    """Batched `model.generate`; left padding so that every prompt ends where generation starts."""

    def __init__(self, model_path: str, batch_size: int = 32) -> None:
        self.tokenizer = models.load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"
        self.model = models.load_causal_lm(model_path)
        self.batch_size = batch_size

    def generate(
        self, prompts: list[str], sampling: Sampling, progress: Callable[[int], None] | None = None
    ) -> list[list[str]]:
        import torch

        out: list[list[str]] = []
        greedy = sampling.temperature <= 0.0
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start : start + self.batch_size]
            # A seed per batch: a shard re-run after an interruption reproduces the same candidates.
            torch.manual_seed(sampling.seed * 1_000_003 + start)
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
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
                seqs = self.model.generate(**enc, **kwargs)
            new = seqs[:, enc["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            per = kwargs["num_return_sequences"]
            for i in range(len(batch)):
                group = texts[i * per : (i + 1) * per]
                out.append(group * sampling.n if greedy else group)
            if progress is not None:
                progress(len(batch))
        return out


class VllmGenerator:
    """vLLM offline engine: continuous batching on GPUs; same interface as the transformers backend."""

    def __init__(self, model_path: str, **engine_args: Any) -> None:
        from vllm import LLM

        self.llm = LLM(model=model_path, **engine_args)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(
        self, prompts: list[str], sampling: Sampling, progress: Callable[[int], None] | None = None
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
        results = self.llm.generate(prompts, params, use_tqdm=False)
        out = []
        for r in results:
            texts = [o.text for o in r.outputs]
            out.append(texts * sampling.n if sampling.temperature <= 0 else texts)
        if progress is not None:
            progress(len(prompts))
        return out


def pick_backend(requested: str) -> str:
    """`auto` means vLLM when it is installed and a GPU is present; else transformers."""
    if requested != "auto":
        return requested
    if importlib.util.find_spec("vllm") is not None and models.device() == "cuda":
        return "vllm"
    return "transformers"


def load_generator(model_path: str, backend: str, batch_size: int) -> Generator:
    chosen = pick_backend(backend)
    if chosen == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(
                "generation.backend is 'vllm' but vllm is not installed (pip install 'tao-operator[vllm]' on a GPU machine)"
            )
        return VllmGenerator(model_path)
    return TransformersGenerator(model_path, batch_size=batch_size)

"""`tao serve`'s model: one causal LM, its tokenizer, and the LoRA adapters named by `--lora-modules`.

Prompts are read through `models.prepare_prompt` (chat_ids / text_ids), as the loop reads them; the length
limits are checked here, before a request is queued, so that a stream never starts for a prompt that cannot
be served. Generation itself is `serve.decode.decode`, run by the batcher's one worker thread.

>>> parse_lora_module("sql=/adapters/sql")
LoraModule(name='sql', path='/adapters/sql', base_model_name=None)
>>> parse_lora_module('{"name": "sql", "path": "/a", "base_model_name": "base"}')
LoraModule(name='sql', path='/a', base_model_name='base')
>>> parse_lora_module("sql")
Traceback (most recent call last):
...
ValueError: --lora-modules takes name=path or a JSON object with name and path, got 'sql'
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tao_trainer import models
from tao_trainer.serve.request import RequestError, Sampling

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_LORA_RANK",
    "LoraModule",
    "TransformersBackend",
    "parse_lora_module",
]

DEFAULT_MAX_TOKENS = 256
"""Completion length when a request gives no `max_tokens` (capped by what the context has left)."""
DEFAULT_MAX_LORA_RANK = 16
"""vLLM's default `--max-lora-rank`."""


@dataclass(frozen=True)
class LoraModule:
    """One `--lora-modules` entry, as vLLM reads it: `name=path`, or JSON with name, path, base_model_name."""

    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_module(text: str) -> LoraModule:
    text = text.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return LoraModule(str(data["name"]), str(data["path"]), data.get("base_model_name"))
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    else:
        name, sep, path = text.partition("=")
        if sep and name and path:
            return LoraModule(name, path)
    raise ValueError(f"--lora-modules takes name=path or a JSON object with name and path, got {text!r}")


class TransformersBackend:
    """One causal LM and its tokenizer, with any LoRA adapters loaded beside the base weights (peft).

    `tokenizer_lock` serialises the tokenizer (fast tokenizers are not safe to share across threads); the
    model is only run by the batcher's worker thread.
    """

    def __init__(
        self,
        model_uri: str,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        lora_modules: list[LoraModule] | None = None,
        max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
    ) -> None:
        path = models.resolve(model_uri)
        self.tokenizer = models.load_tokenizer(path)
        self.model = models.load_causal_lm(path)
        self.default_max_tokens = default_max_tokens
        self.tokenizer_lock = threading.RLock()
        self.adapters: dict[str, LoraModule] = {}
        self.batcher: Any = None  # the one queue in front of this model, set by start_server
        if lora_modules:
            self._load_adapters(lora_modules, max_lora_rank)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.context_length: int | None = limit if isinstance(limit, int) and limit > 0 else None
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = eos_ids
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (min(eos_ids) if eos_ids else 0)

    def _load_adapters(self, modules: list[LoraModule], max_rank: int) -> None:
        from peft import PeftModel

        names = [m.name for m in modules]
        if len(set(names)) != len(names):
            raise ValueError(f"--lora-modules: each name once, got {names}")
        model = self.model
        for module in modules:
            local = models.resolve(module.path)
            config_file = Path(local) / "adapter_config.json"
            if not config_file.is_file():
                raise ValueError(f"--lora-modules {module.name}: no adapter_config.json in {module.path}")
            rank = json.loads(config_file.read_text()).get("r")
            if isinstance(rank, int) and rank > max_rank:
                raise ValueError(
                    f"--lora-modules {module.name}: LoRA rank {rank} is greater than --max-lora-rank {max_rank}"
                )
            if isinstance(model, PeftModel):
                model.load_adapter(local, adapter_name=module.name, is_trainable=False)
            else:
                model = PeftModel.from_pretrained(model, local, adapter_name=module.name, is_trainable=False)
            self.adapters[module.name] = module
        model.eval()
        self.model = model

    def forward_context(self, adapter: str | None) -> Any:
        """The context a forward pass for `adapter` (None: the base model) runs in."""
        import contextlib

        if not self.adapters:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """A chat's tokens: the chat template's rendering, as training and generation read the same chat."""
        with self.tokenizer_lock:
            return models.prepare_prompt(self.tokenizer, messages, None).ids

    def text_ids(self, prompt: str, param: str) -> list[int]:
        """A completion prompt's tokens: the text with the tokenizer's leading special tokens (BOS), as the loop
        reads a prompt captured from /v1/completions."""
        with self.tokenizer_lock:
            if not self.tokenizer(prompt, add_special_tokens=False)["input_ids"]:
                raise RequestError(f"'{param}' is empty after tokenization", param=param)
            return models.prepare_prompt(self.tokenizer, prompt, None, raw=True).ids

    def max_tokens_for(self, ids: list[int], sampling: Sampling, param: str) -> int:
        """The completion length for one prompt: the request's, else the default; a 400 if it cannot fit."""
        prompt_tokens = len(ids)
        if prompt_tokens == 0:
            raise RequestError(f"'{param}' is empty after tokenization", param=param)
        room = None if self.context_length is None else self.context_length - prompt_tokens
        max_tokens = sampling.max_tokens
        if max_tokens is None:
            max_tokens = self.default_max_tokens if room is None else min(self.default_max_tokens, room)
        if room is not None and room < 1:
            raise RequestError(
                f"This model's maximum context length is {self.context_length} tokens. However, the {param} "
                f"has {prompt_tokens} tokens, which leaves no room for a completion.",
                param=param,
            )
        if room is not None and max_tokens > room:
            raise RequestError(
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, {max_tokens} for the "
                "completion). Please reduce the length of the prompt or of max_tokens.",
                param=param,
            )
        return max_tokens

    def token_text(self, token: int) -> str:
        with self.tokenizer_lock:
            return str(self.tokenizer.decode([token]))

    def text(self, tokens: list[int]) -> str:
        with self.tokenizer_lock:
            return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

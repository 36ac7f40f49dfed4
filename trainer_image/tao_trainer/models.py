"""Finding, loading, rendering for and saving models; the only place that knows model URIs.

torch/transformers/peft are imported inside functions so that `tao_trainer.contract` and the scorers stay
importable in the slim operator image.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tao_trainer import openai_wire, storage

# Written beside an unmerged LoRA adapter: the base it was trained on, as a URI, because the adapter's own
# `base_model_name_or_path` is a local path that is meaningless in the next pod.
ADAPTER_BASE_FILE = "tao_base_model.json"


def resolve(uri: str, revision: str | None = None) -> str:
    """A model URI -> something `from_pretrained` accepts: a local directory, or a hub id for hf://. A `.gguf`
    file becomes the HF folder converted from it, once (`gguf_models.resolve_gguf`).

    >>> resolve("file:///tmp")
    '/tmp'
    >>> resolve("hf://Qwen/Qwen3-0.6B")
    'Qwen/Qwen3-0.6B'
    """
    from tao_trainer import gguf_models

    if gguf_models.is_gguf(uri):
        return gguf_models.resolve_gguf(uri)
    if uri.startswith("hf://"):
        # Hub ids are for clusters with hub access; offline machines fail inside from_pretrained, clearly. A
        # pinned revision (`revision`, or the spec's model/teacher revision) is fetched at it: tao_trainer.hub.
        from tao_trainer import hub

        return hub.hub_path(uri, revision)
    if uri.startswith("s3://"):
        return str(storage.local_dir(uri))
    path = uri.removeprefix("file://")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model {uri!r}: no such directory (expected an HF-format model directory)")
    return path


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    base = _adapter_base(path)
    tok = AutoTokenizer.from_pretrained(path if _has_tokenizer(path) or base is None else base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, for_training: bool = False) -> Any:
    """A causal LM from a directory; an unmerged LoRA adapter is applied on top of its recorded base."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device() == "cuda" else torch.float32
    base = _adapter_base(path)
    model: Any  # a transformers model, or a peft wrapper around one
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        from peft import PeftModel

        # Trainable when a later round continues this adapter (peft loads an adapter frozen by default).
        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype=dtype), path, is_trainable=for_training
        )
        if not for_training:
            model = model.merge_and_unload()
    model.to(device())
    if not for_training:
        model.eval()
    return model


def load_4bit_for_training(path: str) -> Any:
    """QLoRA's base: a causal LM in 4-bit NF4 (bitsandbytes, double quantization, bf16 compute) on this process's
    GPU, prepared for training an adapter over it (peft's `prepare_model_for_kbit_training`); an unmerged
    adapter folder is loaded over its recorded base, trainable."""
    import torch
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    base = _adapter_base(path)
    model = AutoModelForCausalLM.from_pretrained(
        base or path,
        quantization_config=quantization,
        dtype=torch.bfloat16,
        # A 4-bit model cannot be moved after loading: straight onto this process's GPU (its rank under torchrun).
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))},
    )
    model = prepare_model_for_kbit_training(model)
    return model if base is None else PeftModel.from_pretrained(model, path, is_trainable=True)


def _has_tokenizer(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))


def adapter_base_uri(path: str) -> str | None:
    """The URI of the base an unmerged LoRA adapter folder was trained on (always the run's original base: an
    adapter never records another adapter); None for a plain model folder."""
    marker = Path(path) / ADAPTER_BASE_FILE
    if not marker.exists():
        return None
    uri: str = json.loads(marker.read_text())["uri"]
    return uri


def _adapter_base(path: str) -> str | None:
    uri = adapter_base_uri(path)
    return None if uri is None else resolve(uri)


@dataclass(frozen=True)
class Adapter:
    """An unmerged LoRA champion as an engine loads it: the base folder, the adapter folder, the adapter's rank."""

    base: str
    path: str
    rank: int


def adapter_of(path: str) -> Adapter | None:
    """`path` as base + adapter when it is an unmerged LoRA adapter folder, else None (a plain model)."""
    base = _adapter_base(path)
    if base is None:
        return None
    config = json.loads((Path(path) / "adapter_config.json").read_text())
    return Adapter(base=base, path=path, rank=int(config["r"]))


def prompt_messages(prompt: str | list[dict[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """A prompt as chat messages: a text prompt is one user message; the system prompt goes first, once. Content
    parts become their text (joined as `tao serve` and vLLM join them for a template that takes a string); tool
    calls and tool turns stay as they are.

    >>> prompt_messages("2+2?", "Be brief.")
    [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': '2+2?'}]
    >>> prompt_messages([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], None)
    [{'role': 'user', 'content': 'a\\nb'}]
    """
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [
            {**m, "content": openai_wire.content_text(m["content"])}
            if isinstance(m.get("content"), list)
            else m
            for m in prompt
        ]
    if system_prompt and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as one model reads it: the same for generation (both backends), training, evaluation, reward
    models and `tao serve`."""

    text: str  # the prompt as text, with what a chat template writes (its special tokens included)
    ids: list[int]  # the token ids the model reads: the tokenizer's own special tokens exactly once
    chat: (
        bool  # rendered with the chat template (TRL then gets the messages, and tokenizes them the same way)
    )
    messages: list[dict[str, Any]]  # the chat messages (system prompt included) the prompt stands for
    tools: list[dict[str, Any]] | None = None  # the tool list the chat template rendered


def prepare_prompt(
    tokenizer: Any,
    prompt: str | list[dict[str, Any]],
    system_prompt: str | None,
    *,
    raw: bool = False,
    tools: list[dict[str, Any]] | None = None,
) -> PreparedPrompt:
    """Render and tokenize a prompt for a model: the one place that decides which tokens a model sees.

    - With a chat template (and not `raw`): the template renders the messages with a generation prompt, and the
      text is tokenized without adding special tokens: the template writes them itself (BOS included), as
      `apply_chat_template(tokenize=True)`, vLLM's chat endpoint and TRL do. `tools` (a record's tool list,
      OpenAI's `[{"type": "function", "function": {...}}]`) goes to the template as `tools=`, as vLLM and TRL pass
      it; an empty list counts as none.
    - Without one (base models), or `raw` (a prompt that reached the model as plain text, e.g. captured from
      /v1/completions): the text as is (messages joined by newlines, the system prompt on the first line), with
      the special tokens the tokenizer adds in front (BOS for Llama- and Mistral-style tokenizers), as a server
      tokenizes a completion prompt. A special token a tokenizer appends (EOS) is dropped: it would tell the model
      the text had ended before it starts to answer.
    """
    messages = prompt_messages(prompt, system_prompt)
    if getattr(tokenizer, "chat_template", None) and not raw:
        text = tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=True
        )
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return PreparedPrompt(text=text, ids=ids, chat=True, messages=messages, tools=tools or None)
    if isinstance(prompt, str):
        text = f"{system_prompt}\n{prompt}" if system_prompt else prompt
    else:
        text = "\n".join(openai_wire.content_text(m.get("content")) for m in messages)
    return PreparedPrompt(text=text, ids=leading_special_ids(tokenizer, text), chat=False, messages=messages)


def leading_special_ids(tokenizer: Any, text: str) -> list[int]:
    """`text`'s ids with the special tokens the tokenizer puts in front of a text, but none it appends."""
    bare = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(text)["input_ids"])
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start] + bare
    return full  # a tokenizer that rewrites the text itself: its own result, whole


def render_prompt(tokenizer: Any, prompt: str | list[dict[str, Any]], system_prompt: str | None) -> str:
    """The prompt's text as the model sees it (see `prepare_prompt`, which also gives the token ids)."""
    return prepare_prompt(tokenizer, prompt, system_prompt).text


def save_model(model: Any, tokenizer: Any, local_dir: Path, base_uri: str | None = None) -> None:
    """Save an HF-format model (or an adapter with the URI of its base) and its tokenizer."""
    local_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(local_dir)
    tokenizer.save_pretrained(local_dir)
    if base_uri is not None:
        (local_dir / ADAPTER_BASE_FILE).write_text(json.dumps({"uri": base_uri}))


def cpu_quota(cpu_max: str | None) -> int | None:
    """Whole cores allowed by a cgroup v2 `cpu.max` line ("quota period", or "max period": no limit).

    A pod with `limits.cpu: 2` on a 64-core node still sees 64 cores in its affinity mask; torch with 64
    threads under a 2-core quota is throttled into running several times slower than with 2.

    >>> cpu_quota("200000 100000"), cpu_quota("150000 100000"), cpu_quota("max 100000"), cpu_quota(None)
    (2, 1, None, None)
    """
    if not cpu_max:
        return None
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not period:
        return None
    return max(1, int(quota) // int(period))


def cpu_threads() -> None:
    """Use every core the pod or machine grants: the affinity mask, capped by a cgroup CPU limit."""
    import torch

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota = cpu_quota(f.read())
    except OSError:
        quota = None  # cgroup v1 or no cgroup: the affinity mask is all we know
    torch.set_num_threads(max(1, min(n, quota or n)))

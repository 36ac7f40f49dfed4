"""What the stages share: logging, progress, sharding, and loading a generator with the spec's sampling.

Generate, preflight and evaluate all sample from a model the same way (`open_generator`, `render`,
`Sampling.from_spec`), so that a prompt is rendered and sampled identically wherever it is used.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from tao_trainer.contract import StageConfig
from tao_trainer.spec import GenerationSpec


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def progress_bar(total: int, desc: str) -> Any:
    """tqdm on a terminal; nothing in pods and CI, whose logs a bar would flood."""
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", leave=False)


def split_shards(items: Sequence[Any], shards: int) -> list[list[Any]]:
    """Contiguous, nearly equal shards (some may be empty when there are fewer items than shards).

    >>> split_shards(list(range(5)), 2)
    [[0, 1, 2], [3, 4]]
    """
    size, extra = divmod(len(items), shards)
    out, start = [], 0
    for i in range(shards):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


def shard_seed(base: int, round_: int, shard: int) -> int:
    """A distinct, reproducible seed for each (round, shard)."""
    digest = hashlib.sha256(f"{base}:{round_}:{shard}".encode()).hexdigest()
    return int(digest[:8], 16)


def my_shards(cfg: StageConfig) -> list[int]:
    """The shards this process handles: the config's list, else the pod's completion index, else all."""
    if cfg.shards is not None:
        return cfg.shards
    index = os.environ.get("JOB_COMPLETION_INDEX")
    if index is not None:
        return [int(index)]
    return list(range(cfg.spec.generation.shards))


def open_generator(gen: GenerationSpec, model_uri: str, revision: str | None = None) -> Any:
    """A generation backend on `model_uri`, chosen and batched as `generation` says; torch uses every granted core."""
    from tao_trainer import generation, models

    models.cpu_threads()
    return generation.load_generator(models.resolve(model_uri, revision), gen.backend, gen.batch_size)


def render(generator: Any, records: Sequence[dict[str, Any]], system_prompt: str | None) -> list[str]:
    """Each record's prompt as the model sees it (chat template and system prompt applied once, here)."""
    from tao_trainer import models

    return [models.render_prompt(generator.tokenizer, rec["prompt"], system_prompt) for rec in records]


def candidate_source(gen: GenerationSpec, model_uri: str) -> tuple[str, str | None]:
    """(model, revision) that writes the candidates: the teacher when one is set (distillation), else the model."""
    if gen.teacher is not None:
        return gen.teacher.uri, gen.teacher.revision
    return model_uri, None

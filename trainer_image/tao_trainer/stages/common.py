"""What the stages share: logging, progress, sharding, and loading a generator with the spec's sampling.

Generate, preflight and evaluate all sample from a model the same way (`open_generator`, `render`,
`Sampling.from_spec`), and training reads the same prompt tokens (`prepare`), so that a prompt is rendered,
tokenized and sampled identically wherever it is used.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from tao_trainer.contract import StageConfig
from tao_trainer.spec import GenerationSpec
from tao_trainer.spec.engine import EngineSpec


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _NoBar:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...


def progress_bar(total: int, desc: str) -> Any:
    """tqdm on a terminal; nothing in pods and CI, whose logs a bar would flood. `tao run` sends a stage's
    stderr to a log file and hands it the terminal as TAO_PROGRESS_FD, for this bar alone."""
    stream: Any = sys.stderr
    if fd := os.environ.get("TAO_PROGRESS_FD"):
        try:
            stream = os.fdopen(int(fd), "w", closefd=False)
        except (OSError, ValueError):
            return _NoBar()
    if not stream.isatty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", leave=False, file=stream)


def split_sizes(count: int, shards: int) -> list[int]:
    """Contiguous shards' sizes: nearly equal, the larger first (some 0 when there are fewer items than shards).

    >>> split_sizes(5, 2), split_sizes(1, 3)
    ([3, 2], [1, 0, 0])
    """
    size, extra = divmod(count, shards)
    return [size + (1 if i < extra else 0) for i in range(shards)]


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


def open_generator(
    gen: GenerationSpec, model_uri: str, revision: str | None = None, engine: EngineSpec | None = None
) -> Any:
    """A generation backend on `model_uri`, chosen and batched as `generation` says, its vLLM engine set by
    `engine` (default: generation.engine); torch uses every granted core."""
    from tao_trainer import generation, models

    models.cpu_threads()
    return generation.load_generator(
        models.resolve(model_uri, revision), gen.backend, gen.batch_size, engine or gen.engine
    )


# A prompt captured from /v1/completions reached the served model as plain text, not through its chat template.
RAW_TEXT_ENDPOINT = "completions"


def prepare(tokenizer: Any, records: Sequence[dict[str, Any]], system_prompt: str | None) -> list[Any]:
    """Each record's prompt as the model reads it (`models.prepare_prompt`: the tokens generation, training and
    evaluation all use), with the record's `tools` field for the chat template. A record the capture proxy took from /v1/completions is rendered as the plain text the
    server received, whatever the model's chat template."""
    from tao_trainer import models

    return [
        models.prepare_prompt(
            tokenizer,
            rec["prompt"],
            system_prompt,
            raw=(rec.get("fields") or {}).get("endpoint") == RAW_TEXT_ENDPOINT,
            tools=(rec.get("fields") or {}).get("tools"),
        )
        for rec in records
    ]


def render(generator: Any, records: Sequence[dict[str, Any]], system_prompt: str | None) -> list[list[int]]:
    """The token ids a generator gets for each record's prompt (chat template and system prompt applied once)."""
    return [prepared.ids for prepared in prepare(generator.tokenizer, records, system_prompt)]


def candidate_source(gen: GenerationSpec, model_uri: str) -> tuple[str, str | None]:
    """(model, revision) whose weights write the candidates: a teacher `uri` when one is set (distillation), else
    the model (also for an endpoint teacher, which has no weights here: its tokenizer and the preflight's samples
    are the model's)."""
    if gen.teacher is not None and gen.teacher.uri is not None:
        return gen.teacher.uri, gen.teacher.revision
    return model_uri, None


def candidate_engine(gen: GenerationSpec) -> EngineSpec:
    """The vLLM settings of the model that writes the candidates: the teacher's own, else generation.engine."""
    if gen.teacher is not None and gen.teacher.engine is not None:
        return gen.teacher.engine
    return gen.engine


def trl_prompt_kwargs(
    scorers: Sequence[Any],
    records: Sequence[dict[str, Any]],
    system_prompt: str | None,
    tokenizer: Any,
    per_record: Sequence[int] | None = None,
) -> dict[str, list[Any]]:
    """`{TRL_PROMPT: ...}` for the candidates of `records` (`per_record[i]` each, one when None) when a scorer is
    user code, so that it is called with the prompts and completion ids GRPO would give it; else `{}`.
    `tokenizer` may be a function that loads it (only called when needed)."""
    from tao_trainer.scorers import FunctionScorer
    from tao_trainer.scorers.function import TRL_PROMPT, TrlPrompt

    if not any(isinstance(s, FunctionScorer) for s in scorers):
        return {}
    tok = tokenizer() if callable(tokenizer) and not hasattr(tokenizer, "apply_chat_template") else tokenizer
    views = [TrlPrompt(p.messages if p.chat else p.text, tok) for p in prepare(tok, records, system_prompt)]
    counts = per_record if per_record is not None else [1] * len(records)
    return {TRL_PROMPT: [v for v, n in zip(views, counts, strict=True) for _ in range(n)]}

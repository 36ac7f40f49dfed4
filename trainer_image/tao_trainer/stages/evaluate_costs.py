"""Cost per success on the held-out prompts: what each model (champion, challenger, and the teacher when
`evaluation.teacherBaseline` asks it) spends in tokens for each answer that succeeds.

A success is an answer whose first label metric is 1 (exact match, JSON equality...) when the spec reports
label metrics, else one whose label-free gate score reaches 1. Tokens are the prompt and the answer: counted
with the student's tokenizer for the student's models, as the teacher's server reported them for the teacher.
Money per success (at `costs.endpoints.model` / `.teacher` prices) is added by the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tao_trainer.answer_cache import AnswerCache
from tao_trainer.contract import StageConfig
from tao_trainer.generation import Sampling
from tao_trainer.layout import RunLayout
from tao_trainer.stages.common import prepare
from tao_trainer.teacher import EndpointSampler


def successes(scores: Sequence[float | None], label_values: Sequence[float] | None) -> list[bool]:
    """
    >>> successes([1.0, 0.4, None], None), successes([0.0, 0.0], [1.0, 0.0])
    ([True, False, False], [True, False])
    """
    if label_values is not None:
        return [v == 1.0 for v in label_values]
    return [s is not None and s >= 1.0 for s in scores]


def per_success(
    side: str, won: Sequence[bool], inputs: Sequence[int], outputs: Sequence[int]
) -> dict[str, float | None]:
    """A side's figures as evaluate metrics: successes, and prompt and answer tokens per success (None without one).

    >>> per_success("teacher", [True, False], [10, 10], [4, 6])
    {'teacher.successes': 1.0, 'teacher.inputTokensPerSuccess': 20.0, 'teacher.outputTokensPerSuccess': 10.0}
    """
    n = sum(won)
    return {
        f"{side}.successes": float(n),
        f"{side}.inputTokensPerSuccess": round(sum(inputs) / n, 2) if n else None,
        f"{side}.outputTokensPerSuccess": round(sum(outputs) / n, 2) if n else None,
    }


def prompt_tokens(tokenizer: Any, held: Sequence[dict[str, Any]], system_prompt: str | None) -> list[int]:
    """Tokens of each held-out prompt as a student model reads it (the same for champion and challenger)."""
    return [len(p.ids) for p in prepare(tokenizer, held, system_prompt)]


def answer_tokens(tokenizer: Any, answers: Sequence[str]) -> list[int]:
    """Tokens of each answer of a student model (its own tokenizer, no special tokens)."""
    return [len(tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers]


def teacher_answers(
    cfg: StageConfig, held: list[dict[str, Any]]
) -> tuple[list[str], list[int], list[int], dict[str, int]]:
    """The teacher's greedy answer to each held-out prompt (an empty one where it could not answer), the tokens
    each took, and the teacher client's counters (what this stage paid: a re-run answers from the run's answer
    cache and pays nothing)."""
    gen = cfg.spec.generation
    assert gen.teacher is not None  # the spec requires a teacher endpoint for teacherBaseline
    cache = AnswerCache(RunLayout(cfg.run_uri).answer_cache("teacher"))
    teacher = EndpointSampler(gen.teacher, cache, gen.system_prompt)
    answers = teacher.sample(held, 1, Sampling.greedy(gen, gen.seed))
    return (
        [a.texts[0] if a.texts else "" for a in answers],
        [a.input_tokens for a in answers],
        [a.output_tokens for a in answers],
        {f"teacher.{k}": v for k, v in teacher.stats.items()},
    )

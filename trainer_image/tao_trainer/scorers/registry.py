"""Scorer names to implementations, with a dotted-path fallback for user code (as TRL resolves
reward functions by name)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tao_trainer.spec import AnyScorerSpec, CustomSpec, parse_scorer_spec, validate_scorer_list

from .base import Scorer
from .function import FunctionScorer
from .json_check import JsonScorer
from .judge import JudgeScorer
from .majority import MajorityScorer
from .python_tests import PythonTestsScorer
from .regex import RegexScorer
from .reward_model import RewardModelScorer
from .sql import SqlScorer

__all__ = ["SCORER_TYPES", "build_scorer", "build_scorers"]

SCORER_TYPES: dict[str, type[Scorer[Any]]] = {
    "majority": MajorityScorer,
    "regex": RegexScorer,
    "sql": SqlScorer,
    "json": JsonScorer,
    "judge": JudgeScorer,
    "python": FunctionScorer,
    "python_tests": PythonTestsScorer,
    "reward_model": RewardModelScorer,
}
"""Built-in `type` names. Any other `type` must be a dotted path and becomes a FunctionScorer."""


def build_scorer(spec: AnyScorerSpec | Any, *, base_dir: Path | None = None) -> Scorer[Any]:
    """Build a scorer from a validated spec or from a plain mapping (validated here).

    `base_dir` is where relative `path`s of python scorers resolve (the current directory if None).
    User code is imported here, not at spec validation, so errors about it surface in the score stage.

    >>> scorer = build_scorer({"type": "regex", "pattern": r"\\d+", "weight": 2})
    >>> scorer.name, scorer.weight, scorer(["q", "q"], ["42", "forty-two"])
    ('regex', 2.0, [1.0, 0.0])
    """
    if not isinstance(spec, AnyScorerSpec):
        spec = parse_scorer_spec(spec)
    if isinstance(spec, CustomSpec):
        return FunctionScorer.from_spec(spec, base_dir=base_dir)
    return SCORER_TYPES[spec.type].from_spec(spec, base_dir=base_dir)


def build_scorers(specs: Iterable[AnyScorerSpec | Any], *, base_dir: Path | None = None) -> list[Scorer[Any]]:
    """Validate a whole list (unique names, a positive weight) and build each scorer."""
    return [build_scorer(spec, base_dir=base_dir) for spec in validate_scorer_list(specs)]

"""Regular-expression format checks: the cheapest label-free scorer, and often the most useful one.

A task's output contract (an answer tag, a SQL dialect, a citation style) is something the base
model may already follow part of the time; rewarding compliance teaches it to follow it always.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tao_trainer.safe_regex import RegexTimeout, user_regex
from tao_trainer.spec import RegexSpec

from .base import Detailed, Score, Scorer, completion_text

__all__ = ["RegexScorer"]


class RegexScorer(Scorer[RegexSpec]):
    """1.0 if the completion matches `pattern`, else 0.0.

    `mode="fullmatch"` (default) matches the whole completion after trimming surrounding
    whitespace, so stray newlines from generation do not fail an otherwise exact format;
    `mode="search"` accepts a match anywhere. A match that runs past the time budget
    (`safe_regex.BUDGET_SECONDS`) abstains (None) and counts `regexTimeouts`.

    Example:

    ```python
    >>> scorer = RegexScorer(pattern=r"<\\d+>")
    >>> scorer(["1+1=", "1+1=", "1+1="], ["<2>\\n", "2", "the answer is <2>"])
    [1.0, 0.0, 0.0]
    >>> RegexScorer(pattern=r"<\\d+>", mode="search")(["q"], ["the answer is <2>"])
    [1.0]

    ```
    """

    spec_model = RegexSpec
    scorer_type = "regex"

    def __init__(self, spec: RegexSpec | None = None, /, **fields: Any) -> None:
        super().__init__(spec, **fields)
        self._pattern = user_regex(self.spec.pattern)

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        scores: list[Score] = []
        for completion in completions:
            text = completion_text(completion)
            try:
                if self.spec.mode == "fullmatch":
                    match = self._pattern.fullmatch(text.strip())
                else:
                    match = self._pattern.search(text)
            except RegexTimeout:
                self.count("regexTimeouts")
                scores.append(None)
                continue
            scores.append(1.0 if match is not None else 0.0)
        return Detailed(scores)

"""Majority vote over extracted answers: label-free self-consistency, as in TTRL.

Where sampling finds the right answer more often than any single wrong one, the most common answer
is a usable pseudo-label; `minAgreement` keeps the vote from rewarding answers that merely won a
scattered group (no confident majority means no signal).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tao_trainer.safe_regex import RegexTimeout, UserRegex, user_regex
from tao_trainer.spec import MajoritySpec

from .base import Detailed, Score, Scorer, check_batch, check_references, completion_text, group_spans

__all__ = ["MajorityScorer", "extract_answer", "majority_answer", "normalize_answer"]

# Slack for float representation when a share equals the threshold (e.g. a threshold computed
# as 1 - 0.7 against a share of 3/10); shares are ratios of small integers, so it changes nothing else.
_EPSILON = 1e-9


def normalize_answer(answer: str) -> str:
    """Modest normalisation: trim, collapse whitespace, casefold, drop one trailing period.

    >>> normalize_answer("  The   Answer. ")
    'the answer'
    """
    text = " ".join(answer.split()).casefold()
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def extract_answer(pattern: re.Pattern[str] | UserRegex, text: str, normalize: bool = True) -> str | None:
    """The answer in `text`: group 1 (or the whole match) of the LAST match, since final answers
    come last and worked solutions mention intermediate numbers first. None if nothing usable.
    A `UserRegex` raises `RegexTimeout` past its time budget.

    >>> extract_answer(re.compile(r"=(\\d+)"), "7+5=12, 12+1=13")
    '13'
    >>> extract_answer(re.compile(r"\\d+"), "no digits") is None
    True
    """
    last: Any = None
    if isinstance(pattern, UserRegex):
        last = pattern.last_match(text)
    else:
        for last in pattern.finditer(text):  # noqa: B007 - we want the final match
            pass
    if last is None:
        return None
    answer = last.group(1) if pattern.groups else last.group(0)
    if answer is None:  # an optional group that did not take part
        return None
    if normalize:
        answer = normalize_answer(answer)
    # An empty answer is no answer: it must not win a vote among candidates that said nothing.
    return answer or None


def majority_answer(answers: Sequence[str | None]) -> tuple[str | None, float]:
    """Most common answer and its share of ALL candidates (those without an answer included).
    Ties go to the answer that appears first, so the result does not depend on hashing.

    >>> majority_answer(["1", "2", None, "2"])
    ('2', 0.5)
    >>> majority_answer(["1", "2"])
    ('1', 0.5)
    >>> majority_answer([None, None])
    (None, 0.0)
    """
    counts: dict[str, int] = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return None, 0.0
    best = max(counts, key=counts.__getitem__)  # max keeps the first of equal keys (insertion order)
    return best, counts[best] / len(answers)


class MajorityScorer(Scorer[MajoritySpec]):
    """Group scorer: 1.0 for candidates that give their prompt's majority answer, else 0.0.

    Within each run of completions that share a prompt, the most common extracted answer wins if its
    share of the group reaches `min_agreement`; candidates without an answer count in the group size
    but vote for nothing. Without such a majority every candidate of the group scores 0.0.

    Example:

    ```python
    >>> scorer = MajorityScorer(extract=r"answer: (\\S+)", min_agreement=0.5)
    >>> prompts = ["2+2?"] * 4 + ["3+3?"] * 3
    >>> completions = ["answer: 4", "answer: 4.", "answer: 5", "no idea",
    ...                "answer: 6", "answer: 7", "answer: 8"]
    >>> scorer(prompts, completions)
    [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]

    ```

    Evaluation judges one answer against a reference group of samples:

    ```python
    >>> scorer.score_against(["2+2?"], ["answer: 4"], references=[["answer: 4", "answer: 4", "answer: 5"]])
    [1.0]

    ```
    """

    spec_model = MajoritySpec
    scorer_type = "majority"
    is_group = True

    def __init__(self, spec: MajoritySpec | None = None, /, **fields: Any) -> None:
        super().__init__(spec, **fields)
        self._pattern = None if self.spec.extract is None else user_regex(self.spec.extract)
        if self.spec.match == "math":
            from .math_answers import require_math_verify

            require_math_verify(self.name)

    def answer(self, completion: Any) -> str | None:
        """The answer a completion gives, as the vote compares it (extracted, normalized if asked);
        raises RegexTimeout when `extract` runs past its time budget on it."""
        text = completion_text(completion)
        if (
            self._pattern is None
        ):  # match: math without extract: math-verify finds the answer in the whole text
            return text if text.strip() else None
        return extract_answer(self._pattern, text, self.spec.normalize and self.spec.match == "exact")

    def _same(self, answers: Sequence[str | None]) -> list[str | None]:
        """Answers as the vote compares them: as they are, or (`match: math`) each replaced by the first
        mathematically equal answer of the group, None when math-verify finds no expression."""
        if self.spec.match == "exact":
            return list(answers)
        from .math_answers import canonical_answers

        return canonical_answers(answers)

    def _answer_or_none(self, completion: Any) -> tuple[str | None, bool]:
        try:
            return self.answer(completion), False
        except RegexTimeout:
            self.count("regexTimeouts")
            return None, True

    def vote(self, samples: Sequence[Any]) -> str | None:
        """The confident majority answer of a group of samples, or None when no answer reaches
        `minAgreement`.

        >>> scorer = MajorityScorer(extract=r"=(\\d+)")
        >>> scorer.vote(["=4", "=4", "=5"]), scorer.vote(["=1", "=2", "=3"])
        ('4', None)
        """
        return self._confident(self._same([self._answer_or_none(sample)[0] for sample in samples]))

    def _confident(self, answers: Sequence[str | None]) -> str | None:
        answer, share = majority_answer(answers)
        return answer if share >= self.spec.min_agreement - _EPSILON else None

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        extracted = [self._answer_or_none(completion) for completion in completions]
        answers = [answer for answer, _ in extracted]
        scores: list[Score] = []
        for start, stop in group_spans(prompts):
            group = self._same(answers[start:stop])
            winner = self._confident(group)
            scores.extend(
                None if timed_out else 1.0 if winner is not None and answer == winner else 0.0
                for answer, (_, timed_out) in zip(group, extracted[start:stop], strict=True)
            )
        return Detailed(scores)

    def detailed_against(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        references: Sequence[Sequence[Any]],
        **kwargs: Any,
    ) -> Detailed:
        """1.0 if `completions[i]` gives the confident majority answer of `references[i]`, else 0.0;
        None when `references[i]` is empty (nothing to judge against)."""
        check_batch(self.name, prompts, completions)
        check_references(self.name, completions, references)
        scores: list[Score] = []
        for completion, group in zip(completions, references, strict=True):
            if not group:
                scores.append(None)
                continue
            answer, timed_out = self._answer_or_none(completion)
            together = self._same([answer, *(self._answer_or_none(sample)[0] for sample in group)])
            answer, winner = together[0], self._confident(together[1:])
            scores.append(None if timed_out else 1.0 if winner is not None and answer == winner else 0.0)
        return Detailed(scores)

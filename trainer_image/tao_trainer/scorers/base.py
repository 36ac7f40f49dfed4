"""What every scorer is: a TRL-style reward callable with a name, a weight and `score_against`.

The calling convention is TRL's: `scorer(prompts, completions, **kwargs) -> list[float | None]`.
Completions of one prompt are consecutive; extra columns of the prompt record arrive as kwargs,
one list entry per completion; `None` means "no judgement", which is not the same as 0.
Because a scorer is such a callable with a `__name__`, it can be handed to `GRPOTrainer` as one
of its `reward_funcs` unchanged.

>>> completion_text([{"role": "assistant", "content": "42"}])
'42'
>>> group_spans(["a", "a", "b", "a"])
[(0, 2), (2, 3), (3, 4)]
"""

from __future__ import annotations

import contextlib
import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from pydantic import BaseModel

from tao_trainer import openai_wire

__all__ = [
    "Detail",
    "Detailed",
    "Score",
    "Scorer",
    "ScorerError",
    "check_batch",
    "check_references",
    "coerce_details",
    "coerce_scores",
    "completion_text",
    "group_spans",
]

Score = float | None
Detail = dict[str, Any] | None
SpecT = TypeVar("SpecT", bound=BaseModel)


class Detailed(NamedTuple):
    """A scorer's values plus, per completion, why it got them (sub-checks, the judge's reasoning,
    a raw value); `details` is None for scorers that have nothing to add."""

    values: list[Score]
    details: list[Detail] | None = None


class ScorerError(Exception):
    """A scorer could not be loaded, or gave back something that is not a list of scores."""


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is, or the content of the last message of a
    conversational completion (TRL passes `[{"role": "assistant", "content": ...}]`).

    >>> completion_text("plain")
    'plain'
    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    'a\\nb'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        if not completion:
            return ""
        # The final message carries the final answer (earlier ones may be tool calls and results).
        message = completion[-1]
        if isinstance(message, Mapping):
            # Parts are joined as tao serve and the capture proxy join them; a part that is not text
            # (an image a model returned) is no reason to fail a score.
            with contextlib.suppress(openai_wire.WireError):
                return openai_wire.content_text(message.get("content"), skip_other_parts=True)
    raise TypeError(
        f"a completion must be a string or a list of chat messages, not {type(completion).__name__}"
    )


def group_spans(prompts: Sequence[Any]) -> list[tuple[int, int]]:
    """Half-open index ranges of consecutive equal prompts: the candidate groups.

    TRL's GRPO repeats each prompt `num_generations` times in a row and our score stage lays
    candidates out the same way, so a group is a run of equal prompts. Two runs of the same prompt
    that happen to be adjacent merge into one group, which is harmless: they sample the same question.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for index in range(1, len(prompts) + 1):
        if index == len(prompts) or prompts[index] != prompts[start]:
            spans.append((start, index))
            start = index
    return spans


def check_batch(name: str, prompts: Sequence[Any], completions: Sequence[Any]) -> None:
    """Fail early, naming the scorer, when prompts and completions are not aligned."""
    if len(prompts) != len(completions):
        raise ValueError(
            f"scorer {name!r}: got {len(prompts)} prompts for {len(completions)} completions; "
            "pass one prompt per completion (repeat the prompt for each of its candidates)"
        )


def check_references(name: str, completions: Sequence[Any], references: Sequence[Sequence[Any]]) -> None:
    """Fail early, naming the scorer, when evaluation's reference groups do not line up with the completions."""
    if len(references) != len(completions):
        raise ValueError(
            f"scorer {name!r}: got {len(references)} reference groups for {len(completions)} completions"
        )


def coerce_details(details: Any, expected: int, where: str) -> list[dict[str, Any] | None]:
    if not isinstance(details, list | tuple) or len(details) != expected:
        raise ScorerError(f"{where} returned details that are not a list of {expected} dicts or None")
    out: list[dict[str, Any] | None] = []
    for index, detail in enumerate(details):
        if detail is not None and not isinstance(detail, Mapping):
            raise ScorerError(
                f"{where} returned a {type(detail).__name__} as details at index {index}; expected a dict or None"
            )
        out.append(None if detail is None else dict(detail))
    return out


def coerce_scores(values: Any, expected: int, where: str) -> list[Score]:
    """Check what a scorer returned and convert it to `list[float | None]`.

    Accepts lists and tuples (and arrays, through `.tolist()`) of numbers, booleans and None.
    NaN becomes None because that is how TRL itself encodes "no judgement".

    >>> coerce_scores([1, True, None, float("nan"), 0.5], 5, "demo")
    [1.0, 1.0, None, None, 0.5]
    """
    if not isinstance(values, list | tuple) and hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, list | tuple):
        raise ScorerError(
            f"{where} returned {type(values).__name__}; expected a list of {expected} floats or None"
        )
    if len(values) != expected:
        raise ScorerError(
            f"{where} returned {len(values)} scores for {expected} completions; expected one per completion"
        )
    scores: list[Score] = []
    for index, value in enumerate(values):
        if value is None:
            scores.append(None)
        elif isinstance(value, numbers.Real):
            number = float(value)
            if math.isnan(number):
                scores.append(None)
            elif math.isinf(number):
                raise ScorerError(f"{where} returned {number} at index {index}; scores must be finite")
            else:
                scores.append(number)
        else:
            raise ScorerError(
                f"{where} returned {type(value).__name__} at index {index}; expected a float, int, bool or None"
            )
    return scores


class Scorer(ABC, Generic[SpecT]):
    """Base of all scorers: built from a validated spec, called like a TRL reward function.

    Attributes:
        name: unique name of the scorer in a job; also `__name__`, which TRL uses in its logs.
        weight: weight in the combined score (and in TRL's `reward_weights`).
        is_group: True when a candidate's score depends on the other candidates of its prompt.
        spec: the validated spec the scorer was built from.
    """

    spec_model: ClassVar[type[BaseModel]]
    scorer_type: ClassVar[str]
    is_group: ClassVar[bool] = False

    def __init__(self, spec: SpecT | None = None, /, **fields: Any) -> None:
        if spec is None:
            spec = self._spec_from_fields(fields)
        elif fields:
            raise TypeError("pass either a spec or keyword fields, not both")
        self.spec: SpecT = spec
        # SpecT is bound to BaseModel: mypy cannot know that every scorer spec has a name and a weight.
        self.name: str = spec.name  # type: ignore[attr-defined]
        self.weight: float = spec.weight  # type: ignore[attr-defined]
        self.__name__ = self.name
        # Counters a stage reports in its StageResult (e.g. a judge's calls, parse failures, tokens).
        self.stats: dict[str, int] = {}

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to the counter `key` of `stats`."""
        self.stats[key] = self.stats.get(key, 0) + n

    @classmethod
    def _spec_from_fields(cls, fields: dict[str, Any]) -> SpecT:
        # Keyword construction goes through the same spec model, so errors read the same either way.
        # spec_model is SpecT's class, but a ClassVar cannot name a type variable: mypy sees BaseModel.
        return cls.spec_model.model_validate({"type": cls.scorer_type, **fields})  # type: ignore[return-value]

    @classmethod
    def from_spec(cls, spec: SpecT, *, base_dir: Path | None = None) -> Scorer[SpecT]:
        """Build from a validated spec; `base_dir` only matters to scorers that load files."""
        return cls(spec)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[Score]:
        """Score each completion; `prompts[i]` is the prompt of `completions[i]`."""
        return self.detailed(prompts, completions, **kwargs).values

    def detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        """Like calling the scorer, plus per-completion details for the scores file."""
        check_batch(self.name, prompts, completions)
        return self._detailed(prompts, completions, **kwargs)

    @abstractmethod
    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        """The one method a scorer implements: the values of a checked batch (prompts and completions
        aligned), with details where there is something to explain (`Detailed(values)` otherwise).
        Calling the scorer, `detailed` and `score_against` all derive from it."""

    def score_against(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        references: Sequence[Sequence[Any]],
        **kwargs: Any,
    ) -> list[Score]:
        """Score each completion on its own, judged against `references[i]` (a group of samples for
        the same prompt) where the scorer needs a group. Scorers that judge a completion alone
        ignore the references, so evaluation can call every scorer the same way."""
        return self.detailed_against(prompts, completions, references, **kwargs).values

    def detailed_against(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        references: Sequence[Sequence[Any]],
        **kwargs: Any,
    ) -> Detailed:
        """`score_against` plus details, for evaluation. Group scorers override this method (and
        `score_against` follows); the others give what `detailed` gives."""
        check_references(self.name, completions, references)
        return self.detailed(prompts, completions, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the spec: compiled patterns and loaded user modules need not pickle, and
        # TRL / datasets may send reward functions to worker processes.
        return (_rebuild, (type(self), self.spec, getattr(self, "base_dir", None)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, weight={self.weight})"


def _rebuild(cls: type[Scorer[Any]], spec: BaseModel, base_dir: Path | None) -> Scorer[Any]:
    return cls.from_spec(spec, base_dir=base_dir)

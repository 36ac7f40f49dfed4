"""The promotion rule: does the challenger beat the champion on the held-out prompts? Pure, no I/O.

Both models answered the same held-out prompts greedily and the gate scorers scored each answer; the
verdict compares the two models' mean label-free scores. Label metrics never reach this function.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that exist, rounded to 4 places; None when none does.

    >>> mean([1.0, None, 0.0]), mean([None])
    (0.5, None)
    """
    valued = [v for v in values if v is not None]
    return round(sum(valued) / len(valued), 4) if valued else None


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    champion_score: float | None
    challenger_score: float | None
    delta: float | None  # challenger - champion, None when either side has no score
    wins: int  # prompts where the challenger's answer scored higher
    losses: int  # prompts where it scored lower
    min_improvement: float

    @property
    def win_rate(self) -> float | None:
        decided = self.wins + self.losses
        return round(self.wins / decided, 4) if decided else None

    @property
    def message(self) -> str:
        outcome = "promoted" if self.promoted else "kept the champion"
        return (
            f"{outcome}: held-out score {self.champion_score} -> {self.challenger_score} "
            f"(change {self.delta}, gate minImprovement {self.min_improvement})"
        )

    def metrics(self) -> dict[str, float | None]:
        """The gate's figures as they appear in the evaluate result beside each side's scores."""
        return {"winRate": self.win_rate, "delta": self.delta}


def decide(
    champion: Sequence[float | None], challenger: Sequence[float | None], min_improvement: float
) -> Verdict:
    """Promote when the challenger's mean held-out score beats the champion's by at least `min_improvement`.

    `champion[i]` and `challenger[i]` are the two models' scores on held-out prompt i (None: not scored).

    >>> v = decide([0.0, 1.0, 0.0, None], [1.0, 1.0, 0.0, 1.0], 0.1)
    >>> v.promoted, v.delta, v.wins, v.losses, v.win_rate
    (True, 0.4167, 1, 0, 1.0)
    >>> v.message
    'promoted: held-out score 0.3333 -> 0.75 (change 0.4167, gate minImprovement 0.1)'
    >>> decide([None], [None], 0.0).promoted
    False
    """
    if len(champion) != len(challenger):
        raise ValueError(f"{len(champion)} champion scores for {len(challenger)} challenger scores")
    wins = losses = 0
    for ours, theirs in zip(challenger, champion, strict=True):
        if ours is not None and theirs is not None:
            wins += ours > theirs
            losses += ours < theirs
    champ_mean, chall_mean = mean(champion), mean(challenger)
    delta = None if champ_mean is None or chall_mean is None else round(chall_mean - champ_mean, 4)
    return Verdict(
        promoted=delta is not None and delta >= min_improvement,
        champion_score=champ_mean,
        challenger_score=chall_mean,
        delta=delta,
        wins=wins,
        losses=losses,
        min_improvement=min_improvement,
    )

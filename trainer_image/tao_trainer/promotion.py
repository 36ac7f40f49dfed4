"""The promotion rule: does the challenger beat the champion on the held-out prompts? Pure, no I/O.

Both models answered the same held-out prompts greedily and the gate scorers scored each answer, so the
evidence is a vector of *paired* per-prompt differences `challenger[i] - champion[i]`. The verdict, in order:

1. **Statistics.** A one-sided lower confidence bound of the mean paired difference, by a paired bootstrap
   (percentile, fixed seed: the same inputs give the same verdict). The challenger must clear
   `min_improvement` with that bound, not with the bare mean. Small samples: a bootstrap of a handful of
   identical wins would claim certainty, so when fewer prompts differ than an exact sign test needs to reach
   `confidence` even if all of them were wins (5 at 0.95), the bound is capped at 0: no claimed improvement.
2. **Alarms** (what a collapsed or reward-hacked challenger changes; see docs/gate.md for the measurements
   behind each threshold): *unsupported wins* (the bound recomputed with the wins whose answer the
   champion's own samples never produced counted as ties must still clear `min_improvement`), *support loss*
   (its greedy answers are among the champion's samples far less often than the champion's own are), *diversity
   collapse* (distinct answers per prompt among its samples fell below a share of the champion's), and
   *abstentions* (a larger share of its answers went unscored by the gate scorers than the champion's).
3. **Guards**: named paired vectors (label-free scorers, or a small labeled canary set marked `gate: true`)
   that must not regress: the lower bound of each one's difference must stay above `-tolerance`.

Label metrics reach this function only as guards the user declared explicitly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

METHOD = "paired bootstrap (2000 resamples, percentile, seed 0) with a sign-test floor"
RESAMPLES = 2000

# Alarm thresholds; the measurements behind them are in docs/gate.md. Three vote-trained rounds that really improved
# (+22, +8 and +40 points of label accuracy on the arithmetic example) kept 0.43, 0.53 and 0.22 of their champion's
# diversity; a challenger that gives one answer to every prompt keeps 0. A quarter of it vetoed the third of them.
MIN_DIVERSITY_RATIO = 0.1  # challenger diversity / champion diversity below this: collapse
MIN_CHAMPION_DIVERSITY = 0.05  # below this the champion itself is (near) deterministic: no ratio is read
MAX_ABSTAIN_RISE = 0.05  # challenger's unscored share minus the champion's above this: abstentions
# Support: share of a model's greedy answers found among the champion's samples. On the gate benchmark's seed 0
# (docs/gate.md), four real improvements kept 0.93-1.05 of the champion's own support; a challenger trained on a
# consistent wrong answer kept 0.18 (and still won the pooled vote: it supplies its own majority), a collapsed
# one 0.01.
MIN_SUPPORT_RATIO = 0.5  # challenger support / champion support below this: support-loss
MIN_CHAMPION_SUPPORT = (
    0.2  # below this the champion's greedy answers are rarely among its own samples: no ratio
)


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that exist, rounded to 4 places; None when none does.

    >>> mean([1.0, None, 0.0]), mean([None])
    (0.5, None)
    """
    valued = [v for v in values if v is not None]
    return round(sum(valued) / len(valued), 4) if valued else None


def sign_floor(confidence: float) -> int:
    """Fewest differing prompts for which even a unanimous result passes an exact one-sided sign test.

    >>> sign_floor(0.95), sign_floor(0.99), sign_floor(0.5)
    (5, 7, 1)
    """
    return max(1, math.ceil(math.log2(1.0 / (1.0 - confidence)) - 1e-9))


def sign_test(wins: int, losses: int) -> float | None:
    """One-sided exact sign test: P(at least `wins` wins out of wins + losses fair coin flips).

    >>> sign_test(5, 0), sign_test(3, 3), sign_test(0, 0)
    (0.0312, 0.6562, None)
    """
    n = wins + losses
    if n == 0:
        return None
    return round(sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n, 4)


@dataclass(frozen=True)
class Bound:
    """The paired statistics of one score: challenger minus champion on the prompts both sides scored."""

    pairs: int  # prompts both sides scored
    wins: int  # challenger scored higher
    losses: int  # challenger scored lower
    estimate: float | None  # mean difference
    lower: float | None  # one-sided lower bound at `confidence` (capped at 0 below the sign-test floor)
    upper: float | None  # the matching upper bound: [lower, upper] is a (2 * confidence - 1) interval
    confidence: float
    sign_p: float | None  # exact one-sided sign test on the differing prompts

    @property
    def differing(self) -> int:
        return self.wins + self.losses


def paired_bound(
    champion: Sequence[float | None], challenger: Sequence[float | None], confidence: float, seed: int = 0
) -> Bound:
    """Paired bootstrap bound of mean(challenger - champion) over the prompts both sides scored.

    >>> b = paired_bound([0, 0, 0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1], 0.95)
    >>> b.estimate, b.lower, b.upper, b.differing, b.sign_p
    (0.75, 0.5, 1.0, 6, 0.0156)

    Ties and all-equal vectors: no differing prompt, a zero-width interval at 0.

    >>> b = paired_bound([1, 0, 1], [1, 0, 1], 0.95)
    >>> b.estimate, b.lower, b.upper, b.differing, b.sign_p
    (0.0, 0.0, 0.0, 0, None)

    Tiny samples: three wins out of three cannot show an improvement at 0.95 (the sign test needs five).

    >>> b = paired_bound([0, 0, 0], [1, 1, 1], 0.95)
    >>> b.estimate, b.lower, b.upper
    (1.0, 0.0, 1.0)
    >>> paired_bound([None, 1], [1, None], 0.95).pairs
    0
    """
    if len(champion) != len(challenger):
        raise ValueError(f"{len(champion)} champion scores for {len(challenger)} challenger scores")
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence {confidence} must be in [0.5, 1)")
    diffs = [b - a for a, b in zip(champion, challenger, strict=True) if a is not None and b is not None]
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    if not diffs:
        return Bound(0, 0, 0, None, None, None, confidence, None)
    n = len(diffs)
    estimate = sum(diffs) / n
    if wins + losses == 0:
        lower = upper = estimate
    else:
        rng = random.Random(seed)
        means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(RESAMPLES))
        alpha = 1.0 - confidence
        lower = means[max(0, math.floor(alpha * RESAMPLES))]
        upper = means[min(RESAMPLES - 1, math.ceil(confidence * RESAMPLES) - 1)]
    if wins + losses < sign_floor(confidence):
        lower = min(lower, 0.0)
    return Bound(
        pairs=n,
        wins=wins,
        losses=losses,
        estimate=round(estimate, 4),
        lower=round(lower, 4),
        upper=round(upper, 4),
        confidence=confidence,
        sign_p=sign_test(wins, losses),
    )


@dataclass(frozen=True)
class Health:
    """What a collapse or reward hacking changes, measured on one model's held-out answers.

    diversity: mean over prompts of (distinct answers - 1) / (samples - 1) among its samples (0: one answer);
    support: share of its greedy answers found among the *champion's* samples; length: mean characters of
    its greedy answers; unscored: share of its greedy answers that no gate scorer scored.
    """

    diversity: float | None = None
    support: float | None = None
    length: float | None = None
    unscored: float | None = None


@dataclass(frozen=True)
class Guard:
    """A score that must not regress: its own paired vectors and a non-inferiority tolerance."""

    champion: Sequence[float | None]
    challenger: Sequence[float | None]
    tolerance: float = 0.05
    uses_labels: bool = False


@dataclass(frozen=True)
class GuardResult:
    name: str
    bound: Bound
    tolerance: float
    uses_labels: bool

    @property
    def passed(self) -> bool:
        # No pair scored at all: nothing shows a regression (reported, e.g. a canary with no held-out label).
        return self.bound.lower is None or self.bound.lower >= -self.tolerance


@dataclass(frozen=True)
class Verdict:
    promoted: bool
    reason: str  # promoted | no-scores | not-better | alarm:<name> | guard:<name>
    champion_score: float | None
    challenger_score: float | None
    bound: Bound
    min_improvement: float
    alarms: tuple[str, ...] = ()  # every alarm that fired, with its figures
    guards: tuple[GuardResult, ...] = ()
    champion_health: Health = field(default_factory=Health)
    challenger_health: Health = field(default_factory=Health)
    supported_bound: Bound | None = None  # the bound with unsupported wins counted as ties

    @property
    def delta(self) -> float | None:
        return self.bound.estimate

    @property
    def wins(self) -> int:
        return self.bound.wins

    @property
    def losses(self) -> int:
        return self.bound.losses

    @property
    def win_rate(self) -> float | None:
        decided = self.wins + self.losses
        return round(self.wins / decided, 4) if decided else None

    @property
    def message(self) -> str:
        b = self.bound
        outcome = "promoted" if self.promoted else f"kept the champion ({self.reason})"
        text = (
            f"{outcome}: held-out score {self.champion_score} -> {self.challenger_score}, change {b.estimate} "
            f"[{b.lower}, {b.upper}] at {b.confidence:g} one-sided, {b.differing} of {b.pairs} prompts differ "
            f"({b.wins} better, {b.losses} worse); needs lower bound >= {self.min_improvement}"
        )
        if self.alarms:
            text += "; alarms: " + "; ".join(self.alarms)
        failed = [g for g in self.guards if not g.passed]
        if failed:
            text += "; guards failed: " + "; ".join(
                f"{g.name}{' (labels)' if g.uses_labels else ''} change {g.bound.estimate} lower "
                f"{g.bound.lower} < -{g.tolerance}"
                for g in failed
            )
        return text

    def metrics(self) -> dict[str, float | None]:
        """The gate's figures for the stage result (small: the termination message carries them)."""
        b = self.bound
        out: dict[str, float | None] = {
            "winRate": self.win_rate,
            "delta": b.estimate,
            "gate.lower": b.lower,
            "gate.upper": b.upper,
            "gate.confidence": b.confidence,
            "gate.signP": b.sign_p,
        }
        for side, h in (("champion", self.champion_health), ("challenger", self.challenger_health)):
            out[f"{side}.diversity"] = h.diversity
            out[f"{side}.support"] = h.support
            out[f"{side}.length"] = h.length
        for g in self.guards:
            out[f"guard.{g.name}.change"] = g.bound.estimate
            out[f"guard.{g.name}.lower"] = g.bound.lower
            out[f"guard.{g.name}.pass"] = 1.0 if g.passed else 0.0
            out[f"guard.{g.name}.labels"] = 1.0 if g.uses_labels else 0.0
        return out

    def report(self) -> dict[str, object]:
        """Every figure, for report.json."""
        b = self.bound
        s = self.supported_bound
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "method": METHOD,
            "confidence": b.confidence,
            "minImprovement": self.min_improvement,
            "estimate": b.estimate,
            "interval": [b.lower, b.upper],
            "pairs": b.pairs,
            "differing": b.differing,
            "wins": b.wins,
            "losses": b.losses,
            "signTestP": b.sign_p,
            "supportedInterval": None if s is None else [s.lower, s.upper],
            "supportedEstimate": None if s is None else s.estimate,
            "alarms": list(self.alarms),
            "health": {"champion": vars(self.champion_health), "challenger": vars(self.challenger_health)},
            "guards": [
                {
                    "name": g.name,
                    "usesLabels": g.uses_labels,
                    "tolerance": g.tolerance,
                    "estimate": g.bound.estimate,
                    "interval": [g.bound.lower, g.bound.upper],
                    "pairs": g.bound.pairs,
                    "differing": g.bound.differing,
                    "passed": g.passed,
                }
                for g in self.guards
            ],
        }


def _alarms(
    champion: Sequence[float | None],
    challenger: Sequence[float | None],
    supported: Sequence[bool | None] | None,
    champ_h: Health,
    chall_h: Health,
    min_improvement: float,
    confidence: float,
) -> tuple[list[tuple[str, str]], Bound | None]:
    fired: list[tuple[str, str]] = []
    sup_bound = None
    if supported is not None:
        # A win whose answer the champion's samples never produced counts as a tie.
        kept = [
            b if (b is None or a is None or b <= a or s) else a
            for a, b, s in zip(champion, challenger, supported, strict=True)
        ]
        sup_bound = paired_bound(champion, kept, confidence)
        unsupported = sum(1 for x, y in zip(challenger, kept, strict=True) if x != y)
        # Fires only when there are such wins: without them it would repeat the statistical verdict.
        if unsupported and (sup_bound.lower is None or sup_bound.lower < min_improvement):
            fired.append(
                (
                    "unsupported-wins",
                    f"unsupported-wins: {unsupported} wins with answers the champion's samples never gave; "
                    f"without them change {sup_bound.estimate} lower {sup_bound.lower}",
                )
            )
        # Support in aggregate: a challenger whose greedy answers the champion's samples seldom give has left the
        # answers the vote can vouch for, even where a stray sample of the champion supports some of its wins.
        if fell_below(champ_h.support, chall_h.support, MIN_CHAMPION_SUPPORT, MIN_SUPPORT_RATIO):
            fired.append(
                (
                    "support-loss",
                    f"support-loss: greedy answers among the champion's samples {champ_h.support} -> "
                    f"{chall_h.support} (below {MIN_SUPPORT_RATIO} of the champion's)",
                )
            )
    if fell_below(champ_h.diversity, chall_h.diversity, MIN_CHAMPION_DIVERSITY, MIN_DIVERSITY_RATIO):
        fired.append(
            (
                "diversity-collapse",
                f"diversity-collapse: distinct answers per prompt {champ_h.diversity} -> {chall_h.diversity} "
                f"(below {MIN_DIVERSITY_RATIO} of the champion's)",
            )
        )
    if (
        champ_h.unscored is not None
        and chall_h.unscored is not None
        and chall_h.unscored - champ_h.unscored > MAX_ABSTAIN_RISE
    ):
        fired.append(
            (
                "abstentions",
                f"abstentions: unscored answers {champ_h.unscored} -> {chall_h.unscored} "
                f"(more than +{MAX_ABSTAIN_RISE})",
            )
        )
    return fired, sup_bound


def decide(
    champion: Sequence[float | None],
    challenger: Sequence[float | None],
    min_improvement: float,
    *,
    confidence: float = 0.95,
    alarms: bool = True,
    supported: Sequence[bool | None] | None = None,
    champion_health: Health | None = None,
    challenger_health: Health | None = None,
    guards: Mapping[str, Guard] | None = None,
) -> Verdict:
    """Promote when the lower confidence bound of the paired improvement clears `min_improvement`, no alarm
    fired (unless `alarms` is False) and no guard regressed.

    `champion[i]` and `challenger[i]` are the two models' scores on held-out prompt i (None: not scored);
    `supported[i]`: whether the challenger's answer to prompt i is among the champion's samples.

    >>> v = decide([0.0] * 8 + [1.0] * 2, [1.0] * 10, 0.01)
    >>> v.promoted, v.reason, v.delta, v.wins, v.losses, v.win_rate
    (True, 'promoted', 0.8, 8, 0, 1.0)
    >>> v.message
    'promoted: held-out score 0.2 -> 1.0, change 0.8 [0.6, 1.0] at 0.95 one-sided, 8 of 10 prompts differ (8 better, 0 worse); needs lower bound >= 0.01'

    A mean gain that chance explains is not enough; a no-op challenger never clears a positive bar.

    >>> decide([0, 1, 0, 1, 0, 1], [1, 0, 1, 0, 1, 1], 0.01).reason
    'not-better'
    >>> decide([1, 0, 1], [1, 0, 1], 0.01).reason, decide([1, 0, 1], [1, 0, 1], -10).promoted
    ('not-better', True)
    >>> decide([None], [None], 0.0).reason
    'no-scores'

    Wins through answers the champion's samples never gave are not wins:

    >>> v = decide([0] * 10, [1] * 10, 0.01, supported=[False] * 10)
    >>> v.promoted, v.reason
    (False, 'alarm:unsupported-wins')
    >>> decide([0] * 10, [1] * 10, 0.01, supported=[False] * 10, alarms=False).promoted
    True

    Nor are the wins of a challenger whose answers the champion's samples seldom give, even where a stray
    sample supports them:

    >>> v = decide([0] * 10, [1] * 10, 0.01, supported=[True] * 10,
    ...            champion_health=Health(support=0.8), challenger_health=Health(support=0.15))
    >>> v.reason, v.alarms[0]
    ('alarm:support-loss', "support-loss: greedy answers among the champion's samples 0.8 -> 0.15 (below 0.5 of the champion's)")

    A guard that regresses vetoes the promotion:

    >>> canary = Guard(champion=[1] * 10, challenger=[0] * 6 + [1] * 4, tolerance=0.05, uses_labels=True)
    >>> decide([0] * 10, [1] * 10, 0.01, guards={"accuracy": canary}).reason
    'guard:accuracy'
    """
    bound = paired_bound(champion, challenger, confidence)
    champ_h, chall_h = champion_health or Health(), challenger_health or Health()
    fired, sup_bound = _alarms(champion, challenger, supported, champ_h, chall_h, min_improvement, confidence)
    guard_results = tuple(
        GuardResult(name, paired_bound(g.champion, g.challenger, confidence), g.tolerance, g.uses_labels)
        for name, g in (guards or {}).items()
    )
    if bound.lower is None:
        reason = "no-scores"
    elif bound.lower < min_improvement:
        reason = "not-better"
    elif alarms and fired:
        reason = f"alarm:{fired[0][0]}"
    elif any(not g.passed for g in guard_results):
        reason = "guard:" + next(g.name for g in guard_results if not g.passed)
    else:
        reason = "promoted"
    return Verdict(
        promoted=reason == "promoted",
        reason=reason,
        champion_score=mean(champion),
        challenger_score=mean(challenger),
        bound=bound,
        min_improvement=min_improvement,
        alarms=tuple(text for _, text in fired) if alarms else (),
        guards=guard_results,
        champion_health=champ_h,
        challenger_health=chall_h,
        supported_bound=sup_bound,
    )


def fell_below(champion: float | None, challenger: float | None, champion_floor: float, ratio: float) -> bool:
    """Whether a figure the champion has in measurable amount (at least `champion_floor`) fell below `ratio` of it
    in the challenger: how support-loss and diversity-collapse fire.

    >>> fell_below(0.8, 0.3, 0.1, 0.5), fell_below(0.8, 0.5, 0.1, 0.5), fell_below(0.05, 0.0, 0.1, 0.5)
    (True, False, False)
    """
    return (
        champion is not None
        and challenger is not None
        and champion >= champion_floor
        and challenger < ratio * champion
    )


def max_prompts_too_small(
    max_prompts: int, min_improvement: float, confidence: float, held_out: int | None = None
) -> str | None:
    """A warning when the held-out prompts the gate evaluates, `max_prompts` or fewer when the held-out split
    (`held_out` prompts, where known) is smaller, can never give a bound that clears `min_improvement`.

    >>> max_prompts_too_small(4, 0.01, 0.95)
    'evaluation.maxPrompts 4 is below 5, the fewest differing prompts with which a bound at confidence 0.95 can show any improvement: the gate will never promote'
    >>> max_prompts_too_small(200, 0.01, 0.95) is None, max_prompts_too_small(4, -10, 0.95) is None
    (True, True)
    >>> max_prompts_too_small(200, 0.01, 0.95, held_out=3)[:72]
    'the held-out split has 3 prompts (evaluation.maxPrompts 200), below 5, t'
    """
    floor = sign_floor(confidence)
    if min_improvement < 0:
        return None
    reason = None
    if max_prompts < floor:
        reason = f"evaluation.maxPrompts {max_prompts} is below {floor}"
    elif held_out is not None and held_out < floor:
        reason = (
            f"the held-out split has {held_out} prompts (evaluation.maxPrompts {max_prompts}), below {floor}"
        )
    if reason is None:
        return None
    return (
        f"{reason}, the fewest differing prompts with which a bound at confidence {confidence:g} can show any "
        "improvement: the gate will never promote"
    )

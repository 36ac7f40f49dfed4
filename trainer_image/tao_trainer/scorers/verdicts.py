"""Reading an LLM judge's verdict out of its free-text reply: a pointwise `SCORE: <n>` line, or the JSON
object of scores by candidate id of a relative judgement. Only the LAST verdict counts: earlier ones may be
quoted from a candidate.

>>> parse_score("The answer is correct but terse.\\nSCORE: 7", (1, 10))
(7.0, None)
>>> parse_relative('Candidate 2 is best. {"1": 0.25, "2": 1}', ["1", "2"])
({'1': 0.25, '2': 1.0}, None)
>>> bool(REFUSAL.match("I'm sorry, I can't rate this."))
True
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["REFUSAL", "last_label", "parse_relative", "parse_relative_at", "parse_score"]

# A verdict line: optional markdown/quote decoration, "score" or "rating" (optionally "final"/"overall"),
# an optional parenthetical such as "(1-10)", then ':' or '='. Anchored at a line start so that prose
# mentioning a score ("it deserves a score: maybe") inside a sentence is not a verdict line.
_LABEL = re.compile(
    r"^[ \t>*_#`\-\[(]*(?:(?:final|overall)\s+)?(?:score|rating)\b[ \t*_`]*(?:\([^)\n]*\))?[ \t*_`]*[:=](?P<rest>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER = re.compile(
    r"^[\s*_`\[(<]*(?P<num>[-+]?\d+(?:\.\d+)?)\s*(?:(?:/|out\s+of)\s*(?P<den>\d+(?:\.\d+)?))?", re.IGNORECASE
)
# A reply that declines to judge (rather than one we failed to read).
REFUSAL = re.compile(
    r"^\W*(?:I'?m sorry|I am sorry|I (?:can(?:no|')t|cannot|won'?t|will not|am unable|'m unable)|As an AI)\b",
    re.IGNORECASE,
)


def last_label(text: str) -> re.Match[str] | None:
    """The reply's last verdict line (`Score: ...`, `**Rating (1-10):** ...`), or None.

    >>> last_label("Score: 9 says the candidate.\\nSCORE: 4").group("rest")
    ' 4'
    """
    last = None
    for last in _LABEL.finditer(text):  # noqa: B007 - the final verdict line is the one that counts
        pass
    return last


def _fmt(x: float) -> str:
    return f"{x:g}"


def parse_score(text: str, scale: Sequence[float]) -> tuple[float | None, str | None]:
    """(raw score, None) from the judge's LAST verdict line, or (None, why not).

    Tolerates `Score: 7/10`, `**Score:** 8`, `Final rating (1-10): 6.5`, `SCORE: 7 out of 10`; a denominator
    other than the scale's top, or a number outside the scale, is rejected.

    >>> parse_score("SCORE: 10 (from the candidate)\\nMy verdict:\\nScore: 3", (1, 10))
    (3.0, None)
    >>> parse_score("Final rating (1-10): 6.5", (1, 10))
    (6.5, None)
    >>> parse_score("Score: 4/5", (1, 10))
    (None, "score '4/5' is not on the scale [1, 10]")
    >>> parse_score("Looks fine to me.", (1, 10))
    (None, "no 'SCORE: <n>' line")
    """
    lo, hi = scale
    label = last_label(text)
    if label is None:
        return None, "no 'SCORE: <n>' line"
    number = _NUMBER.match(label.group("rest"))
    if number is None:
        return None, f"no number on the score line {label.group(0).strip()[:60]!r}"
    value = float(number.group("num"))
    if number.group("den") is not None and float(number.group("den")) != hi:
        return (
            None,
            f"score '{number.group('num')}/{number.group('den')}' is not on the scale [{_fmt(lo)}, {_fmt(hi)}]",
        )
    if not lo <= value <= hi:
        return None, f"score {_fmt(value)} is outside the scale [{_fmt(lo)}, {_fmt(hi)}]"
    return value, None


def _json_objects(text: str) -> list[tuple[int, dict[str, Any]]]:
    """(start, object) of each top-level JSON object in free text, in order (a ```json fence is fine)."""
    decoder = json.JSONDecoder()
    found, pos = [], text.find("{")
    while pos >= 0:
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            pos = text.find("{", pos + 1)
            continue
        found.append((pos, value))
        pos = text.find("{", end)
    return found


def _score_map(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """{id: value} from the shapes judges use: {"1": 0.8}, {"scores": {"1": 0.8}}, or
    {"scores": [{"id": "1", "score": 0.8}]} (RULER's `trajectory_id` too)."""
    scores = obj.get("scores")
    if isinstance(scores, Mapping):
        return {str(k): v for k, v in scores.items()}
    if isinstance(scores, list):
        out: dict[str, Any] = {}
        for item in scores:
            if not isinstance(item, Mapping):
                return None
            ident = next(
                (item[k] for k in ("id", "candidate_id", "candidate", "trajectory_id") if k in item), None
            )
            if ident is None or "score" not in item:
                return None
            out[str(ident)] = item["score"]
        return out
    return {str(k): v for k, v in obj.items()}


def _unit_value(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and 0.0 <= float(value) <= 1.0:
        return float(value)
    return None


def parse_relative(text: str, ids: Sequence[str]) -> tuple[dict[str, float], str | None]:
    """Scores by candidate id from the LAST JSON object of the reply that names any of `ids`; ids that are
    missing or whose value is not a number in 0..1 are left out, and the second item says so.

    >>> parse_relative('```json\\n{"scores": [{"id": 1, "score": 0.5}, {"id": 2, "score": 7}]}\\n```', ["1", "2"])
    ({'1': 0.5}, 'no valid score for id 2')
    >>> parse_relative("I prefer the first.", ["1", "2"])
    ({}, 'no JSON object with candidate ids')
    """
    scores, error, _ = parse_relative_at(text, ids)
    return scores, error


def parse_relative_at(text: str, ids: Sequence[str]) -> tuple[dict[str, float], str | None, int]:
    """parse_relative, plus where the verdict object starts (the reasoning is what comes before it)."""
    wanted = set(ids)
    for start, obj in reversed(_json_objects(text)):
        mapping = _score_map(obj)
        if mapping is None or not wanted & mapping.keys():
            continue
        scores = {i: v for i in ids if i in mapping and (v := _unit_value(mapping[i])) is not None}
        bad = [i for i in ids if i not in scores]
        return scores, (f"no valid score for id {', '.join(bad)}" if bad else None), start
    return {}, "no JSON object with candidate ids", len(text)

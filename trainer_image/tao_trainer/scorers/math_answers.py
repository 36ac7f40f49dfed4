"""Mathematical answers compared as mathematics (math-verify, as TRL's accuracy_reward does): 1/2, 0.5 and
\\frac12 are one answer to a majority vote with `match: math`.

>>> canonical_answers(["$\\\\frac{1}{2}$", "0.5", "1/2", "$3$", "no answer here", None])
['$\\\\frac{1}{2}$', '$\\\\frac{1}{2}$', '$\\\\frac{1}{2}$', '$3$', None, None]
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .base import ScorerError

__all__ = ["canonical_answers", "require_math_verify"]


def require_math_verify(name: str) -> None:
    """Fail at build time, naming the scorer, when math-verify is not installed."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        raise ScorerError(
            f"scorer {name!r}: match: math needs math-verify (pip install math-verify; in the `train` extra)"
        ) from None


def _timeouts() -> dict[str, Any]:
    # math-verify's timeouts use signal.alarm, which works in the main thread only.
    main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": 5 if main else None}


def canonical_answers(answers: Sequence[str | None]) -> list[str | None]:
    """Each answer replaced by the first answer of the list that math-verify finds equal to it; None where it
    finds no expression. Comparisons are pairwise against one representative per class (a group is small)."""
    from math_verify import parse, verify

    timeouts = _timeouts()
    verify_timeout = 5 if timeouts["parsing_timeout"] else None
    classes: list[tuple[str, Any]] = []  # (representative text, its parsed form)
    out: list[str | None] = []
    for answer in answers:
        if answer is None:
            out.append(None)
            continue
        try:
            parsed = parse(answer, **timeouts)
        except Exception:  # noqa: BLE001 - an answer math-verify cannot read is no answer, not a failed stage
            parsed = []
        if not parsed:
            out.append(None)
            continue
        for text, rep in classes:
            try:
                same = bool(verify(rep, parsed, timeout_seconds=verify_timeout))
            except Exception:  # noqa: BLE001
                same = False
            if same:
                out.append(text)
                break
        else:
            classes.append((answer, parsed))
            out.append(answer)
    return out

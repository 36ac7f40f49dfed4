"""User regular expressions that cannot hang a stage: a check when the spec is read, a time budget per call.

Two layers, because no static check catches every slow pattern:

- `catastrophic(pattern)` (called by `spec.base.check_regex`, the one validation point of every user
  regex in a TAOJob) rejects the classic exponential shapes: a quantifier over a body that itself holds
  a variable quantifier with nothing mandatory and disjoint to separate the iterations (`(a+)+`,
  `(.*)*`, `(\\w+\\s?)+`, `(x+x+)+y`), and a quantified alternation whose branches can start with the
  same character (`(a|a)*`, `(a|ab)+`). `(\\d+,)*` and `(?:cat|dog)+` pass.
- `UserRegex` runs every call with a time budget (`BUDGET_SECONDS`, through the `regex` package's
  `timeout`): a call that runs out raises `RegexTimeout`; the scorers then abstain (None) and count
  `regexTimeouts`. The budget is the guarantee; the check only turns the obvious cases into a clear
  error at `tao validate` instead of a counter at run time.

Pure standard library at import (`regex` is imported on first use), so the spec package may import it.
"""

from __future__ import annotations

import functools
import importlib
import re
import time
from collections.abc import Iterable
from typing import Any

# The standard library's own regex parser (re._parser since 3.11, sre_parse before).
try:
    _c: Any = importlib.import_module("re._constants")
    _p: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - older interpreters
    _c = importlib.import_module("sre_constants")
    _p = importlib.import_module("sre_parse")

__all__ = ["BUDGET_SECONDS", "RegexTimeout", "UserRegex", "catastrophic", "user_regex"]

BUDGET_SECONDS = 0.25
_REPEATS = {_c.MAX_REPEAT, _c.MIN_REPEAT}
# Characters standing in for "any character" when comparing what two atoms can match.
_SAMPLE = [chr(i) for i in range(128)] + ["\u00a0", "\u00e9", "\u00df", "\u4e2d", "\u0661", "\U0001f600"]
_ALL = frozenset(range(len(_SAMPLE)))


class RegexTimeout(TimeoutError):
    """A user regex ran past its time budget on one text."""


def _category(category: Any, char: str) -> bool:
    name = str(category)
    word = char.isalnum() or char == "_"
    table = {
        "CATEGORY_DIGIT": char.isdigit(),
        "CATEGORY_NOT_DIGIT": not char.isdigit(),
        "CATEGORY_SPACE": char.isspace(),
        "CATEGORY_NOT_SPACE": not char.isspace(),
        "CATEGORY_WORD": word,
        "CATEGORY_NOT_WORD": not word,
    }
    return table.get(name, True)


def _charset(items: Iterable[tuple[Any, Any]]) -> frozenset[int]:
    negate = False
    chosen: set[int] = set()
    for op, av in items:
        if op is _c.NEGATE:
            negate = True
        for index, char in enumerate(_SAMPLE):
            code = ord(char)
            if (
                (op is _c.LITERAL and code == av)
                or (op is _c.RANGE and av[0] <= code <= av[1])
                or (op is _c.CATEGORY and _category(av, char))
            ):
                chosen.add(index)
    return _ALL - chosen if negate else frozenset(chosen)


def _atom_chars(op: Any, av: Any) -> frozenset[int] | None:
    """The sample characters one single-character atom matches; None for anything else."""
    if op is _c.LITERAL:
        return _charset([(op, av)])
    if op is _c.NOT_LITERAL:
        return _ALL - _charset([(_c.LITERAL, av)])
    if op is _c.ANY:
        return _ALL
    if op is _c.IN:
        return _charset(av)
    return None


def _chars(items: Iterable[tuple[Any, Any]]) -> frozenset[int]:
    """Every sample character some atom anywhere in `items` matches (an over-approximation)."""
    found: frozenset[int] = frozenset()
    for op, av in items:
        atom = _atom_chars(op, av)
        if atom is not None:
            found |= atom
        else:
            for child in _children(op, av):
                found |= _chars(child)
    return found


def _children(op: Any, av: Any) -> list[Any]:
    if op in _REPEATS or op is getattr(_c, "POSSESSIVE_REPEAT", None):
        return [av[2]]
    if op is _c.SUBPATTERN:
        return [av[3]]
    if op is _c.BRANCH:
        return list(av[1])
    if op in (_c.ASSERT, _c.ASSERT_NOT):
        return [av[1]]
    if op is getattr(_c, "ATOMIC_GROUP", None):
        return [av]
    if op is _c.GROUPREF_EXISTS:
        return [branch for branch in av[1:] if branch is not None]
    return []


def _first(items: list[tuple[Any, Any]]) -> frozenset[int]:
    """Sample characters a match of `items` can start with (over-approximated)."""
    found: frozenset[int] = frozenset()
    for op, av in items:
        atom = _atom_chars(op, av)
        if atom is not None:
            return found | atom
        if op in (_c.AT, _c.ASSERT, _c.ASSERT_NOT):
            continue
        if op in _REPEATS:
            found |= _first(list(av[2]))
            if av[0] > 0:
                return found
            continue
        if op is _c.BRANCH:
            for branch in av[1]:
                found |= _first(list(branch))
            return found
        if op is _c.SUBPATTERN:
            return found | _first(list(av[3]))
        return _ALL
    return found


def _variable_repeats(items: Iterable[tuple[Any, Any]]) -> list[frozenset[int]]:
    """What each variable-count quantifier inside `items` repeats (atomic groups excluded)."""
    found: list[frozenset[int]] = []
    for op, av in items:
        if op in _REPEATS and av[1] > av[0] and av[1] > 1:
            found.append(_chars(av[2]))
        if op is getattr(_c, "ATOMIC_GROUP", None) or op is getattr(_c, "POSSESSIVE_REPEAT", None):
            continue
        for child in _children(op, av):
            found.extend(_variable_repeats(child))
    return found


def _mandatory_atoms(items: Iterable[tuple[Any, Any]]) -> list[frozenset[int]]:
    """Single-character atoms every match of `items` must contain, at this level and in groups."""
    found: list[frozenset[int]] = []
    for op, av in items:
        atom = _atom_chars(op, av)
        if atom is not None:
            found.append(atom)
        elif op is _c.SUBPATTERN:
            found.extend(_mandatory_atoms(av[3]))
        elif op in _REPEATS and av[0] >= 1 and av[0] == av[1]:
            found.extend(_mandatory_atoms(av[2]))
    return found


def _flatten(items: Iterable[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """`items` with groups opened (their contents in place), at this level only."""
    flat: list[tuple[Any, Any]] = []
    for op, av in items:
        if op is _c.SUBPATTERN:
            flat.extend(_flatten(av[3]))
        else:
            flat.append((op, av))
    return flat


def _check(items: Iterable[tuple[Any, Any]]) -> str | None:
    for op, av in items:
        if op in _REPEATS and av[1] > 1:
            body = list(av[2])
            inner = _variable_repeats(body)
            if inner:
                separators = _mandatory_atoms(body)
                for repeated in inner:
                    if not any(not (sep & repeated) for sep in separators):
                        return "a quantifier over a quantified part that can match the same text many ways"
            for sub_op, sub_av in _flatten(body):
                if sub_op is _c.IN:  # a single-character alternation arrives folded into a set
                    literals = [item for item in sub_av if item[0] is _c.LITERAL]
                    if len(literals) != len(set(literals)):
                        return "a quantified alternation whose branches can match the same text"
                if sub_op is _c.BRANCH:
                    # `a|a` arrives as `a(?:|)`: the parser moves a common prefix out of the branches.
                    branches = [list(branch) for branch in sub_av[1]]
                    starts = [_first(branch) for branch in branches]
                    for i, a in enumerate(starts):
                        for j in range(i + 1, len(starts)):
                            if a & starts[j] or str(branches[i]) == str(branches[j]):
                                return "a quantified alternation whose branches can match the same text"
        for child in _children(op, av):
            reason = _check(child)
            if reason is not None:
                return reason
    return None


def catastrophic(pattern: str) -> str | None:
    """Why `pattern` can take exponential time (backtracking), or None.

    >>> catastrophic(r"(a+)+$"), catastrophic(r"(a|a)*"), catastrophic(r"(.*)*") is not None
    ('a quantifier over a quantified part that can match the same text many ways', \
'a quantified alternation whose branches can match the same text', True)
    >>> catastrophic(r"(\\d+,)*\\d+"), catastrophic(r"(?:cat|dog)+"), catastrophic(r"ANSWER: (\\d+)")
    (None, None, None)
    """
    try:
        parsed = _p.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return None  # re.compile reports it
    try:
        return _check(list(parsed))
    except RecursionError:
        return "nested too deeply to check"


class UserRegex:
    """A user's pattern, compiled with the `regex` package; every call has a time budget."""

    def __init__(self, pattern: str, budget: float = BUDGET_SECONDS) -> None:
        import regex

        self.pattern = pattern
        self.budget = budget
        self._compiled = regex.compile(pattern)
        self.groups: int = self._compiled.groups

    def _call(self, method: str, text: str) -> Any:
        try:
            return getattr(self._compiled, method)(text, timeout=self.budget)
        except TimeoutError:
            raise RegexTimeout(f"regular expression {self.pattern!r} ran past {self.budget:g} s") from None

    def search(self, text: str) -> Any:
        return self._call("search", text)

    def fullmatch(self, text: str) -> Any:
        return self._call("fullmatch", text)

    def last_match(self, text: str) -> Any:
        """The last non-overlapping match in `text`, or None (one budget for the whole scan)."""
        deadline = time.monotonic() + self.budget
        found = None
        try:
            for found in self._compiled.finditer(text, timeout=self.budget):  # noqa: B007
                if time.monotonic() > deadline:
                    raise TimeoutError
        except TimeoutError:
            raise RegexTimeout(f"regular expression {self.pattern!r} ran past {self.budget:g} s") from None
        return found


@functools.lru_cache(maxsize=512)
def user_regex(pattern: str) -> UserRegex:
    """The compiled, budgeted form of `pattern` (cached)."""
    return UserRegex(pattern)

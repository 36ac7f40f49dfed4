"""Finding the code in a completion, for the scorers that execute it (`sql`, `python_tests`).

Models wrap code in Markdown fences, explain it before and after, and sometimes run out of tokens
before closing the fence. `extract_code` takes, in this order: the user's regular expression; the
last fenced block (preferring one tagged with the expected language, or untagged); an unclosed
fence at the end; the whole completion.

>>> extract_code("Here you go:\\n```sql\\nSELECT 1;\\n```\\nIt selects one.")
'SELECT 1;'
>>> extract_code("  SELECT name FROM users  ")
'SELECT name FROM users'
"""

from __future__ import annotations

import re
from typing import Any

from tao_trainer.safe_regex import user_regex

__all__ = ["extract_code"]

# An opening fence at the start of a line (``` or ~~~, optionally indented and tagged), its body,
# and the matching closing fence on a line of its own.
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+#.-]*)[^\n]*\n(?P<body>.*?)^[ \t]*(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
_OPEN_FENCE = re.compile(
    r"^[ \t]*(?:`{3,}|~{3,})[ \t]*(?P<lang>[\w+#.-]*)[^\n]*\n(?P<body>.*)\Z", re.MULTILINE | re.DOTALL
)


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    last = None
    for last in pattern.finditer(text):  # noqa: B007 - we want the final match
        pass
    return last


def extract_code(text: str, pattern: str | re.Pattern[str] | None = None, language: str | None = None) -> str:
    """The code in `text`, trimmed.

    - `pattern` given: group 1 of its last match (the whole match if it has no group); "" if it does
      not match, since a completion that breaks the requested format holds no code. A pattern given
      as a string is a user's: it runs with a time budget and raises `RegexTimeout` past it.
    - else the last fenced code block; with `language`, the last block tagged with it (or untagged)
      wins over blocks in other languages, so a trailing ```text block of sample output is skipped.
    - else an opening fence with no closing one (generation stopped early): everything after it.
    - else the whole completion.

    >>> extract_code("<sql>SELECT 1</sql> then <sql>SELECT 2</sql>", r"<sql>(.*?)</sql>")
    'SELECT 2'
    >>> extract_code("no tags here", r"<sql>(.*?)</sql>")
    ''
    >>> extract_code("```python\\nx = 1\\n```\\nOutput:\\n```text\\n1\\n```", language="python")
    'x = 1'
    >>> extract_code("```python\\nx = 1\\n```\\nOutput:\\n```text\\n1\\n```")
    '1'
    >>> extract_code("```\\nSELECT 2\\n```")
    'SELECT 2'
    >>> extract_code("Sure:\\n```sql\\nSELECT * FROM t WHERE")
    'SELECT * FROM t WHERE'
    """
    if pattern is not None:
        if isinstance(pattern, str):  # a user's pattern: budgeted, raises RegexTimeout
            budgeted = user_regex(pattern)
            match: Any = budgeted.last_match(text)
            groups = budgeted.groups
        else:
            match, groups = _last_match(pattern, text), pattern.groups
        if match is None:
            return ""
        found = match.group(1) if groups else match.group(0)
        return (found or "").strip()
    blocks = list(_FENCE.finditer(text))
    if blocks:
        if language is not None:
            wanted = language.casefold()
            preferred = [b for b in blocks if b.group("lang").casefold() in (wanted, "")]
            if preferred:
                return preferred[-1].group("body").strip()
        return blocks[-1].group("body").strip()
    unclosed = _OPEN_FENCE.search(text)
    if unclosed is not None:
        return unclosed.group("body").strip()
    return text.strip()

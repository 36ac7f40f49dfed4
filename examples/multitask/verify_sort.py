"""Label-free verifier of the multi-task example's `sort` task: is the answer the prompt's digits, ascending?

A TRL-style reward function: it reads the digits from the prompt itself (``5,9,1=``) and the final answer after
``;`` at the end of the completion, so it needs no label.

>>> sorted_digits(["5,9,1=", "5,9,1=", "5,9,1=", "5,9,1="], [";159", ";195", ";1599", "159"])
[1.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

ANSWER = re.compile(r";(\d+)$")


def sorted_digits(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    scores = []
    for prompt, completion in zip(prompts, completions, strict=True):
        digits = re.findall(r"\d", str(prompt).split("=")[0])
        found = ANSWER.search(str(completion))
        scores.append(1.0 if found and found.group(1) == "".join(sorted(digits)) else 0.0)
    return scores

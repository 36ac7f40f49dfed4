"""Label-free scorer of the extraction example: is every value of the answer's JSON written in the prompt?

A TRL-style reward function. The answer is read as the scorer `json` reads it with `extract: first_object`: the
first {...} object of the text. The score is the share of the expected keys (name, age, city) whose value
appears in the prompt's sentence (case-insensitively; a number as its digits); 0 without a JSON object.

>>> p = [{"role": "user", "content": "Sentence: Mara Novak, 34, lives in Porto."}]
>>> grounded([p, p, p], ['{"name": "Mara Novak", "age": 34, "city": "Porto"}', '{"name": "Mara", "age": 43}', "x"])
[1.0, 0.3333333333333333, 0.0]
"""

from __future__ import annotations

from typing import Any

from tao_trainer.scorers.json_check import parse_json

KEYS = ("name", "age", "city")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # chat messages, or an assistant completion as TRL passes it
        return "\n".join(_text(m.get("content", "")) if isinstance(m, dict) else _text(m) for m in value)
    return "" if value is None else str(value)


def first_object(text: str) -> dict[str, Any] | None:
    """The first {...} object of a text, read by the `json` scorer's own parser (`extract: first_object`)."""
    found, value = parse_json(text, extract="first_object")
    return value if found and isinstance(value, dict) else None


def grounded(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    out = []
    for prompt, completion in zip(prompts, completions, strict=True):
        source = _text(prompt).split("Sentence:")[-1].lower()
        obj = first_object(_text(completion))
        if obj is None:
            out.append(0.0)
            continue
        hits = 0
        for key in KEYS:
            value = obj.get(key)
            if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
                continue
            text = str(value).strip().lower()
            hits += bool(text) and text in source
        out.append(hits / len(KEYS))
    return out

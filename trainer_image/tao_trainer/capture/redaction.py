"""Redaction: the hook a record goes through before it is queued, and the basic one shipped.

``--redact module:function`` names a hook ``fn(record) -> record | None`` (None drops the record). The
proxy fails closed: a hook that raises drops the record too. ``tao_trainer.capture:redact_basic`` masks
e-mail addresses, phone numbers and long digit runs.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from .records import Record

Hook = Callable[[Record], Record | None]


_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A run of digits in groups separated by one space or dash, maybe with "+country" and "(area)" parts.
_DIGITS = re.compile(r"(?<![\w+.,])(?:\+\s?)?(?:\(\d{1,5}\)[ -]?)?\d+(?:[ -]\(?\d+\)?)*(?!\w|[.,]\d)")


def _mask_number(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    if digits >= 13:
        return "[NUMBER]"  # card, account and IBAN-like numbers
    if digits >= 9:
        plain_run = text.isdigit()
        phone_like = text.startswith("+") or "(" in text or ("-" in text and " " not in text)
        if phone_like or (plain_run and digits >= 10):
            return "[PHONE]"
    return text


def _redact_text(text: str) -> str:
    return _DIGITS.sub(_mask_number, _EMAIL.sub("[EMAIL]", text))


def redact_basic(record: Record) -> Record:
    """Mask e-mail addresses, phone numbers and long digit runs in the prompt (and response).

    Basic and English-centric: it errs towards masking (10+ digit runs go), keeps ordinary numbers,
    dates and arithmetic. Write your own hook for names, addresses or a stricter policy.

    >>> redact_basic({"prompt": "Mail jane.doe+x@example.co.uk or call +1 (555) 123-4567."})["prompt"]
    'Mail [EMAIL] or call [PHONE].'
    >>> redact_basic({"prompt": "Card 4111 1111 1111 1111, account 12345678901234, order 12345."})["prompt"]
    'Card [NUMBER], account [NUMBER], order 12345.'
    >>> redact_basic({"prompt": "Ring 555-123-4567 or 0612345678; +33 6 12 34 56 78"})["prompt"]
    'Ring [PHONE] or [PHONE]; [PHONE]'
    >>> redact_basic({"prompt": "What is 1234 * 5678 - 91? Due 2024-01-15, pi is 3.14159265358979."})["prompt"]
    'What is 1234 * 5678 - 91? Due 2024-01-15, pi is 3.14159265358979.'
    >>> redact_basic({"prompt": [{"role": "user", "content": "I am bob@corp.io"}], "response": "Hi bob@corp.io"})
    {'prompt': [{'role': 'user', 'content': 'I am [EMAIL]'}], 'response': 'Hi [EMAIL]'}
    """
    out = dict(record)
    prompt = out.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = _redact_text(prompt)
    elif isinstance(prompt, list):
        out["prompt"] = [
            {**m, "content": _redact_text(m["content"])} if isinstance(m.get("content"), str) else m
            for m in prompt
        ]
    if isinstance(out.get("response"), str):
        out["response"] = _redact_text(out["response"])
    return out


def load_hook(spec: str) -> Hook:
    """``package.module:function`` -> the function.

    >>> load_hook("tao_trainer.capture:redact_basic") is redact_basic
    True
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--redact must look like package.module:function, got {spec!r}")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise ValueError(f"--redact {spec!r} is not callable")
    return fn

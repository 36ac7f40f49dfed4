"""Redaction: the hook a record goes through before it is queued, and the basic one shipped.

``--redact module:function`` names a hook ``fn(record) -> record | None`` (None drops the record). The
proxy fails closed: a hook that raises, or that does not finish within the time budget, drops the record
(see ``pipeline.py``: the hook runs in a worker process, off the proxy's event loop).
``tao_trainer.capture:redact_basic`` masks e-mail addresses (also IDN and "at/dot" spellings), phone, card
and account numbers, IBANs, IPv4 addresses, ``password: ...``-style secrets and well-known cloud and API
keys.

Every pattern runs in linear time: a match can only start where a run of its first characters starts
(a look-behind refuses the middle of a run), repetitions of unbounded groups are never nested, and the
few lazy scans are bounded. ``tests/security/test_capture_hostile.py`` checks the ratio of times for
inputs of n and 4n characters on repeated hostile units.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from .records import Record

Hook = Callable[[Record], Record | None]

_SPELLED_AT = r"(?:\s*[\[({<]\s*(?i:at)\s*[\])}>]\s*|\s+(?i:at)\s+)"
_SPELLED_DOT = r"(?:\s*[\[({<]\s*(?i:dot)\s*[\])}>]\s*|\s+(?i:dot)\s+|\.)"
# Matched by a written-out address whose last label is one of these (or with a bracketed "at" or a spelled
# "dot"); "look at main.py" is left alone.
_COMMON_TLDS = frozenset(
    [
        "com",
        "org",
        "net",
        "edu",
        "gov",
        "mil",
        "int",
        "io",
        "co",
        "uk",
        "de",
        "fr",
        "es",
        "it",
        "nl",
        "be",
        "ch",
        "at",
        "se",
        "no",
        "dk",
        "fi",
        "pl",
        "ru",
        "cn",
        "jp",
        "kr",
        "in",
        "br",
        "au",
        "ca",
        "us",
        "eu",
        "info",
        "biz",
        "me",
        "ai",
        "dev",
        "app",
        "email",
    ]
)
_SECRET_KEYS = (
    r"password|passwd|passphrase|pwd|pass|secret|secret[_-]?key|secret[_-]?access[_-]?key|client[_-]?secret|"
    r"api[_-]?key|apikey|access[_-]?key(?:[_-]?id)?|access[_-]?token|auth[_-]?token|token|private[_-]?key|"
    r"credentials?|pin"
)
# One alternation scanned once; at one position the first branch that matches wins.
_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "private_key",
        r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----[A-Za-z0-9+/=\s]{0,16384}(?:-----END [A-Z ]{0,40}PRIVATE KEY-----)?",
    ),
    ("email", r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])"),
    (
        "spelled_email",
        rf"(?<![\w.%+-])(?<!(?i:dot) )[\w.%+-]+(?: (?i:dot) [\w.%+-]+)*(?P<at>{_SPELLED_AT})[\w-]+(?:{_SPELLED_DOT}[\w-]+)*?"
        rf"(?P<dot>{_SPELLED_DOT})(?P<tld>[^\W\d_]{{2,24}})(?![\w-])",
    ),
    (
        "secret",
        rf"(?<![A-Za-z0-9])(?P<key>(?i:{_SECRET_KEYS}))(?P<sep>\s{{0,8}}[:=]\s{{0,8}}|\s{{1,8}}(?i:is)\s{{1,8}}(?=\S*\d))"
        r"(?:\"[^\"\n]{1,256}\"|'[^'\n]{1,256}'|[^\s\"',;]{1,256})",
    ),
    ("aws_key", r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Za-z0-9])"),
    (
        "api_key",
        r"(?<![\w-])(?:AIza[\w-]{35}|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_\w{22,255}|"
        r"xox[abposr]-[A-Za-z0-9-]{10,255}|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,255}|"
        r"eyJ[\w-]{8,4096}\.eyJ[\w-]{8,4096}\.[\w-]{8,4096})",
    ),
    ("bearer", r"(?<![\w-])(?i:bearer)\s{1,8}[A-Za-z0-9._~+/-]{16,4096}=*"),
    (
        "iban",
        r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])",
    ),
    (
        "ipv4",
        r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)",
    ),
    # A run of digits in groups separated by one space, dash or dot, maybe with "+country" and "(area)".
    ("number", r"(?<![\w+.,])(?:\+\s?)?(?:\(\d{1,5}\)[ .-]?)?\d+(?:[ .-]\(?\d+\)?)*(?!\w|[.,]\d)"),
)
_PII = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _PATTERNS))


def _mask_number(text: str) -> str:
    digits = sum(c.isdigit() for c in text)
    if digits < 9:
        return text
    dots = text.count(".")
    if dots == 1 and " " not in text and "-" not in text and "(" not in text:
        return text  # a decimal: 3.14159265358979
    if digits >= 13:
        return "[NUMBER]"  # card, account and IBAN-like numbers
    plain_run = text.isdigit()
    phone_like = text.startswith("+") or "(" in text or (("-" in text or dots) and " " not in text)
    if phone_like or (plain_run and digits >= 10):
        return "[PHONE]"
    return text


def _mask(match: re.Match[str]) -> str:
    kind = match.lastgroup
    text = match.group(0)
    if kind == "number":
        return _mask_number(text)
    if kind == "spelled_email":
        at, dot, tld = match.group("at"), match.group("dot"), match.group("tld")
        bracketed = "[" in at or "(" in at or "{" in at or "<" in at
        if not (bracketed or dot != "." or "dot" in text.lower() or tld.lower() in _COMMON_TLDS):
            return text
        return "[EMAIL]"
    if kind == "secret":
        return match.group("key") + match.group("sep") + "[SECRET]"
    return {
        "email": "[EMAIL]",
        "private_key": "[SECRET]",
        "aws_key": "[SECRET]",
        "api_key": "[SECRET]",
        "bearer": "[SECRET]",
        "iban": "[IBAN]",
        "ipv4": "[IP]",
    }.get(kind or "", "[REDACTED]")


def redact_text(text: str) -> str:
    """``text`` with every match of the default PII set masked (one linear scan)."""
    return _PII.sub(_mask, text)


def redact_basic(record: Record) -> Record:
    """Mask PII in the prompt (and response): e-mail, phone, card, IBAN, IPv4, secrets, cloud keys.

    Basic and English-centric: it errs towards masking (10+ digit runs go), keeps ordinary numbers,
    dates and arithmetic. Write your own hook for names, postal addresses or a stricter policy
    (docs/security.md lists what it misses).

    >>> redact_basic({"prompt": "Mail jane.doe+x@example.co.uk or call +1 (555) 123-4567."})["prompt"]
    'Mail [EMAIL] or call [PHONE].'
    >>> redact_basic({"prompt": "Card 4111 1111 1111 1111, account 12345678901234, order 12345."})["prompt"]
    'Card [NUMBER], account [NUMBER], order 12345.'
    >>> redact_basic({"prompt": "Ring 555-123-4567 or 0612345678; +33 6 12 34 56 78"})["prompt"]
    'Ring [PHONE] or [PHONE]; [PHONE]'
    >>> redact_basic({"prompt": "What is 1234 * 5678 - 91? Due 2024-01-15, pi is 3.14159265358979."})["prompt"]
    'What is 1234 * 5678 - 91? Due 2024-01-15, pi is 3.14159265358979.'
    >>> redact_basic({"prompt": "password: hunter2, host 10.0.0.12, jane at example dot com"})["prompt"]
    'password: [SECRET], host [IP], [EMAIL]'
    >>> redact_basic({"prompt": [{"role": "user", "content": "I am bob@corp.io"}], "response": "Hi bob@corp.io"})
    {'prompt': [{'role': 'user', 'content': 'I am [EMAIL]'}], 'response': 'Hi [EMAIL]'}
    """
    out = dict(record)
    prompt = out.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = redact_text(prompt)
    elif isinstance(prompt, list):
        out["prompt"] = [
            {**m, "content": redact_text(m["content"])} if isinstance(m.get("content"), str) else m
            for m in prompt
        ]
    if isinstance(out.get("response"), str):
        out["response"] = redact_text(out["response"])
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

"""The exit codes of `tao` (documented in README.md, "Exit codes"): a script can tell a typo from a scorer
without signal from a bucket it cannot reach."""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    RUN_FAILED = 1  # a stage failed (its message says why); completed stages are kept
    USAGE = 2  # bad arguments, a missing or invalid manifest
    NO_SIGNAL = 3  # the scorer preflight found nothing to learn from
    STORAGE = 4  # storage unreachable, missing bucket, missing or refused credentials
    BUDGET = 5  # spec.budget reached before a stage started; raising it lets the same command go on
    INTERRUPTED = 130  # Ctrl-C; the same command continues

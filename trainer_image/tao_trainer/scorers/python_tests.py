"""Executable Python: run each candidate's code against the tests in its prompt record.

The code (the last ```python block, by default) runs first, then the record's tests
(`testsField`), in a sandboxed subprocess (`sandbox.py`: time, memory, file and process limits, no
network). Tests are the top-level `test_*` functions of the tests' code, each one test that passes
when it returns without raising; tests without such functions are one test (plain asserts).

Score: the share of tests passed. A candidate that does not parse, raises before the tests, crashes
or runs out of time gets 0. A record without tests, or with tests that do not parse, gets None (no
judgement: the data is at fault, not the candidate).

Isolation policy (`isolation`): without bubblewrap the sandbox is an in-process audit hook plus
resource limits, which is not a boundary. `auto` (the default) refuses to run in a pod (a
`KUBERNETES_SERVICE_HOST` in the environment) and warns once under `tao run`; `required` refuses
everywhere; `optional` runs anyway. The counters `isolation.<level>` say what each run got.
"""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tao_trainer.safe_regex import RegexTimeout
from tao_trainer.spec import PythonTestsSpec

from .base import Detail, Detailed, Score, Scorer, ScorerError, completion_text
from .code import extract_code
from .sandbox import SandboxLimits, SandboxRun, collect_test_names, isolation_level, run_python_tests
from .sandbox_os import BUBBLEWRAP

__all__ = ["PythonTestsScorer"]

_LOG = logging.getLogger(__name__)
_MAX_FAILURES_SHOWN = 5
_ERROR_CHARS = 200


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _ERROR_CHARS else message[: _ERROR_CHARS - 3] + "..."


def _syntax_error(code: str) -> str | None:
    try:
        compile(code, "<candidate>", "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno else ""
        return _short(f"{type(exc).__name__}: {exc.msg}{where}")
    except (ValueError, RecursionError, MemoryError) as exc:  # NUL bytes, absurd nesting
        return _short(f"{type(exc).__name__}: {exc}")
    return None


class PythonTestsScorer(Scorer[PythonTestsSpec]):
    """Share of the record's tests the candidate's code passes, run in a sandbox.

    Details per completion: `{"passed", "total", "error"}`, plus `failed` (up to 5 "test: error"
    strings) and `blocked` (operations the sandbox refused) when there are any.
    Counters: runs, timeouts, memoryErrors, blocked (runs that tried something refused), crashes,
    syntaxErrors, missingTests, badTests, regexTimeouts (`extract` ran past its budget: None),
    `isolation.<level>` (runs per OS isolation level).

    Example:

    ```python
    >>> scorer = PythonTestsScorer(timeout_seconds=5)
    >>> tests = "def test_small():\\n    assert square(2) == 4\\ndef test_negative():\\n    assert square(-3) == 9"
    >>> completions = ["```python\\ndef square(x):\\n    return x * x\\n```",
    ...                "def square(x):\\n    return abs(x) * 2",
    ...                "def square(x) return x"]
    >>> scorer(["q"] * 3, completions, tests=[tests] * 3)
    [1.0, 0.5, 0.0]
    >>> scorer(["q"], ["x = 1"])  # no tests in the record: no judgement
    [None]

    ```
    """

    spec_model = PythonTestsSpec
    scorer_type = "python_tests"

    def __init__(self, spec: PythonTestsSpec | None = None, /, **fields: Any) -> None:
        super().__init__(spec, **fields)
        self.limits = SandboxLimits(timeout_seconds=self.spec.timeout_seconds, memory_mb=self.spec.memory_mb)
        self._checked = False

    def check_isolation(self) -> str:
        """The OS isolation level runs get; raises ScorerError where the policy requires bubblewrap
        and this machine does not give it (once per scorer; warns once when running without it)."""
        level = isolation_level()
        if self._checked:
            return level
        policy = self.spec.isolation
        in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        if level != BUBBLEWRAP:
            if policy == "required" or (policy == "auto" and in_pod):
                raise ScorerError(
                    f"scorer {self.name!r}: python_tests needs OS isolation (bubblewrap with user, PID and "
                    f"network namespaces) and this machine gives {level!r}: install bubblewrap and allow "
                    "unprivileged user namespaces on the node, or set `isolation: optional` to run "
                    "candidate code behind the in-process audit hook alone (not a security boundary)"
                )
            _LOG.warning(
                "scorer %r: python_tests runs without OS isolation (%s): candidate code is held by an "
                "in-process audit hook and resource limits only; install bubblewrap for a sandbox",
                self.name,
                level,
            )
        self._checked = True
        return level

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        tests_column = kwargs.get(self.spec.tests_field)
        if tests_column is not None and len(tests_column) != len(completions):
            raise ValueError(
                f"scorer {self.name!r}: got {len(tests_column)} values of {self.spec.tests_field!r} "
                f"for {len(completions)} completions"
            )
        values: list[Score] = [None] * len(completions)
        details: list[Detail] = [None] * len(completions)
        # Identical (code, tests) pairs run once: sampled candidates repeat themselves often.
        pending: dict[tuple[str, str], list[int]] = {}
        names_of: dict[str, list[str]] = {}
        for index, completion in enumerate(completions):
            tests = tests_column[index] if tests_column is not None else None
            if not isinstance(tests, str) or not tests.strip():
                self.count("missingTests")
                details[index] = {"passed": 0, "total": 0, "error": f"no tests in {self.spec.tests_field!r}"}
                continue
            if tests not in names_of:
                try:
                    names_of[tests] = collect_test_names(tests)
                except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
                    self.count("badTests")
                    details[index] = {
                        "passed": 0,
                        "total": 0,
                        "error": _short(f"the tests do not parse: {exc}"),
                    }
                    continue
            total = max(1, len(names_of[tests]))
            try:
                code = extract_code(completion_text(completion), self.spec.extract, language="python")
            except RegexTimeout as exc:  # the extract pattern ran out of time: no judgement
                self.count("regexTimeouts")
                details[index] = {"passed": 0, "total": total, "error": _short(str(exc))}
                continue
            syntax_error = _syntax_error(code) if code else "no code found"
            if syntax_error is not None:
                self.count("syntaxErrors")
                values[index] = 0.0
                details[index] = {"passed": 0, "total": total, "error": syntax_error}
                continue
            pending.setdefault((code, tests), []).append(index)
        jobs = list(pending)
        if jobs:
            self.check_isolation()
            with ThreadPoolExecutor(max_workers=min(self.spec.concurrency, len(jobs))) as pool:
                runs = list(
                    pool.map(
                        lambda job: run_python_tests(job[0], job[1], self.limits, names_of[job[1]]), jobs
                    )
                )
            for job, run in zip(jobs, runs, strict=True):
                self._count_run(run)
                detail = self._detail(run)
                for index in pending[job]:
                    values[index] = run.score
                    details[index] = dict(detail)
        return Detailed(values, details)

    def _count_run(self, run: SandboxRun) -> None:
        self.count("runs")
        self.count(f"isolation.{run.isolation}")
        if run.timed_out:
            self.count("timeouts")
        elif run.error is not None and run.error.startswith("crashed"):
            self.count("crashes")
        if run.memory_error:
            self.count("memoryErrors")
        if run.blocked:
            self.count("blocked")

    @staticmethod
    def _detail(run: SandboxRun) -> dict[str, Any]:
        detail: dict[str, Any] = {
            "passed": run.passed,
            "total": run.total,
            "error": run.error and _short(run.error),
        }
        failed = [f"{o.name}: {_short(o.error or 'failed')}" for o in run.outcomes if not o.passed]
        if failed:
            detail["failed"] = failed[:_MAX_FAILURES_SHOWN]
        if run.blocked:
            detail["blocked"] = run.blocked[:_MAX_FAILURES_SHOWN]
        return detail

"""Run untrusted Python (a candidate's code plus its tests) in a limited subprocess.

Layers, strongest first:

- The OS layer (`sandbox_os.py`), the strongest this machine gives: bubblewrap (own user, PID,
  network, IPC and UTS namespaces, uid 65534, a read-only view of the interpreter and system
  libraries only, a size-limited tmpfs as the working directory), else a network namespace of its own,
  else nothing. `SandboxRun.isolation` says which one a run got; the scorer refuses to run without
  bubblewrap where its policy requires it (see `PythonTestsSpec.isolation`).
- Kernel limits on the child: address space (`memoryMb`), CPU seconds, file size, open files, and
  RLIMIT_NPROC = 0 (no new processes or threads; ignored by the kernel for root). A wall-clock
  timeout kills the child's whole process group (it runs in a new session).
- A fresh, empty working directory; an environment with nothing but HOME and TMPDIR (both the
  working directory) and LANG; `python -I -S -B` (isolated mode: no site-packages, no PYTHON*
  variables, no bytecode written). Output beyond the file-size limit is cut off; at most 128 files
  may be opened for writing (or directories made).
- An audit hook (PEP 578) installed before any candidate code runs, whose deny lists live in its
  closure (not in module globals the candidate could rebind): it refuses network calls, process
  creation (subprocess, os.system, exec*, fork, posix_spawn), signals and signal handlers, ctypes and
  other native-code back doors, frame and garbage-collector introspection, hand-made code objects,
  file writes, renames, deletions, links and chmods outside the working directory, reads outside it
  and the standard library, sqlite3 (unless bubblewrap confines its files), and changes of directory,
  uid or resource limits.

The audit hook alone is not a security boundary: an extension module the candidate writes and
loads, or a bug in CPython, get around it; the OS layer then still holds. Without bubblewrap, /proc
and the stage's files are guarded by the hook only (and the stage makes itself non-dumpable, so that
another process of its uid cannot read its /proc/<pid>/environ). Results travel on an inherited file
descriptor (of a file the runner opened outside the working directory), each line carrying a per-run
nonce, so printed or blindly written fake results count for nothing. An object whose `__eq__` always
says True, or a candidate that patches a module the tests import, can still fool a test: an
in-process harness cannot prevent that.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .sandbox_os import BUBBLEWRAP, NONE, Isolation, isolation, isolation_level

__all__ = [
    "SandboxLimits",
    "SandboxRun",
    "TestOutcome",
    "collect_test_names",
    "isolation_level",
    "network_isolation_available",
    "run_python_tests",
]

_LOG = logging.getLogger(__name__)
_PR_SET_DUMPABLE = 4
_OUTPUT_TAIL = 2000
_RESULT_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use. `cpu_seconds` defaults to the wall-clock timeout, rounded up, plus 1."""

    timeout_seconds: float = 10.0
    memory_mb: int = 512
    cpu_seconds: int | None = None
    file_size_mb: int = 2
    open_files: int = 64
    isolate_network: bool = True  # use the OS layer where there is one
    disk_mb: int = 16  # the working directory's size under bubblewrap


@dataclass(frozen=True)
class TestOutcome:
    """One test: passed, or why not (`ExceptionType: message`)."""

    __test__ = False  # not a pytest class

    name: str
    passed: bool
    error: str | None = None


@dataclass
class SandboxRun:
    """What a run gave. `error` is set when the run as a whole failed: "timeout", a crash, or the
    candidate's code failing before the tests (e.g. "SyntaxError: ..." or "NameError: ...")."""

    outcomes: list[TestOutcome]
    total: int
    error: str | None = None
    timed_out: bool = False
    memory_error: bool = False
    blocked: list[str] = field(default_factory=list)
    returncode: int | None = None
    output: str = ""
    network_isolated: bool = False
    isolation: str = NONE
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(outcome.passed for outcome in self.outcomes)

    @property
    def score(self) -> float:
        """Share of tests passed; 0 when the run failed as a whole."""
        if self.error is not None or self.total == 0:
            return 0.0
        return self.passed / self.total


def collect_test_names(tests: str) -> list[str]:
    """Names of the top-level `test_*` functions in `tests`, in order; [] when there are none (then
    the whole block is one test). Raises SyntaxError for tests that do not parse.

    >>> collect_test_names("def helper(): pass\\ndef test_a(): assert 1\\nasync def test_b(): pass")
    ['test_a', 'test_b']
    >>> collect_test_names("assert 1 + 1 == 2")
    []
    """
    tree = ast.parse(tests, "<tests>")
    names: list[str] = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if node.name.startswith("test") and node.name not in names:
            names.append(node.name)
    return names


def network_isolation_available() -> bool:
    """Whether runs get a network namespace of their own (bubblewrap or `unshare --user --net`)."""
    return isolation_level() != NONE


_hardened = [False]


def _make_stage_undumpable() -> None:
    """PR_SET_DUMPABLE 0 on this (the stage's) process: its /proc/<pid>/environ, mem and maps become
    unreadable to other processes of the same uid, such as a sandbox child without a PID namespace."""
    if _hardened[0] or not sys.platform.startswith("linux"):
        return
    _hardened[0] = True
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        _LOG.debug("prctl(PR_SET_DUMPABLE) unavailable")


def _limits(limits: SandboxLimits) -> dict[str, list[int]]:
    cpu = limits.cpu_seconds or math.ceil(limits.timeout_seconds) + 1
    file_size = limits.file_size_mb << 20
    return {
        # Soft then hard: SIGXCPU at the soft limit, SIGKILL a second later.
        "RLIMIT_CPU": [cpu, cpu + 1],
        "RLIMIT_FSIZE": [file_size, file_size],
        "RLIMIT_NOFILE": [limits.open_files, limits.open_files],
        "RLIMIT_NPROC": [0, 0],
        "RLIMIT_CORE": [0, 0],
    }


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _literal(text: str) -> str:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return "?"
    return value if isinstance(value, str) else "?"


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _OUTPUT_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _read_results(path: Path, nonce: str, names: list[str], run: SandboxRun) -> tuple[bool, str | None]:
    """Fill `run` from the result channel; returns (finished, candidate_error)."""
    try:
        with open(path, "rb") as f:
            data = f.read(_RESULT_MAX_BYTES)
    except OSError:
        return False, None
    marker = nonce.encode("ascii") + b" "
    finished = False
    error: str | None = None
    outcomes: dict[int, TestOutcome] = {}
    display = names or ["<tests>"]
    for raw in data.split(b"\n"):
        at = raw.rfind(marker)
        if at < 0:
            continue  # not written by the harness: the candidate wrote on the channel
        fields = raw[at + len(marker) :].decode("utf-8", "replace").split(" ", 3)
        kind = fields[0]
        if kind == "d":
            finished = True
        elif kind in ("c", "s") and len(fields) >= 2:
            message = _literal(" ".join(fields[1:]))
            error = message if kind == "c" else f"tests failed to load: {message}"
        elif kind == "b" and len(fields) >= 2:
            run.blocked.append(_literal(" ".join(fields[1:])))
        elif kind == "t" and len(fields) == 4 and fields[1].isdigit() and fields[2] in ("0", "1"):
            index = int(fields[1])
            if index < len(display) and index not in outcomes:
                passed = fields[2] == "1"
                outcomes[index] = TestOutcome(display[index], passed, None if passed else _literal(fields[3]))
    run.outcomes = [outcomes[index] for index in sorted(outcomes)]
    return finished, error


def run_python_tests(
    code: str,
    tests: str,
    limits: SandboxLimits | None = None,
    names: list[str] | None = None,
    *,
    os_layer: Isolation | None = None,
) -> SandboxRun:
    """Run `code`, then `tests`, in a sandboxed subprocess; see the module docstring.

    `names` are the test functions to call after the tests' code ran (default: `collect_test_names(tests)`,
    which raises SyntaxError for tests that do not parse); with none, the tests' code is one test.
    A test passes when it returns without raising. `os_layer` (default: the strongest available, or
    none when `limits.isolate_network` is off) is the OS isolation to use.

    >>> run = run_python_tests("def add(a, b):\\n    return a + b",
    ...                        "def test_ok():\\n    assert add(1, 2) == 3\\ndef test_bad():\\n    assert add(1, 2) == 4",
    ...                        SandboxLimits(timeout_seconds=5))
    >>> run.passed, run.total, run.score, run.error
    (1, 2, 0.5, None)
    >>> run.outcomes[1]
    TestOutcome(name='test_bad', passed=False, error='AssertionError')
    """
    limits = limits or SandboxLimits()
    if names is None:
        names = collect_test_names(tests)
    run = SandboxRun(outcomes=[], total=max(1, len(names)))
    if os_layer is None:
        os_layer = (
            isolation() if limits.isolate_network else Isolation(NONE, os.path.realpath(sys.executable))
        )
    run.isolation = os_layer.level
    run.network_isolated = os_layer.level != NONE
    if os_layer.level != BUBBLEWRAP:
        _make_stage_undumpable()
    workdir = Path(tempfile.mkdtemp(prefix="tao-sandbox-"))
    try:
        box = workdir / "box"
        box.mkdir(mode=0o700)
        result_path = workdir / "result"
        nonce = secrets.token_hex(16)
        result_fd = os.open(result_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        job = {
            "code": code,
            "tests": tests,
            "names": names,
            "nonce": nonce,
            "fd": result_fd,
            "box": os_layer.box or str(box),
            "limits": _limits(limits),
            "memory_bytes": limits.memory_mb << 20,
            # bubblewrap confines sqlite3's files (ATTACH opens them without an audit event).
            "sqlite": os_layer.level == BUBBLEWRAP,
        }
        command = os_layer.command(limits.disk_mb << 20)
        inner_box = os_layer.box or str(box)
        user: dict[str, object] = {}
        if os_layer.user is not None:
            user = {"user": os_layer.user, "group": os_layer.user, "extra_groups": []}
        started = time.monotonic()
        try:
            with open(workdir / "output", "wb") as output:
                process = subprocess.Popen(  # type: ignore[call-overload]
                    command,
                    stdin=subprocess.PIPE,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd="/" if os_layer.box else box,
                    # Nothing of the runner's environment (credentials live there); temp files go
                    # to the sandbox directory, the only place the candidate may write.
                    env={"HOME": inner_box, "TMPDIR": inner_box, "LANG": "C.UTF-8"},
                    start_new_session=True,
                    pass_fds=(result_fd,),
                    close_fds=True,
                    **user,
                )
        finally:
            os.close(result_fd)
        try:
            process.communicate(json.dumps(job).encode("utf-8"), timeout=limits.timeout_seconds)
        except subprocess.TimeoutExpired:
            run.timed_out = True
            _kill_group(process.pid)
            process.communicate()
        finally:
            # Anything the child left behind in its group goes too (nothing should be there).
            _kill_group(process.pid)
        run.seconds = time.monotonic() - started
        run.returncode = process.returncode
        run.output = _tail(workdir / "output")
        finished, candidate_error = _read_results(result_path, nonce, names, run)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if run.timed_out:
        run.error = f"timeout after {limits.timeout_seconds:g} s"
    elif candidate_error is not None:
        run.error = candidate_error
    elif not finished:
        run.error = _crash_reason(run.returncode, run.output)
        if run.returncode == -signal.SIGXCPU:
            run.timed_out = True
    run.memory_error = any(
        text is not None and text.startswith("MemoryError")
        for text in [run.error, *(outcome.error for outcome in run.outcomes)]
    ) or (not finished and "MemoryError" in run.output)
    return run


def _crash_reason(returncode: int | None, output: str) -> str:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == signal.SIGXCPU:
            return f"timeout: CPU time limit ({name})"
        return f"crashed ({name})"
    lines = [line for line in output.strip().splitlines() if line.strip()]
    last = lines[-1].strip()[:200] if lines else ""
    reason = f"crashed (exit status {returncode})"
    return f"{reason}: {last}" if last else reason

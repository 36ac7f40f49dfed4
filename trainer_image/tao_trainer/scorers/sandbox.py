"""Run untrusted Python (a candidate's code plus its tests) in a limited subprocess.

Layers, strongest first:

- Kernel limits on the child: address space (`memoryMb`), CPU seconds, file size, open files, and
  RLIMIT_NPROC = 0 (no new processes or threads; ignored by the kernel for root). A wall-clock
  timeout kills the child's whole process group (it runs in a new session).
- A network namespace of its own, with nothing but a down loopback, when `unshare --user --net`
  works for this user (`network_isolation_available()`); skipped quietly where it does not.
- A fresh, empty working directory, deleted afterwards; an environment with nothing but HOME and
  TMPDIR (both the working directory) and LANG; `python -I -S -B`
  (isolated mode: no site-packages, no PYTHON* variables, no bytecode written). Output beyond the
  file-size limit is cut off; at most 128 files may be opened for writing (or directories made).
- An audit hook (PEP 578) installed before any candidate code runs, which the candidate cannot
  remove: it refuses network calls (connect, bind, sendto, DNS), process creation (subprocess,
  os.system, exec*, fork, posix_spawn) and signals, ctypes and other native-code back doors, file
  writes, renames, deletions, links and chmods outside the working directory, reads outside it and
  the standard library, and changes of directory or resource limits.

The audit hook is not a security boundary against native code: an extension module the candidate
writes and loads, crafted bytecode (`marshal`), or a bug in CPython get around it. The kernel limits
and the network namespace still hold then; run the score stage in a pod without credentials it
does not need. Results travel on an inherited file descriptor (of a file the runner opened outside
the working directory: unlike a pipe it needs no reader thread, and RLIMIT_FSIZE bounds it), each
line carrying a per-run nonce, so printed or blindly written fake results count for nothing; code
that walks the interpreter's own frames to find the nonce could still forge them, as could an object
whose `__eq__` always says True (an in-process harness cannot prevent either).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
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

__all__ = [
    "SandboxLimits",
    "SandboxRun",
    "TestOutcome",
    "collect_test_names",
    "network_isolation_available",
    "run_python_tests",
]

_CHILD = Path(__file__).with_name("sandbox_child.py")
_PYTHON_FLAGS = ("-I", "-S", "-B", "-X", "utf8")
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
    isolate_network: bool = True


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


@functools.cache
def _unshare_prefix() -> tuple[str, ...]:
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        return ()
    command = [unshare, "--user", "--net", "--", sys.executable, *_PYTHON_FLAGS, "-c", "pass"]
    try:
        probe = subprocess.run(command, env={}, capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    return (unshare, "--user", "--net", "--") if probe.returncode == 0 else ()


def network_isolation_available() -> bool:
    """Whether runs get a network namespace of their own (`unshare --user --net` works here)."""
    return bool(_unshare_prefix())


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
    code: str, tests: str, limits: SandboxLimits | None = None, names: list[str] | None = None
) -> SandboxRun:
    """Run `code`, then `tests`, in a sandboxed subprocess; see the module docstring.

    `names` are the test functions to call after the tests' code ran (default: `collect_test_names(tests)`,
    which raises SyntaxError for tests that do not parse); with none, the tests' code is one test.
    A test passes when it returns without raising.

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
    prefix = _unshare_prefix() if limits.isolate_network else ()
    run.network_isolated = bool(prefix)
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
            "box": str(box),
            "limits": _limits(limits),
            "memory_bytes": limits.memory_mb << 20,
        }
        command = [*prefix, sys.executable, *_PYTHON_FLAGS, str(_CHILD)]
        started = time.monotonic()
        try:
            with open(workdir / "output", "wb") as output:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=box,
                    # Nothing of the runner's environment (credentials live there); temp files go
                    # to the sandbox directory, the only place the candidate may write.
                    env={"HOME": str(box), "TMPDIR": str(box), "LANG": "C.UTF-8"},
                    start_new_session=True,
                    pass_fds=(result_fd,),
                    close_fds=True,
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

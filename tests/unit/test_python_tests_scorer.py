"""The `python_tests` scorer and its sandbox: good, wrong, slow and hostile candidates.

Hostile candidates try what a reward-hacking or simply careless model might: spin forever, eat
memory, start processes, reach the network, write or read outside their directory, forge results.
Each test checks that the attempt failed *and* that its effect is absent (no connection arrived, no
file appeared), not only that an error was reported.
"""

from __future__ import annotations

import os
import pickle
import socket
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tao_trainer.scorers import PythonTestsScorer, build_scorer
from tao_trainer.scorers.sandbox import (
    SandboxLimits,
    SandboxRun,
    network_isolation_available,
    run_python_tests,
)

SQUARE_TESTS = textwrap.dedent(
    """
    def test_small():
        assert square(2) == 4

    def test_negative():
        assert square(-3) == 9
    """
)


def code(text: str) -> str:
    return "```python\n" + textwrap.dedent(text).strip() + "\n```"


def run(candidate: str, tests: str = "assert True", **limits: float | int | bool) -> SandboxRun:
    settings: dict[str, float | int | bool] = {"timeout_seconds": 5, "memory_mb": 256, **limits}
    return run_python_tests(textwrap.dedent(candidate), textwrap.dedent(tests), SandboxLimits(**settings))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- good and wrong


def test_correct_partial_and_syntax_error() -> None:
    scorer = PythonTestsScorer(timeout_seconds=5)
    completions = [
        code("def square(x):\n    return x * x"),
        code("def square(x):\n    return abs(x) * 2"),  # right for 2, wrong for -3
        code("def square(x) return x"),
        "def square(x):\n    return x ** 2",  # no fence: the whole completion
        code("raise RuntimeError('broken at import')"),
    ]
    detailed = scorer.detailed(["q"] * 5, completions, tests=[SQUARE_TESTS] * 5)
    assert detailed.values == [1.0, 0.5, 0.0, 1.0, 0.0]
    assert detailed.details is not None
    assert detailed.details[0] == {"passed": 2, "total": 2, "error": None}
    assert detailed.details[1]["failed"] == ["test_negative: AssertionError"]
    assert detailed.details[2]["error"].startswith("SyntaxError")
    assert detailed.details[4]["error"] == "RuntimeError: broken at import"
    stats = {key: value for key, value in scorer.stats.items() if not key.startswith("isolation.")}
    assert stats == {"syntaxErrors": 1, "runs": 4}
    assert sum(v for k, v in scorer.stats.items() if k.startswith("isolation.")) == 4


def test_plain_assert_block_is_one_test() -> None:
    scorer = PythonTestsScorer(timeout_seconds=5)
    tests = "assert square(3) == 9\nassert square(0) == 0"
    values = scorer(["q", "q"], ["def square(x): return x * x", "def square(x): return 9"], tests=[tests] * 2)
    assert values == [1.0, 0.0]


def test_async_tests_and_helpers_in_tests() -> None:
    tests = textwrap.dedent(
        """
        import asyncio

        def helper():
            return 1

        async def test_async():
            await asyncio.sleep(0)
            assert await double(2) == 4

        def test_sync():
            assert helper() == 1
        """
    )
    result = run("async def double(x):\n    return 2 * x", tests)
    assert (result.passed, result.total, result.error) == (2, 2, None)


def test_candidate_cannot_add_tests() -> None:
    # Only the record's test functions count; a candidate defining passing test_* functions gains nothing.
    candidate = "def square(x): return 0\n" + "\n".join(f"def test_fake{i}(): pass" for i in range(5))
    assert PythonTestsScorer(timeout_seconds=5)(["q"], [candidate], tests=[SQUARE_TESTS]) == [0.0]


def test_missing_and_broken_tests_are_no_judgement() -> None:
    scorer = PythonTestsScorer(timeout_seconds=5, tests_field="unit_tests")
    detailed = scorer.detailed(["q"] * 3, ["x = 1"] * 3, unit_tests=[None, "", "def test_x(:\n    pass"])
    assert detailed.values == [None, None, None]
    assert scorer.stats == {"missingTests": 2, "badTests": 1}
    assert scorer(["q"], ["x = 1"]) == [None]  # no such column at all


def test_identical_candidates_run_once_and_concurrency() -> None:
    scorer = PythonTestsScorer(timeout_seconds=5, concurrency=3)
    good = "def square(x): return x * x"
    completions = [good, good, "def square(x): return 4", good]
    assert scorer(["q"] * 4, completions, tests=[SQUARE_TESTS] * 4) == [1.0, 1.0, 0.5, 1.0]
    assert scorer.stats["runs"] == 2


def test_registry_and_pickle() -> None:
    scorer = build_scorer({"type": "python_tests", "timeoutSeconds": 5, "memoryMb": 256})
    assert isinstance(scorer, PythonTestsScorer)
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone(["q"], ["def square(x): return x * x"], tests=[SQUARE_TESTS]) == [1.0]


# --------------------------------------------------------------------------- slow


def test_infinite_loop_is_killed_within_the_limit() -> None:
    scorer = PythonTestsScorer(timeout_seconds=1)
    start = time.monotonic()
    detailed = scorer.detailed(["q"], ["def square(x):\n    while True:\n        pass"], tests=[SQUARE_TESTS])
    elapsed = time.monotonic() - start
    assert detailed.values == [0.0]
    assert detailed.details[0]["error"] == "timeout after 1 s"
    assert scorer.stats["timeouts"] == 1
    assert elapsed < 2.5


def test_timeout_after_some_tests_passed_is_still_zero() -> None:
    tests = "def test_a():\n    assert True\n\ndef test_b():\n    while True:\n        pass\n"
    result = run("x = 1", tests, timeout_seconds=1)
    assert result.timed_out and result.score == 0.0
    assert result.passed == 1 and result.total == 2  # progress is reported as it happens
    assert result.returncode == -9


def test_cpu_bound_native_work_is_killed() -> None:
    # One long C-level computation: no Python bytecode runs, only the kill can stop it.
    start = time.monotonic()
    result = run("x = 10 ** (10 ** 8)", timeout_seconds=1)
    assert result.timed_out and result.score == 0.0
    assert time.monotonic() - start < 2.5


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize(
    "bomb",
    [
        "block = bytearray(8 * 1024 ** 3)",
        "chunks = []\nwhile True:\n    chunks.append(' ' * 10 ** 7)",
    ],
)
def test_memory_bomb_is_limited(bomb: str) -> None:
    scorer = PythonTestsScorer(timeout_seconds=5, memory_mb=128)
    start = time.monotonic()
    tests = "def test_bomb():\n" + textwrap.indent(bomb, "    ") + "\n"
    detailed = scorer.detailed(["q"], ["x = 1"], tests=[tests])
    assert detailed.values == [0.0]
    assert detailed.details[0]["failed"] == ["test_bomb: MemoryError"]
    assert scorer.stats["memoryErrors"] == 1 and "timeouts" not in scorer.stats
    assert time.monotonic() - start < 4


# --------------------------------------------------------------------------- processes


def test_process_creation_is_blocked(tmp_path: Path) -> None:
    marker = tmp_path / "spawned"
    candidate = f"""
        import os, subprocess
        attempts = {{}}
        for name, attempt in [
            ("fork", lambda: os.fork()),
            ("system", lambda: os.system("touch {marker}")),
            ("popen", lambda: subprocess.Popen(["touch", "{marker}"])),
            ("spawn", lambda: os.posix_spawn("/usr/bin/touch", ["touch", "{marker}"], {{}})),
            ("exec", lambda: os.execv("/usr/bin/touch", ["touch", "{marker}"])),
            ("kill", lambda: os.kill(os.getppid(), 9)),
        ]:
            try:
                attempt()
                attempts[name] = "ran"
            except Exception as exc:
                attempts[name] = type(exc).__name__
    """
    tests = "def test_all_blocked():\n    assert set(attempts.values()) == {'PermissionError'}, attempts\n"
    result = run(candidate, tests)
    assert result.score == 1.0, result
    assert {"os.fork", "os.system", "subprocess.Popen", "os.posix_spawn", "os.exec", "os.kill"} <= set(
        result.blocked
    )
    time.sleep(0.2)
    assert not marker.exists()
    scorer = PythonTestsScorer(timeout_seconds=5)
    detailed = scorer.detailed(["q"], ["import os\nos.system('true')"], tests=["assert True"])
    assert detailed.values == [0.0] and detailed.details[0]["blocked"] == ["os.system"]
    assert scorer.stats["blocked"] == 1


def test_native_back_doors_are_closed() -> None:
    candidate = """
        import sys
        results = {}
        def attempt(name, fn):
            try:
                fn()
                results[name] = "ran"
            except Exception as exc:
                results[name] = type(exc).__name__
        attempt("ctypes", lambda: __import__("ctypes"))
        attempt("fork_exec", lambda: __import__("_posixsubprocess").fork_exec(*[None] * 23))
        def reimport_posix():
            del sys.modules["posix"]
            import posix
        attempt("posix", reimport_posix)
        attempt("mkfifo", lambda: __import__("os").mkfifo("/tmp/tao-fifo"))
        attempt("rlimit", lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_AS, (-1, -1)))
        sys.addaudithook(lambda *a: None)  # refused; CPython then returns quietly without adding it
    """
    tests = "def test_closed():\n    assert 'ran' not in results.values(), results\n"
    result = run(candidate, tests)
    assert result.score == 1.0, result
    expected = {
        "import ctypes",
        "_posixsubprocess.fork_exec",
        "import posix",
        "resource.setrlimit",
        "sys.addaudithook",
    }
    assert expected <= set(result.blocked)


# --------------------------------------------------------------------------- network


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.3)
    yield server
    server.close()


def _assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        conn, _ = server.accept()
        conn.close()


@pytest.mark.parametrize("isolate_network", [True, False], ids=["netns", "hook-only"])
def test_network_is_unreachable(listener: socket.socket, isolate_network: bool) -> None:
    if isolate_network and not network_isolation_available():
        pytest.skip("unshare --user --net does not work here; the hook-only case covers the rest")
    port = listener.getsockname()[1]
    candidate = f"""
        import socket
        outcomes = []
        for attempt in (
            lambda: socket.create_connection(("127.0.0.1", {port}), timeout=1),
            lambda: socket.socket().connect(("127.0.0.1", {port})),
            lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", {port})),
            lambda: socket.socket().bind(("127.0.0.1", 0)),
            lambda: socket.gethostbyname("example.com"),
        ):
            try:
                attempt()
                outcomes.append("connected")
            except OSError as exc:
                outcomes.append(type(exc).__name__)
    """
    tests = "def test_reached():\n    assert 'connected' in outcomes, outcomes\n"
    # A generous limit: on a loaded machine five refused attempts and the interpreter's start can pass 5 s, and a
    # run cut by its time limit would report no outcome to read here.
    result = run(candidate, tests, isolate_network=isolate_network, timeout_seconds=30)
    assert result.score == 0.0 and result.outcomes[0].error and "connected" not in result.outcomes[0].error
    assert {"socket.getaddrinfo", "socket.connect", "socket.sendto", "socket.bind"} <= set(result.blocked)
    assert result.network_isolated is isolate_network
    _assert_no_connection(listener)


# --------------------------------------------------------------------------- files and environment


def test_writes_outside_the_sandbox_are_blocked(tmp_path: Path) -> None:
    outside = tmp_path / "escaped.txt"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    candidate = f"""
        import os, shutil
        outcomes = {{}}
        def attempt(name, fn):
            try:
                fn()
                outcomes[name] = "done"
            except Exception as exc:
                outcomes[name] = type(exc).__name__
        attempt("open", lambda: open("{outside}", "w").write("x"))
        attempt("relative", lambda: open("../../../../../../../..{outside}", "a").write("x"))
        attempt("os.open", lambda: os.open("{outside}", os.O_WRONLY | os.O_CREAT))
        attempt("remove", lambda: os.remove("{victim}"))
        attempt("rename", lambda: os.rename("{victim}", "stolen.txt"))
        attempt("chmod", lambda: os.chmod("{victim}", 0o777))
        attempt("truncate", lambda: os.truncate("{victim}", 0))
        attempt("symlink", lambda: os.symlink("{tmp_path}", "link"))
        attempt("chdir", lambda: os.chdir("{tmp_path}"))
        attempt("dirfd", lambda: os.open("/", os.O_RDONLY))
        attempt("copy", lambda: shutil.copy(__file__ if "__file__" in globals() else "/dev/null", "{outside}"))
        attempt("pathlike", lambda: open(__import__("pathlib").Path("{outside}"), "w"))
        # Inside the sandbox directory, files work as usual.
        with open("scratch.txt", "w") as f:
            f.write("ok")
        os.mkdir("sub")
        os.rename("scratch.txt", "sub/scratch.txt")
        outcomes["inside"] = open("sub/scratch.txt").read()
    """
    tests = textwrap.dedent(
        """
        def test_outside_blocked():
            assert {k: v for k, v in outcomes.items() if k != "inside"} == dict.fromkeys(
                [k for k in outcomes if k != "inside"], "PermissionError"), outcomes

        def test_inside_works():
            assert outcomes["inside"] == "ok"
        """
    )
    result = run(candidate, tests)
    assert (result.passed, result.total) == (2, 2), result
    assert not outside.exists()
    assert victim.read_text() == "keep me" and oct(victim.stat().st_mode & 0o777) != "0o777"
    assert not (tmp_path / "link").exists()


def test_reads_outside_the_sandbox_and_environment_are_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    monkeypatch.setenv("TAO_TEST_SECRET", "hunter2")
    candidate = f"""
        import os
        found = []
        for path in ("{secret}", "/proc/%d/environ" % os.getppid(), "/proc/self/environ", "/etc/passwd"):
            try:
                found.append(open(path, "rb").read()[:100])
            except OSError:
                pass
        env = dict(os.environ)
        import json, collections  # the standard library stays importable
    """
    tests = (
        "def test_nothing_leaked():\n    assert found == [] and 'TAO_TEST_SECRET' not in env, (found, env)\n"
    )
    result = run(candidate, tests)
    assert result.score == 1.0, result


def test_disk_and_output_are_bounded() -> None:
    candidate = """
        import sys, tempfile
        outcomes = {}
        try:
            with open("big.bin", "wb") as f:
                f.write(b"x" * (3 << 20))
        except OSError as exc:
            outcomes["big"] = exc.errno
        try:
            for i in range(10_000):
                with open(f"f{i}.txt", "w") as f:
                    f.write("x")
        except PermissionError:
            outcomes["files"] = i
        try:
            while True:
                print("y" * 10_000)
        except OSError as exc:
            outcomes["stdout"] = exc.errno
    """
    tests = "def test_bounded():\n    assert outcomes == {'big': 27, 'files': 127, 'stdout': 27}, outcomes  # big.bin was the 128th\n"
    result = run(candidate, tests, timeout_seconds=3)
    assert result.score == 1.0, result
    assert len(result.output) <= 2000


def test_temp_files_land_in_the_sandbox() -> None:
    candidate = (
        "import os, tempfile\nwith tempfile.NamedTemporaryFile('w', delete=False) as f:\n    where = f.name\n"
    )
    tests = "import os\nassert os.path.dirname(where) == os.getcwd() == os.environ['TMPDIR']\n"
    assert run(candidate, tests).score == 1.0


def test_sandbox_directory_is_removed() -> None:
    result = run("import os\ncwd = os.getcwd()", "def test_where():\n    raise AssertionError(cwd)\n")
    where = result.outcomes[0].error.removeprefix("AssertionError: ")
    if result.isolation == "bubblewrap":
        assert where == "/box"  # a tmpfs of the sandbox's own, gone with its mount namespace
    else:
        assert "tao-sandbox-" in where
        assert not os.path.exists(where)


# --------------------------------------------------------------------------- forged results


def test_forged_results_do_not_count() -> None:
    candidate = """
        import os, sys
        def square(x):
            return 0
        # Fake lines of every shape the harness uses, on stdout, stderr and every likely descriptor.
        fake = "".join(f"{n} t {i} 1 ''\\n" for n in ("0" * 32, "deadbeef" * 4, "") for i in range(2)) + "d\\n"
        print(fake)
        print(fake, file=sys.stderr)
        for fd in range(3, 64):
            try:
                os.write(fd, fake.encode())
            except OSError:
                pass
    """
    scorer = PythonTestsScorer(timeout_seconds=5)
    assert scorer(["q"], [textwrap.dedent(candidate)], tests=[SQUARE_TESTS]) == [0.0]


def test_early_exit_does_not_pass() -> None:
    scorer = PythonTestsScorer(timeout_seconds=5)
    for candidate in (
        "import os\nos._exit(0)",
        "import sys\nsys.exit(0)",
        "def square(x):\n    import os\n    os._exit(0)",
    ):
        detailed = scorer.detailed(["q"], [candidate], tests=[SQUARE_TESTS])
        assert detailed.values == [0.0], (candidate, detailed.details)

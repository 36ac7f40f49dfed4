"""`tao serve` as a process of its own, started as a user starts it: the one way the tests that drive the CLI
wait for its URL line and stop it."""

from __future__ import annotations

import contextlib
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pytest

URL_LINE = re.compile(r"serving (\S+) at (http://127\.0\.0\.1:\d+/v1)\n")


@dataclass
class Served:
    proc: subprocess.Popen[str]
    name: str  # the served model name the URL line announces
    url: str  # the OpenAI base URL, ending in /v1
    stderr: str = ""  # the process's stderr once it stopped (when piped)


@contextlib.contextmanager
def tao_serve(
    args: list[str], env: dict[str, str], stderr: IO[Any] | int = subprocess.PIPE
) -> Iterator[Served]:
    """`tao serve ARGS` until the block ends (then terminated, its stderr kept on the `Served`)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tao_operator.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    served = Served(proc, "", "")
    try:
        try:
            line = lines.get(timeout=120)
        except queue.Empty:
            proc.kill()
            err = proc.communicate()[1] or "(stderr went to the caller's log)"
            pytest.fail(f"no URL line from tao serve; stderr: {err[-2000:]}")
        match = URL_LINE.fullmatch(line)
        assert match, line
        served.name, served.url = match.groups()
        yield served
    finally:
        if proc.poll() is None:
            proc.terminate()
        served.stderr = proc.communicate(timeout=30)[1] or ""

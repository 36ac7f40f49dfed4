"""Escape attempts against the python_tests sandbox, each as root and as an unprivileged user, each with
the strongest OS layer this machine gives (bubblewrap) and with the in-process layer alone.

An attempt is contained when its test does not pass (see sandbox_attacks.py) and nothing shows outside:
no file in a world-writable directory, no connection to a listener on 127.0.0.1, no planted secret in
any output, and the sandbox's parent (a runner process) alive to the end. A benign control must pass in
every mode, so that "contained" is not the sandbox failing to run at all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
SCORERS = Path(__file__).parents[2] / "trainer_image" / "tao_trainer" / "scorers"
RUNNER = HERE / "sandbox_runner.py"
UNPRIVILEGED = "taosec"

_spec = importlib.util.spec_from_file_location("sandbox_attacks", HERE / "sandbox_attacks.py")
assert _spec is not None and _spec.loader is not None
attacks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(attacks)

USERS = ("root", "unprivileged")
LAYERS = ("strongest", "none")


@dataclass
class Batch:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    done: bool = False
    stdout: str = ""
    stderr: str = ""
    outside: Path = Path()
    connections: int = 0
    secret: str = ""


def _python_for(uid: int | None) -> str | None:
    """An interpreter the user can run (the project's own, else the system's)."""
    for python in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        if not os.path.exists(python):
            continue
        try:
            probe = subprocess.run(
                [python, "-c", "import dataclasses, json"],
                user=uid,
                capture_output=True,
                timeout=30,
                check=False,
                cwd="/",
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return python
    return None


def _unprivileged_uid() -> int:
    if os.geteuid() != 0:
        return os.geteuid()  # already unprivileged
    try:
        return pwd.getpwnam(UNPRIVILEGED).pw_uid
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        pytest.skip("no useradd here to create an unprivileged user")
    made = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", UNPRIVILEGED],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"useradd failed: {made.stderr.decode(errors='replace').strip()}")
    return pwd.getpwnam(UNPRIVILEGED).pw_uid


def _world_dir(mode: int) -> Path:
    path = Path(tempfile.mkdtemp(prefix="tao-sec-", dir="/tmp"))
    path.chmod(mode)
    return path


_BATCHES: dict[tuple[str, str], Batch] = {}


def _run_batch(user: str, layer: str) -> Batch:
    if user == "root" and os.geteuid() != 0:
        pytest.skip("the root case needs root (CI runs as root)")
    uid = None if user == "root" else _unprivileged_uid()
    if uid == os.geteuid():
        uid = None
    python = _python_for(uid)
    if python is None:
        pytest.skip(f"no Python interpreter that user {user} can run")
    if layer == "strongest" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap; .ci/run does)")
    outside = _world_dir(0o777)
    planted_dir = _world_dir(0o755)
    secret = "s3cr3t-" + secrets.token_hex(8)
    planted = planted_dir / "planted.txt"
    planted.write_text(secret)
    planted.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.setblocking(False)
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    with contextlib.suppress(OSError):
        udp.bind(("127.0.0.1", port))
    values = {"outside": str(outside), "planted": str(planted), "port": port}
    job = {
        "scorers_dir": str(SCORERS),
        "layer": layer,
        "attacks": [["control", *attacks.CONTROL]]
        + [[name, code.format(**values), attacks.ESCAPE_TEST] for name, code in attacks.ATTACKS.items()],
    }
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "TAO_PLANTED_SECRET": secret}
    batch = Batch(outside=outside, secret=secret)
    try:
        done = subprocess.run(
            [python, "-I", str(RUNNER)],
            input=json.dumps(job).encode(),
            capture_output=True,
            env=env,
            user=uid,
            cwd="/",
            timeout=300,
            check=False,
        )
        batch.stdout = done.stdout.decode(errors="replace")
        batch.stderr = done.stderr.decode(errors="replace")
        for line in batch.stdout.splitlines():
            row = json.loads(line)
            if row.get("done"):
                batch.done = True
            else:
                batch.rows[row["name"]] = row
        for sock, accept in ((tcp, True), (udp, False)):
            while True:
                try:
                    if accept:
                        sock.accept()[0].close()
                    else:
                        sock.recvfrom(64)
                except OSError:
                    break
                batch.connections += 1
    finally:
        tcp.close()
        udp.close()
        shutil.rmtree(planted_dir, ignore_errors=True)
    return batch


@pytest.fixture(scope="module")
def batches() -> Iterator[dict[tuple[str, str], Batch]]:
    yield _BATCHES
    for batch in _BATCHES.values():
        shutil.rmtree(batch.outside, ignore_errors=True)


def _batch(batches: dict[tuple[str, str], Batch], user: str, layer: str) -> Batch:
    if (user, layer) not in batches:
        batches[(user, layer)] = _run_batch(user, layer)
    return batches[(user, layer)]


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("user", USERS)
def test_control_passes_and_nothing_shows_outside(
    batches: dict[tuple[str, str], Batch], user: str, layer: str
) -> None:
    batch = _batch(batches, user, layer)
    assert batch.done, f"the sandbox's parent did not finish: {batch.stderr[-2000:]}"
    control = batch.rows["control"]
    assert control["passed"] == 1 and control["error"] is None, control
    if layer == "strongest":
        assert control["isolation"] == "bubblewrap", control["isolation"]
    else:
        assert control["isolation"] == "none"
    assert sorted(os.listdir(batch.outside)) == []
    assert batch.connections == 0
    assert batch.secret not in batch.stdout and batch.secret not in batch.stderr


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("attack", sorted(attacks.ATTACKS))
def test_escape_is_contained(
    batches: dict[tuple[str, str], Batch], attack: str, user: str, layer: str
) -> None:
    batch = _batch(batches, user, layer)
    assert attack in batch.rows, f"no result (runner killed?): {batch.stderr[-2000:]}"
    row = batch.rows[attack]
    assert row["passed"] == 0, f"{attack} escaped: {row}"
    assert batch.secret not in json.dumps(row)
    leftovers = [name for name in os.listdir(batch.outside) if attack.split("_")[0] in name]
    assert not leftovers, leftovers


def test_attempt_counts() -> None:
    """docs/security.md quotes these numbers."""
    assert len(attacks.ATTACKS) >= 20

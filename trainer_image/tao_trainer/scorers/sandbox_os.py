"""The OS layer of the python_tests sandbox: which kernel isolation a run gets, and the command prefix for it.

Levels, strongest first (`isolation_level()` says which one this machine gives):

- `bubblewrap`: `bwrap` with new user, PID, network, IPC and UTS namespaces. The child runs as uid 65534
  inside the namespace (and, where the stage runs as root and the interpreter is reachable for it, as uid
  65534 outside too); it sees its own /proc (the stage's processes, and so their environments, do not
  exist there), no network but a down loopback, a read-only view of the interpreter and the system
  libraries only (no /etc, /home, /root, /var, /tmp, no Secrets or service-account mounts), and a
  working directory that is a tmpfs of `SandboxLimits.disk_mb` (a disk fill ends at ENOSPC, in memory
  that vanishes with the run). The root of that view is read-only. `--die-with-parent` ends the
  sandbox when the stage ends.
- `network-namespace`: `unshare --user --net` only: no network, but the same uid, /proc and file system
  as the stage (the in-process audit hook is then what keeps /proc and the disk out of reach).
- `none`: the in-process layer (audit hook, resource limits) alone: not a security boundary.

Unprivileged user namespaces are often blocked in pods (seccomp, AppArmor, or
`kernel.unprivileged_userns_clone=0`); each level is probed once per process with the exact command a
run uses, and the first that works is taken.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BUBBLEWRAP",
    "INNER_BOX",
    "LEVELS",
    "NETWORK",
    "NONE",
    "Isolation",
    "isolation",
    "isolation_level",
]

BUBBLEWRAP = "bubblewrap"
NETWORK = "network-namespace"
NONE = "none"
LEVELS = (BUBBLEWRAP, NETWORK, NONE)
# Paths inside the bubblewrap sandbox.
INNER_BOX = "/box"
INNER_CHILD = "/run/tao-sandbox/sandbox_child.py"
SANDBOX_UID = 65534
_CHILD = Path(__file__).with_name("sandbox_child.py")
_PYTHON_FLAGS = ("-I", "-S", "-B", "-X", "utf8")
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")
_PROBE_BOX_BYTES = 1 << 20


@dataclass(frozen=True)
class Isolation:
    """What a run gets: the level, the interpreter to run, and how to wrap it."""

    level: str
    python: str
    user: int | None = None  # switch to this uid/gid before exec (only when the stage is root)

    def command(self, disk_bytes: int, child: str | None = None) -> list[str]:
        """The command line of one run (the child script's path last, for the job on stdin)."""
        if self.level == BUBBLEWRAP:
            prefix = _bubblewrap_prefix(self.python, disk_bytes)
            return [*prefix, self.python, *_PYTHON_FLAGS, INNER_CHILD]
        script = child or str(_CHILD)
        if self.level == NETWORK:
            return [_unshare(), "--user", "--net", "--", self.python, *_PYTHON_FLAGS, script]
        return [self.python, *_PYTHON_FLAGS, script]

    @property
    def box(self) -> str | None:
        """The working directory's path as the child sees it (None: the host's box directory)."""
        return INNER_BOX if self.level == BUBBLEWRAP else None


def _unshare() -> str:
    return shutil.which("unshare") or "unshare"


def _bubblewrap_prefix(python: str, disk_bytes: int) -> list[str]:
    bwrap = shutil.which("bwrap") or "bwrap"
    args = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_UID),
        "--hostname",
        "sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
    ]
    for directory in _SYSTEM_DIRS:
        if os.path.islink(directory):
            args += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    for path in _SYSTEM_FILES:
        args += ["--ro-bind-try", path, path]
    prefix = os.path.realpath(sys.base_prefix)
    if not any(prefix == d or prefix.startswith(d + "/") for d in _SYSTEM_DIRS):
        args += ["--ro-bind", prefix, prefix]
    python_dir = os.path.dirname(python)
    if not python_dir.startswith(prefix + "/") and not python_dir.startswith("/usr/"):
        args += ["--ro-bind", python_dir, python_dir]
    args += [
        "--ro-bind",
        str(_CHILD),
        INNER_CHILD,
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--size",
        str(disk_bytes),
        "--perms",
        "0700",
        "--tmpfs",
        INNER_BOX,
        "--chdir",
        INNER_BOX,
        "--remount-ro",
        "/",
        "--setenv",
        "HOME",
        INNER_BOX,
        "--setenv",
        "TMPDIR",
        INNER_BOX,
        "--",
    ]
    return args


def _works(candidate: Isolation) -> bool:
    command = candidate.command(_PROBE_BOX_BYTES)
    # The probe runs the real child with an empty job: it must start, read stdin and exit.
    kwargs: dict[str, object] = {}
    if candidate.user is not None:
        kwargs = {"user": candidate.user, "group": candidate.user, "extra_groups": []}
    try:
        probe = subprocess.run(  # type: ignore[call-overload]
            command,
            input=b'{"probe": true}',
            env={"LANG": "C.UTF-8"},
            cwd="/",
            capture_output=True,
            timeout=20,
            check=False,
            **kwargs,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return False
    return bool(probe.returncode == 0 and probe.stdout.strip() == b"probe ok")


@functools.cache
def isolation() -> Isolation:
    """The strongest isolation that works here (probed once per process)."""
    python = os.path.realpath(sys.executable)
    if sys.platform.startswith("linux"):
        if shutil.which("bwrap"):
            tries = [Isolation(BUBBLEWRAP, python, SANDBOX_UID)] if os.geteuid() == 0 else []
            tries.append(Isolation(BUBBLEWRAP, python))
            for candidate in tries:
                if _works(candidate):
                    return candidate
        if shutil.which("unshare") and _works(Isolation(NETWORK, python)):
            return Isolation(NETWORK, python)
    return Isolation(NONE, python)


def isolation_level() -> str:
    """`bubblewrap`, `network-namespace` or `none`: see the module docstring."""
    return isolation().level

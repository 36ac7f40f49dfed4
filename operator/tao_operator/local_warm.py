"""`tao run`'s side of the warm worker (`tao_trainer.warm_worker`): start it at the first stage that loads a
model, send it each such stage, and end it with the run.

Stages that never import torch (prepare, score with rules, watch) stay plain subprocesses: they start in under a
second and the worker's imports would only delay them. If the worker cannot start or dies, the stage runs as a
plain subprocess and so does the rest of the run: the worker only ever saves time. Off with
`tao run --no-warm-worker` or TAO_WARM_WORKER=0, and off by default beside an NVIDIA driver (`warm_enabled`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import IO, Any

# The stages whose process imports torch and transformers (each loads a model or trains one).
WARM_STAGES = frozenset({"preflight", "generate", "train", "evaluate"})
WARM_ENV = "TAO_WARM_WORKER"
"""0: every stage is a plain subprocess (as `tao run --no-warm-worker`); 1: a warm worker even beside a GPU."""
NVIDIA_DEVICE = "/dev/nvidiactl"


class WorkerGone(RuntimeError):
    """The worker exited or never became ready: run the stage as a plain subprocess."""


def warm_enabled(requested: bool = True) -> bool:
    """Whether `tao run` uses a warm worker: asked for, not switched off by TAO_WARM_WORKER=0, on Linux (fork
    with torch imported), and on a machine without an NVIDIA driver unless TAO_WARM_WORKER=1 says otherwise: a
    library that asks CUDA for its devices at import would leave the forked stages unable to use CUDA, and no
    GPU has run the worker."""
    setting = os.environ.get(WARM_ENV)
    if not requested or setting == "0" or not sys.platform.startswith("linux"):
        return False
    return setting == "1" or not os.path.exists(NVIDIA_DEVICE)


class WarmWorker:
    """One `tao_trainer.warm_worker` process for a run: its environment is the stages' (fixed for the run: the
    job's storage settings), its stderr the run's log (or the terminal with --verbose)."""

    def __init__(self, env: dict[str, str], stderr: IO[str] | None, pass_fds: tuple[int, ...] = ()) -> None:
        self.env, self.stderr, self.pass_fds = env, stderr, pass_fds
        self.proc: subprocess.Popen[str] | None = None
        self.gone = False

    def _start(self) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tao_trainer.warm_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=self.env,
            pass_fds=self.pass_fds,
            text=True,
        )
        self.proc = proc
        self._expect(proc, "ready")
        return proc

    def _expect(self, proc: subprocess.Popen[str], key: str) -> Any:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            self.gone = True
            code = proc.wait()
            raise WorkerGone(f"the warm worker exited with status {code}")
        try:
            value = json.loads(line)[key]
        except (ValueError, KeyError, TypeError):
            # Not the protocol: nothing it says can be trusted, the stage it ran included (it dies with it).
            self.gone = True
            proc.kill()
            proc.wait()
            raise WorkerGone(f"the warm worker answered {line.strip()[:200]!r}, expected {key!r}") from None
        return value

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> int:
        """Run `tao-stage ARGV` in a child of the worker with `env` (default: the worker's); its exit status.
        WorkerGone when the worker is not there (then nothing of the stage is running)."""
        if self.gone:
            raise WorkerGone("the warm worker is gone")
        proc = self.proc or self._start()
        assert proc.stdin is not None
        try:
            request = {"argv": argv, "env": self.env if env is None else env, "cwd": os.getcwd()}
            proc.stdin.write(json.dumps(request) + "\n")
            proc.stdin.flush()
        except OSError as e:  # a broken pipe: it died between stages
            self.gone = True
            raise WorkerGone(f"the warm worker is gone: {e}") from e
        self._expect(proc, "started")
        status: int = self._expect(proc, "exit")
        return status

    def close(self) -> None:
        """End the worker: it exits at the end of its input, once no stage runs."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> WarmWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

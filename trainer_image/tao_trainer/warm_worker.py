"""`tao run`'s warm worker: a process that imports torch, transformers, TRL and peft once, then forks a child
per stage, which runs `tao-stage` as a process of its own would (`python -m tao_trainer.warm_worker`).

A cold stage process pays ~4-8 s of imports before it does any work (benchmarks/overhead.py); a forked child
starts with them done. Isolation is what a process gives: each stage is its own process, with its own memory,
environment, working directory and exit status; what it shares with the others is the imported modules as they
were right after import. Nothing runs a model in this process (no torch op, no CUDA, no OpenMP threads), so
forking it is safe; the environment the stages use is this process's from the start, because some libraries
read theirs at import (OpenMP's wait policy, the hub's offline switch).

Protocol, one JSON object per line: requests on stdin `{"argv": [...], "env": {...}, "cwd": "..."}`; replies on
stdout `{"ready": pid}` once the imports are done, then per request `{"started": pid}` and `{"exit": status}`
(a signal's death as 128 + its number, as a shell reports it). End of stdin ends the worker. A child dies with
the worker (PR_SET_PDEATHSIG), so that a runner which finds the worker gone can run the stage again without
two copies of it running.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import sys
import time
import traceback
from typing import IO, Any, NoReturn

# What the stages import that is slow to import: the model, tokenizer and generation code of transformers (the
# masking and loading modules pull in torch's dynamo and distributed tensors), TRL's trainers and peft.
PRELOAD = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.generation.utils",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "trl",
    "trl.trainer.sft_trainer",
    "trl.trainer.dpo_trainer",
    "trl.trainer.grpo_trainer",
    "peft",
)
_PR_SET_PDEATHSIG = 1


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import what is installed of `modules`; the names that could not be imported (a stage imports those
    itself, and reports its own error)."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional library absent or broken: the stage that needs it says so
            missing.append(name)
    return missing


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the worker (its parent) dies; Linux only, else nothing."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the worker died before the request above took effect
        os._exit(137)


def _run_child(request: dict[str, Any], parent: int, private: tuple[int, ...]) -> NoReturn:
    """In the forked child: become the stage process the request describes, run it, exit with its status."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the worker ignores it; a stage does not
        _die_with_parent(parent)
        for fd in private:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.argv = ["tao-stage", *request["argv"]]
        from tao_trainer import cli

        code = cli.main(list(request["argv"]))
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 - what an uncaught exception does to a process: a traceback, status 1
        traceback.print_exc()
        code = 1
    finally:
        # What the interpreter does on exit (logging's flush, a tracker's final upload), without the worker's
        # own state: then leave at once.
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(requests: IO[str], replies: IO[str], private: tuple[int, ...]) -> int:
    """Answer requests until the end of `requests`: one forked stage process at a time."""
    from tao_trainer import cli

    def reply(doc: dict[str, Any]) -> None:
        replies.write(json.dumps(doc) + "\n")
        replies.flush()

    cli.process_defaults()  # before torch loads OpenMP: it reads its settings once
    started = time.monotonic()
    missing = preload()
    absent = (
        f" ({', '.join(missing)} not importable: the stages that need them import them)" if missing else ""
    )
    print(
        f"warm worker {os.getpid()}: imports done in {time.monotonic() - started:.1f} s{absent}; the stages that "
        "load a model are forked from it",
        file=sys.stderr,
        flush=True,
    )
    reply({"ready": os.getpid()})
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request, os.getppid(), private)
        reply({"started": pid})
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        reply({"exit": code if code >= 0 else 128 - code})
    return 0


def main() -> int:
    # Ctrl-C reaches the stage (it shares the terminal's process group) and the runner; the runner ends this
    # worker by closing its stdin once the stage has gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The protocol gets private descriptors; stdin and stdout become /dev/null, so that a library printing at
    # import time, or a stage, cannot write into it (a cold stage's stdout is /dev/null too).
    requests_fd, replies_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    with (
        os.fdopen(requests_fd, "r", encoding="utf-8") as requests,
        os.fdopen(replies_fd, "w", encoding="utf-8") as replies,
    ):
        return serve(requests, replies, (requests_fd, replies_fd))


if __name__ == "__main__":
    sys.exit(main())

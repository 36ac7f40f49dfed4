"""Runs sandbox escape attempts from a separate process (the sandbox's parent), as whichever user runs it.

Loads `sandbox.py` and `sandbox_os.py` by path (standard library only), so that an unprivileged user's
system Python can run it without the project's dependencies. Reads a JSON job on stdin, prints one JSON
line per attempt, then `{"done": true}`: a runner killed by an attempt prints no `done`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import types


def main() -> None:
    job = json.loads(sys.stdin.read())
    package = types.ModuleType("tao_sandbox_under_test")
    package.__path__ = [job["scorers_dir"]]
    sys.modules[package.__name__] = package
    sandbox = importlib.import_module(package.__name__ + ".sandbox")
    sandbox_os = importlib.import_module(package.__name__ + ".sandbox_os")
    if job["layer"] == "none":
        layer = sandbox_os.Isolation(sandbox_os.NONE, os.path.realpath(sys.executable))
    else:
        layer = sandbox_os.isolation()
    limits = sandbox.SandboxLimits(timeout_seconds=job.get("timeout", 5.0), memory_mb=512)
    for name, code, tests in job["attacks"]:
        run = sandbox.run_python_tests(code, tests, limits, os_layer=layer)
        row = dataclasses.asdict(run)
        row["name"] = name
        row["passed"] = run.passed
        print(json.dumps(row), flush=True)
    print(json.dumps({"done": True, "uid": os.getuid()}), flush=True)


if __name__ == "__main__":
    main()

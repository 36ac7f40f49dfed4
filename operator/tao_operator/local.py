"""The embedded executor behind `tao run`: the operator's plan, with stages run as local subprocesses.

Progress lives in storage (each stage's result file), never in this process: interrupting `tao run` and
running it again continues from the last complete stage, and inside a stage from the last complete shard.
A failed stage is not recorded as done, so fixing the cause and re-running retries it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from tao_operator.api import TAOJob
from tao_operator.edits import refused_edits, spec_digest
from tao_operator.plan import Failed, Finished, Results, RunStage, build_report, champion, next_action
from tao_operator.report import summarize
from tao_trainer import storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec

Printer = Callable[[str], None]


class RunError(RuntimeError):
    """A run that cannot go on; the message says what failed and what to do."""


def observe(spec: LoopSpec, layout: RunLayout) -> Results:
    """Every stage result recorded in storage."""
    results: Results = {}
    for uri in storage.list_uris(layout.root):
        if "/results/" not in uri or not uri.endswith(".json"):
            continue
        result = StageResult.model_validate_json(storage.read_text(uri))
        if (last := spec.last_round()) is None or result.round <= last:
            results[(result.round, result.stage)] = result
    return results


def _identity(spec: LoopSpec) -> dict[str, Any]:
    """The spec as recorded when the run started (compared through `edits`, the list the operator uses too)."""
    return spec.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def _digest(snapshot: dict[str, Any]) -> dict[str, str]:
    # Snapshots of older versions hold every default: read them through the model so that they compare alike.
    with contextlib.suppress(ValueError):  # not a loop spec any more: compared as stored
        snapshot = _identity(LoopSpec.model_validate(snapshot))
    return spec_digest(snapshot)


def check_snapshot(spec: LoopSpec, layout: RunLayout, fresh: bool) -> None:
    if fresh:
        for uri in storage.list_uris(layout.root):
            storage.delete(uri)
    elif storage.exists(layout.spec_snapshot):
        before = storage.read_json(layout.spec_snapshot)
        changed = [f.removeprefix("spec.") for f in refused_edits(_digest(before), _digest(_identity(spec)))]
        results = observe(spec, layout) if changed else {}
        if changed and set(results) <= {(1, "preflight")}:
            # Nothing was built on the old spec yet (a preflight that stopped the run, typically, and the user
            # has just fixed the scorers): start over under the new spec, without asking for --fresh.
            for key in results:
                storage.delete(layout.result(*key))
        elif changed:
            raise RunError(
                f"the run at {layout.root} was started with a different spec (changed: "
                f"{', '.join('spec.' + k for k in changed)}). Restore it to continue that run, or pass "
                "--fresh to start over (deletes that run's artifacts), or rename the TAOJob."
            )
    storage.write_json(layout.spec_snapshot, _identity(spec))


def run_stage(action: RunStage, job: TAOJob, layout: RunLayout) -> StageResult:
    """Run one stage as a subprocess (the same CLI a pod runs) and return its result."""
    cfg = StageConfig(
        stage=action.stage, round=action.round, run_uri=layout.root, model_uri=action.model_uri, spec=job.spec
    )
    config_uri = layout.config(action.round, action.stage)
    storage.write_text(config_uri, cfg.model_dump_json(by_alias=True, indent=2))
    with tempfile.TemporaryDirectory(prefix="tao-stage-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable,
            "-m",
            "tao_trainer.cli",
            action.stage,
            "--config",
            config_uri,
            "--result",
            result_path,
        ]
        # stdout carries the result JSON (read from the file instead); logs and progress bars go to stderr.
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
        if not os.path.exists(result_path):
            return StageResult(
                stage=action.stage,
                round=action.round,
                ok=False,
                message=f"stage process exited with code {proc.returncode} and reported nothing",
            )
        with open(result_path, encoding="utf-8") as f:
            return StageResult.model_validate_json(f.read())


def preflight_local(job: TAOJob) -> tuple[StageResult, dict[str, Any] | None]:
    """`tao preflight`: the scorer preflight alone, in a scratch directory (the run's artifacts are untouched,
    so the user can iterate on scorers); returns its result and report (None if the stage crashed)."""
    spec = job.spec
    s = spec.storage
    storage.configure(s)
    with tempfile.TemporaryDirectory(prefix="tao-preflight-") as tmp:
        layout = RunLayout(storage.normalize(tmp))
        result = run_stage(RunStage(1, "preflight", spec.model.uri), job, layout)
        report_uri = layout.preflight_report(1)
        report = storage.read_json(report_uri) if storage.exists(report_uri) else None
    return result, report


def run_local(job: TAOJob, *, fresh: bool = False, echo: Printer = print) -> dict[str, Any]:
    """Run the TAOJob to the end on this machine; return the report (also written to storage)."""
    spec = job.spec
    s = spec.storage
    storage.configure(s)
    layout = job.run_layout()
    check_snapshot(spec, layout, fresh)
    echo(f"run {job.metadata.name}: artifacts in {layout.root}")
    while True:
        results = observe(spec, layout)
        action = next_action(spec, layout, results)
        if isinstance(action, Finished):
            report = build_report(job.metadata.name, spec, layout, results)
            storage.write_json(layout.report, report)
            return report
        if isinstance(action, Failed):  # only an executor that records failures gets here (the operator)
            raise RunError(f"round {action.round} {action.stage} failed: {action.message}")
        if action.stage == spec.stages(action.round)[0]:
            of = f"/{spec.last_round()}" if spec.last_round() is not None else ""
            echo(f"round {action.round}{of}: starting from {action.model_uri}")
        started = time.monotonic()
        result = run_stage(action, job, layout)
        if not result.ok:
            raise RunError(
                f"round {action.round} stage {action.stage} failed: {result.message}\n"
                f"Completed stages and shards are kept: fix the cause and run the same command to continue."
            )
        storage.write_text(layout.result(action.round, action.stage), result.model_dump_json(by_alias=True))
        echo(f"  {action.stage:<9} {time.monotonic() - started:6.1f}s  {summarize(result)}")
        if action.stage == "evaluate":
            results[(action.round, action.stage)] = result
            champ_round, champ_uri = champion(spec, layout, results, action.round + 1)
            storage.write_json(layout.champion, {"round": champ_round, "uri": champ_uri})

"""The embedded executor behind `tao run`: the operator's plan, with stages run as local subprocesses.

Progress lives in storage (each stage's result file), never in this process: interrupting `tao run` and
running it again continues from the last complete stage, and inside a stage from the last complete shard.
A failed stage is not recorded as done, so fixing the cause and re-running retries it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlparse

from tao_operator.api import TAOJob
from tao_operator.edits import WAITING_STAGES, on_snapshot, refused_edits, round_snapshot, spec_digest
from tao_operator.exits import Exit
from tao_operator.local_warm import WARM_STAGES, WarmWorker, WorkerGone, warm_enabled
from tao_operator.plan import Failed, Finished, Results, RunStage, build_report, champion, next_action
from tao_operator.report import summarize
from tao_operator.usage import add, budget_exhausted, stage_usage
from tao_trainer import storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.spec import LoopSpec

Printer = Callable[[str], None]


class RunError(RuntimeError):
    """A run that cannot go on; the message says what failed and what to do, `code` is the exit code."""

    def __init__(self, message: str, code: Exit = Exit.RUN_FAILED) -> None:
        super().__init__(message)
        self.code = code


# How a failed stage's message starts ("Name: detail") when storage or credentials failed it.
STORAGE_ERRORS = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ProxyConnectionError",
    "ClientError",
    "NoSuchBucket",
    "S3UploadFailedError",
)
STORAGE_HINT = (
    "check storage.uri (the bucket must exist), storage.endpointUrl and pathStyle for S3-compatible servers "
    "(MinIO), and the credentials boto3 reads (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
)


def is_storage_error(exc: BaseException) -> bool:
    """An exception from boto3/botocore: the bucket, the endpoint or the credentials, not the job."""
    return type(exc).__module__.split(".")[0] in ("botocore", "boto3", "s3transfer")


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Turn storage exceptions of this process into a RunError with exit code 4 and what to check."""
    try:
        yield
    except Exception as e:
        if not is_storage_error(e):
            raise
        raise RunError(f"storage: {type(e).__name__}: {e}\n{STORAGE_HINT}", Exit.STORAGE) from e


def failure(result: StageResult, log_path: str | None) -> RunError:
    """The RunError for a failed stage: no signal (3), storage (4), or any other failure (1)."""
    details = f"\nThe stage's log: {log_path}" if log_path else ""
    if result.stage == "preflight" and result.metrics.get("signal") == 0.0:
        return RunError(
            f"{result.message}\nRun `tao preflight FILE` to see what each scorer contributes.", Exit.NO_SIGNAL
        )
    if result.message.startswith(tuple(f"{name}:" for name in STORAGE_ERRORS)):
        return RunError(
            f"round {result.round} stage {result.stage}: storage: {result.message}\n{STORAGE_HINT}{details}",
            Exit.STORAGE,
        )
    return RunError(
        f"round {result.round} stage {result.stage} failed: {result.message}\n"
        f"Completed stages and shards are kept: fix the cause and run the same command to continue.{details}"
    )


def log_path(layout: RunLayout, name: str) -> Path:
    """Where stage processes' own output goes: `tao-run.log` in the run directory (file://), or in the
    temporary directory for a run on S3."""
    if layout.root.startswith("file://"):
        return Path(unquote(urlparse(layout.root).path)) / "tao-run.log"
    return Path(tempfile.gettempdir()) / f"tao-run-{name}.log"


def stage_env(spec: LoopSpec, quiet: bool) -> dict[str, str]:
    """A stage process's environment: this one's, the job's storage settings (for anything the stage starts),
    and, when quiet, no third-party progress bars (they would only fill the log)."""
    env = dict(os.environ)
    s = spec.storage
    if s.endpoint_url:
        env["TAO_S3_ENDPOINT_URL"] = s.endpoint_url
    if s.region:
        env["TAO_S3_REGION"] = s.region
    if s.path_style:
        env["TAO_S3_PATH_STYLE"] = "1"
    if quiet:
        env |= {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    return env


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
            storage.delete(round_spec_uri(layout, 1))
        elif changed:
            raise RunError(
                f"the run at {layout.root} was started with a different spec (changed: "
                f"{', '.join('spec.' + k for k in changed)}). Restore it to continue that run, or pass "
                "--fresh to start over (deletes that run's artifacts), or rename the TAOJob."
            )
    storage.write_json(layout.spec_snapshot, _identity(spec))


def round_spec_uri(layout: RunLayout, round_: int) -> str:
    """Where `tao run` records the sections a round runs on (the operator: `status.rounds[].spec`)."""
    return f"{layout.round_dir(round_)}/spec.json"


def round_spec(spec: LoopSpec, layout: RunLayout, round_: int, stage: str) -> LoopSpec:
    """The spec a round's stages run on: `evaluation` and `scoring` as recorded when its first stage started
    (recorded now if not yet), so that an edit between two runs of `tao run` applies from the next round."""
    if stage in WAITING_STAGES:
        return spec
    uri = round_spec_uri(layout, round_)
    if storage.exists(uri):
        return on_snapshot(spec, json.dumps(storage.read_json(uri)["values"]))
    digest, values = round_snapshot(spec)
    storage.write_json(uri, {"digest": digest, "values": json.loads(values)})
    return spec


def run_stage(
    action: RunStage,
    job: TAOJob,
    layout: RunLayout,
    log: IO[str] | None = None,
    spec: LoopSpec | None = None,
    worker: WarmWorker | None = None,
) -> StageResult:
    """Run one stage as a process of its own (the same CLI a pod runs) and return its result; `spec`: the round's
    (`round_spec`), default the TAOJob's. With `worker`, a stage that loads a model is forked from it, with the
    imports done (`local_warm`).

    With `log`, the stage's stderr (its log lines, library warnings and progress bars) goes there, and only
    the stage's own progress bar reaches this terminal (through TAO_PROGRESS_FD); without, stderr is shared.
    """
    cfg = StageConfig(
        stage=action.stage,
        round=action.round,
        run_uri=layout.root,
        model_uri=action.model_uri,
        spec=spec or job.spec,
    )
    text = cfg.model_dump_json(by_alias=True, indent=2)
    storage.write_text(layout.config(action.round, action.stage), text)  # the record of what ran
    with tempfile.TemporaryDirectory(prefix="tao-stage-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        # The stage reads its config from a local file: it cannot reach s3:// before it has read the storage
        # settings (endpoint, path style) that the config holds.
        config_path = os.path.join(tmp, "config.json")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(text)
        argv = [action.stage, "--config", config_path, "--result", result_path]
        if log is not None:
            log.write(f"--- round {action.round} {action.stage} ({time.strftime('%Y-%m-%d %H:%M:%S')})\n")
            log.flush()
        returncode = None
        if worker is not None and not worker.gone and action.stage in WARM_STAGES:
            try:
                returncode = worker.run(argv)
            except WorkerGone as e:
                print(f"{e}: the stages run as plain processes from here", file=log or sys.stderr, flush=True)
        if returncode is None:
            returncode = _run_cold(argv, stage_env(job.spec, quiet=log is not None), log)
        if not os.path.exists(result_path):
            return StageResult(
                stage=action.stage,
                round=action.round,
                ok=False,
                message=f"stage process exited with code {returncode} and reported nothing",
            )
        with open(result_path, encoding="utf-8") as f:
            return StageResult.model_validate_json(f.read())


def _progress_fds(log: IO[str] | None) -> list[int]:
    """The terminal for the stage's own progress bar (a copy of stderr, TAO_PROGRESS_FD) when its log goes to
    a file and stderr is a terminal; the caller closes it."""
    return [os.dup(sys.stderr.fileno())] if log is not None and sys.stderr.isatty() else []


def _run_cold(argv: list[str], env: dict[str, str], log: IO[str] | None) -> int:
    """`tao-stage ARGV` as a new Python process; its exit status."""
    progress_fd = _progress_fds(log)
    if progress_fd:
        env = env | {"TAO_PROGRESS_FD": str(progress_fd[0])}
    # stdout carries the result JSON (read from the file instead); logs and progress bars go to stderr.
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "tao_trainer.cli", *argv],
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            pass_fds=progress_fd,
            check=False,
        )
    finally:
        for fd in progress_fd:
            os.close(fd)
    return proc.returncode


@contextlib.contextmanager
def warm_worker(job: TAOJob, log: IO[str] | None, requested: bool = True) -> Iterator[WarmWorker | None]:
    """The run's warm worker (None when switched off: `warm_enabled`); it starts at the first stage that loads
    a model and ends with the run."""
    if not warm_enabled(requested):
        yield None
        return
    env = stage_env(job.spec, quiet=log is not None)
    progress_fd = _progress_fds(log)
    if progress_fd:
        env["TAO_PROGRESS_FD"] = str(progress_fd[0])
    try:
        with WarmWorker(env, log, tuple(progress_fd)) as worker:
            yield worker
    finally:
        for fd in progress_fd:
            os.close(fd)


def preflight_local(job: TAOJob, *, verbose: bool = False) -> tuple[StageResult, dict[str, Any] | None]:
    """`tao preflight`: the scorer preflight alone, in a scratch directory (the run's artifacts are untouched,
    so the user can iterate on scorers); returns its result and report (None if the stage crashed)."""
    spec = job.spec
    storage.configure(spec.storage)
    with tempfile.TemporaryDirectory(prefix="tao-preflight-") as tmp:
        layout = RunLayout(storage.normalize(tmp))
        with open(os.path.join(tmp, "stage.log"), "w", encoding="utf-8") as log:
            result = run_stage(
                RunStage(1, "preflight", spec.model.uri), job, layout, None if verbose else log
            )
        if not result.ok and not verbose:
            result.message += "\n" + _tail(os.path.join(tmp, "stage.log"))
        report_uri = layout.preflight_report(1)
        report = storage.read_json(report_uri) if storage.exists(report_uri) else None
    return result, report


def _tail(path: str, lines: int = 20) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:]).rstrip()


def run_local(
    job: TAOJob,
    *,
    fresh: bool = False,
    echo: Printer = print,
    verbose: bool = False,
    warm: bool = True,
) -> dict[str, Any]:
    """Run the TAOJob to the end on this machine; return the report (also written to storage).

    Stage processes write their own output (library warnings, third-party progress bars, tracebacks) to
    `log_path` unless `verbose`; `echo` gets one line per stage. `warm`: stages that load a model are forked
    from one warm worker (`local_warm`). Raises RunError with the exit code."""
    spec = job.spec
    storage.configure(spec.storage)
    layout = job.run_layout()
    with storage_errors():
        check_snapshot(spec, layout, fresh)
    path = None if verbose else log_path(layout, job.metadata.name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    echo(f"run {job.metadata.name}: artifacts in {layout.root}")
    with open(path or os.devnull, "a", encoding="utf-8") as log_file, storage_errors():
        log = None if verbose else log_file
        with warm_worker(job, log, warm) as worker:
            return _run_rounds(job, layout, echo, log, str(path) if path else None, worker)


def _run_rounds(
    job: TAOJob,
    layout: RunLayout,
    echo: Printer,
    log: IO[str] | None,
    log_name: str | None,
    worker: WarmWorker | None,
) -> dict[str, Any]:
    spec = job.spec
    while True:
        results = observe(spec, layout)
        action = next_action(spec, layout, results)
        if isinstance(action, Finished):
            report = build_report(job.metadata.name, spec, layout, results)
            storage.write_json(layout.report, report)
            return report
        if isinstance(action, Failed):  # only an executor that records failures gets here (the operator)
            raise RunError(f"round {action.round} {action.stage} failed: {action.message}")
        if reached := budget_exhausted(
            spec.budget, add((stage_usage(r) for r in results.values()), spec.costs)
        ):
            raise RunError(
                f"{reached}. Round {action.round} {action.stage} did not start; what the run did is kept, and the "
                "same command goes on from there.",
                Exit.BUDGET,
            )
        if action.stage == spec.stages(action.round)[0]:
            of = f"/{spec.last_round()}" if spec.last_round() is not None else ""
            echo(f"round {action.round}{of}: starting from {action.model_uri}")
        started = time.monotonic()
        result = run_stage(
            action, job, layout, log, round_spec(spec, layout, action.round, action.stage), worker
        )
        if not result.ok:
            # Running again after a failure is a retry, which may follow a scorer's fix: the rest of the round
            # then runs on evaluation and scoring as they are (the operator does the same on tao.dev/retry).
            storage.delete(round_spec_uri(layout, action.round))
            raise failure(result, log_name)
        storage.write_text(layout.result(action.round, action.stage), result.model_dump_json(by_alias=True))
        echo(f"  {action.stage:<9} {time.monotonic() - started:6.1f}s  {summarize(result)}")
        if action.stage == "evaluate":
            results[(action.round, action.stage)] = result
            champ_round, champ_uri = champion(spec, layout, results, action.round + 1)
            storage.write_json(layout.champion, {"round": champ_round, "uri": champ_uri})

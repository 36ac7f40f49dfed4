"""`tao run`'s warm worker: stages forked from one process that imported torch, transformers and TRL give the
same run as plain processes, a killed worker costs nothing but time, and a forked stage is the process its
request describes (environment, directory, exit status)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tao_operator.local_warm import WarmWorker

pytestmark = pytest.mark.filterwarnings("ignore")

ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WORKER = "tao_trainer.warm_worker"


def write_job(tmp: Path, model: Path, n_prompts: int, **spec_overrides: Any) -> Path:
    with (tmp / "prompts.jsonl").open("w") as f:
        for i in range(n_prompts):
            f.write(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n")
    spec: dict[str, Any] = {
        "model": {"uri": str(model)},
        "prompts": {"uri": "prompts.jsonl", "heldOutFraction": 0.25, "labelFields": ["answer"]},
        "storage": {"uri": "runs"},
        "rounds": 2,
        "generation": {"candidates": 4, "maxNewTokens": 8, "batchSize": 16},
        "scoring": {"scorers": [{"type": "majority", "extract": r"(\d)"}]},
        "training": {"method": "sft", "learningRate": 1e-3, "batchSize": 8, "sft": {"minScore": 0.0}},
        "evaluation": {
            "maxPrompts": 8,
            "minImprovement": -10.0,
            "alarms": False,
            "metrics": [{"name": "accuracy", "field": "answer", "extract": r"(\d+)"}],
        },
    } | spec_overrides
    job = {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "tiny"}, "spec": spec}
    path = tmp / "taojob.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_dir(tmp: Path) -> Path:
    return tmp / "runs" / "default" / "tiny" / "local"


def what_the_run_found(tmp: Path) -> dict[str, Any]:
    """The report's rounds and each held-out answer, without timings and paths."""
    report = json.loads((run_dir(tmp) / "report.json").read_text())
    rounds = [
        {k: v for k, v in row.items() if k not in ("usage", "modelUri", "champion", "challenger")}
        for row in report["rounds"]
    ]
    answers = [
        [(s["id"], s["champion"]["answer"], s["challenger"]["answer"]) for s in map(json.loads, lines)]
        for lines in (
            (run_dir(tmp) / f"round-00{r}" / "eval" / "samples.jsonl").read_text().splitlines()
            for r in (1, 2)
        )
    ]
    return {"base": report["base"], "rounds": rounds, "answers": answers}


def tao_run(job: Path, *flags: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", "run", str(job), *flags],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )


@pytest.mark.slow
def test_warm_and_plain_stage_processes_give_the_same_run(tmp_path: Path, tiny_model: Path) -> None:
    warm_dir, cold_dir = tmp_path / "warm", tmp_path / "cold"
    found = {}
    for where, flags in ((warm_dir, ()), (cold_dir, ("--no-warm-worker",))):
        where.mkdir()
        proc = tao_run(write_job(where, tiny_model, 40), *flags)
        assert proc.returncode == 0, proc.stderr[-3000:]
        found[where] = what_the_run_found(where)
        log = (run_dir(where) / "tao-run.log").read_text()
        # The worker says so in the run's log, once per run; with the flag there is none.
        assert log.count(": imports done") == (0 if flags else 1), log[-3000:]
    assert found[warm_dir] == found[cold_dir]
    assert all(found[warm_dir]["answers"])  # held-out answers of both rounds were compared
    # Each stage's CPU seconds are its own: the worker's imports are not charged to the stages it forked.
    result = json.loads((run_dir(warm_dir) / "round-002" / "results" / "evaluate.json").read_text())
    assert result["counts"]["cpuSeconds"] >= 1


def processes() -> dict[int, tuple[str, int, int, str]]:
    """Every process: pid -> (state, parent pid, session id, command line), from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile
        found[int(entry.name)] = (fields[0], int(fields[1]), int(fields[3]), cmdline)
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a container's init may be slow to reap an orphan)."""
    state = processes().get(pid)
    return state is not None and state[0] != "Z"


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process below `root`."""
    table = processes()
    found: dict[int, tuple[int, str]] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (_, parent, _, cmdline) in table.items():
            if parent == pid and child not in found:
                found[child] = (parent, cmdline)
                frontier.append(child)
    return found


def session_processes(sid: int) -> list[int]:
    """Live processes of session `sid`."""
    return [pid for pid, (state, _, session, _) in processes().items() if session == sid and state != "Z"]


SLOW_ONCE_SCORER = """
import os, time

def slow_once(prompts, completions, **kwargs):
    # The first call (the preflight forked from the worker) sleeps: the test kills the worker meanwhile.
    flag = os.environ["TAO_SLOW_ONCE"]
    if os.path.exists(flag):
        os.remove(flag)
        time.sleep(300)
    return [1.0 if any(ch.isdigit() for ch in c) else 0.0 for c in completions]
"""


def run_until_the_forked_preflight_sleeps(
    tmp_path: Path, tiny_model: Path
) -> tuple[subprocess.Popen[str], Path, dict[str, str]]:
    """`tao run` of a 1-round job (in a session of its own) whose preflight, forked from the warm worker, is
    asleep in its scorer when this returns; (the process, the job, its environment). The scorer sleeps only
    once: a later run of the same job goes through."""
    (tmp_path / "slow.py").write_text(SLOW_ONCE_SCORER)
    flag = tmp_path / "slow-once"
    flag.touch()
    scoring = {"scorers": [{"type": "python", "path": "slow.py", "function": "slow_once"}]}
    job = write_job(tmp_path, tiny_model, 40, rounds=1, scoring=scoring)
    env = ENV | {"TAO_SLOW_ONCE": str(flag)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tao_operator.cli", "run", str(job)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while flag.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise AssertionError("the preflight never scored")
        time.sleep(0.05)
    return proc, job, env


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill what is left of a run started in a session of its own."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_killed_warm_worker_takes_its_stage_along_and_the_run_goes_on_cold(
    tmp_path: Path, tiny_model: Path
) -> None:
    proc, _, _ = run_until_the_forked_preflight_sleeps(tmp_path, tiny_model)
    try:
        # The worker and the preflight it forked, both `-m tao_trainer.warm_worker`.
        forked = {p: ppid for p, (ppid, c) in descendants(proc.pid).items() if WORKER in c}
        (worker,) = (p for p, ppid in forked.items() if ppid == proc.pid)
        (stage,) = (p for p, ppid in forked.items() if ppid == worker)
        os.kill(worker, signal.SIGKILL)  # as the OOM killer would
        # The forked stage dies with it (PR_SET_PDEATHSIG), although it had 300 s of sleep left: never two
        # copies of one stage writing the same round.
        deadline = time.monotonic() + 10
        while alive(stage):
            assert time.monotonic() < deadline, "the forked stage outlived its worker"
            time.sleep(0.05)
        out, err = proc.communicate(timeout=600)
    finally:
        stop(proc)
    assert proc.returncode == 0, err[-3000:]
    log_text = (run_dir(tmp_path) / "tao-run.log").read_text()
    assert "the warm worker exited with status -9: the stages run as plain processes from here" in log_text
    assert log_text.count(": imports done") == 1  # no second worker was started
    # It says so once: the later stages start as plain processes without trying the worker again.
    assert log_text.count("plain processes from here") == 1
    # The preflight ran again, as a plain process, and the round completed.
    assert json.loads((run_dir(tmp_path) / "round-001" / "results" / "preflight.json").read_text())["ok"]
    row = json.loads((run_dir(tmp_path) / "report.json").read_text())["rounds"][0]
    assert row["candidates"] == 4 * row["prompts"] > 0


def test_a_forked_stage_gets_the_environment_directory_and_status_of_its_request(tmp_path: Path) -> None:
    (tmp_path / "cwd").mkdir()
    with (tmp_path / "worker.log").open("w") as log, WarmWorker(dict(ENV), log) as worker:
        assert worker.run(["--help"]) == 0
        # No config at that path: the stage fails, and still writes its result where TAO_RESULT_PATH says,
        # relative to the directory of the request.
        env = worker.env | {"TAO_RESULT_PATH": "result.json"}
        cwd = os.getcwd()
        os.chdir(tmp_path / "cwd")
        try:
            status = worker.run(["evaluate", "--config", str(tmp_path / "none.json")], env)
        finally:
            os.chdir(cwd)
        assert status == 1
        result = json.loads((tmp_path / "cwd" / "result.json").read_text())
        assert result["ok"] is False and "none.json" in result["message"]
        # An unknown stage is argparse's usage error, status 2, as from a plain process.
        assert worker.run(["no-such-stage"]) == 2
        process = worker.proc
        assert process is not None
    # Closing the run ends the worker, cleanly.
    assert process.returncode == 0
    text = (tmp_path / "worker.log").read_text()
    assert f"warm worker {process.pid}: imports done" in text and "usage: tao-stage" in text


@pytest.mark.slow
def test_ctrl_c_during_a_forked_stage_stops_the_run_and_the_same_command_continues(
    tmp_path: Path, tiny_model: Path
) -> None:
    proc, job, env = run_until_the_forked_preflight_sleeps(tmp_path, tiny_model)
    try:
        assert len(session_processes(proc.pid)) == 3  # tao run, the worker, the forked stage
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        interrupted = time.monotonic()
        _, err = proc.communicate(timeout=60)
        # The stage itself stops at once (the worker ignores SIGINT, the stages it forks do not): the run does
        # not wait out the 30 s it gives a worker to end, nor the scorer's sleep.
        assert time.monotonic() - interrupted < 20
    finally:
        stop(proc)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: run the same command to continue" in err
    # Nothing is left behind: not the worker, not the stage it forked.
    deadline = time.monotonic() + 10
    while session_processes(proc.pid):
        assert time.monotonic() < deadline, f"left running: {session_processes(proc.pid)}"
        time.sleep(0.05)
    again = tao_run(job, env=env)  # the flag is gone: the scorer no longer sleeps
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir(tmp_path) / "report.json").read_text())["rounds"][0]["prompts"] > 0

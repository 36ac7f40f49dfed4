"""The `tao` CLI as a script sees it: exit codes, `error:` lines, `-o json`, stdin manifests, `--version`; and
one tiny `tao run` on the S3 server with the endpoint only in the manifest, reporting to a real MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.filterwarnings("ignore")

OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

CONSTANT = "def same(prompts, completions, **kwargs):\n    return [1.0 for _ in completions]\n"


def manifest(tmp: Path, model: Path, **spec: Any) -> dict[str, Any]:
    with (tmp / "prompts.jsonl").open("w") as f:
        for i in range(16):
            f.write(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n")
    body: dict[str, Any] = {
        "model": {"uri": str(model)},
        "prompts": {"uri": str(tmp / "prompts.jsonl"), "heldOutFraction": 0.25},
        "storage": {"uri": str(tmp / "runs")},
        "rounds": 1,
        "generation": {"candidates": 2, "maxNewTokens": 4, "batchSize": 16},
        "scoring": {"scorers": [{"type": "majority", "extract": r"(\d)"}]},
        "training": {"method": "sft", "learningRate": 1e-3, "batchSize": 8, "sft": {"minScore": 0.0}},
        "evaluation": {"maxPrompts": 4, "minImprovement": -10.0, "alarms": False},
    } | spec
    return {"apiVersion": "tao.dev/v1alpha1", "kind": "TAOJob", "metadata": {"name": "cli"}, "spec": body}


def tao(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tao_operator.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env or os.environ | OFFLINE,  # read now: the S3 fixture sets credentials for the session
        check=False,
        timeout=600,
    )


def test_version_and_usage_errors(tmp_path: Path, tiny_model: Path) -> None:
    version = tao("--version")
    assert version.returncode == 0 and version.stdout.startswith("tao ")
    assert tao("run").returncode == 2  # argparse: a missing argument
    assert tao("run", "--no-such-flag", "x.yaml").returncode == 2

    missing = tao("validate", str(tmp_path / "absent.yaml"), "-o", "json")
    assert missing.returncode == 2 and "error: " in missing.stderr and "no such file" in missing.stderr
    assert json.loads(missing.stdout)["exitCode"] == 2

    good = yaml.safe_dump(manifest(tmp_path, tiny_model))
    valid = tao("validate", "-", "-o", "json", stdin=good)
    assert valid.returncode == 0, valid.stderr
    assert json.loads(valid.stdout) | {"warnings": []} == {
        "ok": True,
        "exitCode": 0,
        "name": "cli",
        "namespace": "default",
        "warnings": [],
    }
    assert "valid TAOJob default/cli" in tao("validate", "-", stdin=good).stdout

    bad = yaml.safe_dump(manifest(tmp_path, tiny_model, generation={"candidates": -3}))
    invalid = tao("run", "-", "-o", "json", stdin=bad)
    assert invalid.returncode == 2 and invalid.stderr.startswith("error: <stdin> is invalid")
    doc = json.loads(invalid.stdout)
    assert doc["ok"] is False and any("spec.generation.candidates" in p for p in doc["problems"])


def test_storage_failure_exits_4_with_what_to_check(tmp_path: Path, tiny_model: Path, s3_server: str) -> None:
    job = manifest(tmp_path, tiny_model, storage={"uri": "s3://no-such-bucket-here/runs"})
    proc = tao("run", "-", "-o", "json", stdin=yaml.safe_dump(job))
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: storage: NoSuchBucket")
    assert "endpointUrl" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["exitCode"] == 4


def test_preflight_without_signal_exits_3(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "same.py").write_text(CONSTANT)
    job = manifest(
        tmp_path,
        tiny_model,
        scoring={"scorers": [{"type": "python", "path": str(tmp_path / "same.py"), "function": "same"}]},
        preflight={"prompts": 4},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = tao("preflight", str(path), "-o", "json")
    assert proc.returncode == 3, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert (
        doc["signal"] is False and doc["exitCode"] == 3 and doc["report"]["verdict"].startswith("no signal")
    )
    # The stage's own output (library warnings, loading bars) stays out of the terminal.
    assert "Loading" not in proc.stderr and "warn" not in proc.stderr.lower()


def test_run_on_s3_endpoint_from_the_manifest_reports_to_mlflow(
    tmp_path: Path, tiny_model: Path, s3_server: str, s3_bucket: str
) -> None:
    mlflow = pytest.importorskip("mlflow")
    # The endpoint only in the manifest: no TAO_S3_* variable reaches `tao run` or its stages.
    env = {k: v for k, v in (os.environ | OFFLINE).items() if not k.startswith(("TAO_S3_", "MLFLOW_"))}
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env |= {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_NAME": "cli-test"}
    job = manifest(
        tmp_path,
        tiny_model,
        storage={"uri": f"s3://{s3_bucket}/runs", "endpointUrl": s3_server, "pathStyle": True},
        preflight={"enabled": False},
    )
    job["spec"]["training"]["reportTo"] = ["mlflow", "tensorboard"]
    proc = tao("run", "-", "-o", "json", stdin=yaml.safe_dump(job), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True and doc["reportUri"].startswith(f"s3://{s3_bucket}/")
    assert [r["round"] for r in doc["report"]["rounds"]] == [1]
    assert "Traceback" not in proc.stderr and "  evaluate" in proc.stderr  # stage lines go to stderr

    # TensorBoard event files kept in the run's storage.
    from tao_trainer import storage

    storage.configure(None)
    root = doc["report"]["runUri"]
    assert any("/round-001/train/tensorboard/" in u for u in storage.list_uris(root))

    # MLflow: the round's run holds TRL's training metrics and the gate's figures and verdict.
    client = mlflow.tracking.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("cli-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    metrics, tags = runs[0].data.metrics, runs[0].data.tags
    assert "train_loss" in metrics or "loss" in metrics, sorted(metrics)
    assert "gate/promoted" in metrics and "gate/heldOut" in metrics, sorted(metrics)
    assert tags["tao.round"] == "1" and tags["tao.verdict"]

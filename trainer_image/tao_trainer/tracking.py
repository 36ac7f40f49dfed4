"""Experiment tracking: `training.reportTo` for TRL, the round's TensorBoard files kept in the run's storage,
and each round's gate figures and verdict logged to the round's MLflow run.

TRL (transformers' callbacks) does the training metrics; this module only chooses the trackers, names the
run, and adds what TRL does not know: the evaluate stage's gate. mlflow is imported only when configured.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from tao_trainer import storage
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.spec import TrainingSpec

EXPERIMENT_DEFAULT = "tao"


def trackers(t: TrainingSpec) -> list[str]:
    """What TRL reports to: the spec's list, or TensorBoard when it is installed (None)."""
    if t.report_to is not None:
        return list(t.report_to)
    installed = any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))
    return ["tensorboard"] if installed else []


def run_name(cfg: StageConfig) -> str:
    """`<namespace>/<name>/<uid or local>` of the run, then the round: one tracker run per round."""
    parts = cfg.run_uri.rstrip("/").split("/")[-3:]
    return f"{'/'.join(parts)}/round-{cfg.round:03d}"


def trainer_args(cfg: StageConfig, tmp: Path) -> dict[str, Any]:
    """The TrainingArguments that tracking sets (report_to, run_name), and the environment TRL's callbacks
    read: TensorBoard writes under `tmp` (uploaded by `keep_tensorboard`), MLflow into MLFLOW_EXPERIMENT_NAME."""
    chosen = trackers(cfg.spec.training)
    if "tensorboard" in chosen:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(tmp / "tensorboard")
    if "mlflow" in chosen:
        os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_DEFAULT)
    return {"report_to": chosen, "run_name": run_name(cfg)}


def tensorboard_uri(cfg: StageConfig) -> str:
    return f"{RunLayout(cfg.run_uri).train_dir(cfg.round)}/tensorboard"


def keep_tensorboard(cfg: StageConfig, tmp: Path) -> str | None:
    """Upload the round's TensorBoard event files to the run's storage; returns where, if any were written."""
    local = tmp / "tensorboard"
    if not local.is_dir() or not any(p.is_file() for p in local.rglob("*")):
        return None
    uri = tensorboard_uri(cfg)
    storage.upload_dir(local, uri)
    return uri


def mlflow_run_id(t: TrainingSpec) -> str | None:
    """The MLflow run the training just reported to (ended by the callback), or None."""
    if "mlflow" not in trackers(t):
        return None
    import mlflow

    run = mlflow.active_run() or mlflow.last_active_run()
    return run.info.run_id if run is not None else None


def log_gate(cfg: StageConfig, result: StageResult) -> None:
    """After an evaluate stage: its figures (scores, bound, wins and losses), duration and verdict, into the
    MLflow run of the round's training (a new run when training reported elsewhere)."""
    if "mlflow" not in trackers(cfg.spec.training) or result.stage != "evaluate" or not result.ok:
        return
    import mlflow

    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_DEFAULT)
    mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    train_uri = RunLayout(cfg.run_uri).result(cfg.round, "train")
    run_id = None
    if storage.exists(train_uri):
        run_id = StageResult.model_validate_json(storage.read_text(train_uri)).outputs.get("mlflowRunId")
    figures: dict[str, float] = {
        f"gate/{k}": float(v) for k, v in result.metrics.items() if isinstance(v, int | float)
    }
    figures |= {f"gate/{k}": float(v) for k, v in result.counts.items()}
    figures["gate/promoted"] = 1.0 if result.promoted else 0.0
    figures["gate/durationSeconds"] = float(result.duration_seconds)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name(cfg)):
        mlflow.log_metrics({_key(k): v for k, v in figures.items()}, step=cfg.round)
        mlflow.set_tags(
            {
                "tao.round": str(cfg.round),
                "tao.promoted": str(bool(result.promoted)).lower(),
                "tao.verdict": result.message[:5000],
            }
        )


def _key(name: str) -> str:
    """MLflow keys allow letters, digits and `_-./ `; scorer names may hold other characters."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)

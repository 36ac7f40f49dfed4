"""`tao-stage preflight|watch|prepare|generate|score|train|evaluate --config URI`: one stage, one process.

The StageResult is written as JSON to `--result` (or $TAO_RESULT_PATH; in a pod, /dev/termination-log) and
to stdout. A failing stage still writes a result (ok=false, with the error) and exits 1, so that the
executor can say which stage failed and why.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from tao_trainer import gguf_models, hub, storage
from tao_trainer.answer_cache import ANSWER_CACHE_ENV
from tao_trainer.contract import StageConfig, StageResult
from tao_trainer.layout import RunLayout
from tao_trainer.spec import ALL_STAGES
from tao_trainer.stages import RUNNERS
from tao_trainer.storage import transfers

# Pod termination messages are capped at 4096 bytes by Kubernetes (bytes, not characters).
RESULT_LIMIT = 4000
# What compaction gives up first, in this order; `stage`, `round`, `ok`, `promoted` and `outputs` are never
# dropped (the operator's plan and the serving decision rest on them). The whole result stays in storage.
DROP_ORDER = ("message", "metrics", "counts", "durationSeconds")


def _runner(stage: str) -> Callable[[StageConfig], StageResult]:
    """The stage's entry point from the table in `tao_trainer.stages` (imported only now: torch stays unloaded
    for stages that do not need it)."""
    module, _, function = RUNNERS[stage].partition(":")
    runner: Callable[[StageConfig], StageResult] = getattr(importlib.import_module(module), function)
    return runner


def _size(doc: dict[str, object]) -> int:
    return len(json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def compact(result: StageResult, limit: int = RESULT_LIMIT) -> str:
    """The result's JSON in at most `limit` UTF-8 bytes: the message is cut first, then metrics and counts are
    dropped key by key (longest name first), in the fixed order of DROP_ORDER.

    >>> r = StageResult(stage="evaluate", round=2, promoted=True, outputs={"model": "s3://m"},
    ...                 message="很" * 3000, metrics={f"judge-{i}.score": 0.5 for i in range(40)})
    >>> text = compact(r, 600)
    >>> back = StageResult.model_validate_json(text)
    >>> len(text.encode()) <= 600, back.promoted, back.outputs, back.round, back.stage
    (True, True, {'model': 's3://m'}, 2, 'evaluate')
    """
    doc: dict[str, object] = result.model_dump(mode="json", by_alias=True)
    if _size(doc) <= limit:
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    message = str(doc["message"])
    doc["message"] = ""
    room = limit - _size(doc) - len(b" [truncated]")
    if message and room > 0:
        cut = message.encode("utf-8")[:room].decode("utf-8", errors="ignore")
        doc["message"] = cut + " [truncated]"
    for key in DROP_ORDER[1:]:
        value = doc.get(key)
        if isinstance(value, dict):
            for name in sorted(value, key=lambda k: (-len(k), k)):
                if _size(doc) <= limit:
                    break
                del value[name]
        elif _size(doc) > limit:
            doc.pop(key, None)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def stored_result_uri(cfg: StageConfig) -> str:
    """Where the stage keeps its whole result: `results/<stage>.json`, one file per shard on Indexed Jobs."""
    uri = RunLayout(cfg.run_uri).result(cfg.round, cfg.stage)
    index = os.environ.get("JOB_COMPLETION_INDEX")
    return uri if index is None else uri.removesuffix(".json") + f".shard-{int(index):05d}.json"


def stored_result(cfg: StageConfig) -> StageResult | None:
    """A successful result this stage already stored (its pods' reports were lost): re-reported as is."""
    uri = stored_result_uri(cfg)
    if not storage.exists(uri):
        return None
    result = StageResult.model_validate_json(storage.read_text(uri))
    return result if result.ok and (result.stage, result.round) == (cfg.stage, cfg.round) else None


def track(cfg: StageConfig, result: StageResult) -> None:
    """The round's gate figures and verdict to the experiment tracker; a tracker that fails costs a warning,
    never the stage (the result is stored already)."""
    if result.stage != "evaluate" or "mlflow" not in (cfg.spec.training.report_to or []):
        return
    from tao_trainer import tracking

    try:
        tracking.log_gate(cfg, result)
    except Exception as e:  # noqa: BLE001 - tracking is a side channel
        print(f"warning: logging the gate to MLflow failed: {type(e).__name__}: {e}", file=sys.stderr)


def download(argv: list[str]) -> int:
    """`tao-stage download --uri URI --to DIR`: fetch a model for serving (the init container's job)."""
    parser = argparse.ArgumentParser(
        prog="tao-stage download", description="copy a model directory from storage"
    )
    parser.add_argument("--uri", required=True, help="file:// or s3:// model directory, or hf://org/name")
    parser.add_argument("--to", required=True, help="local directory")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) of an hf:// model")
    parser.add_argument(
        "--gguf-store",
        help="for a .gguf --uri: the run's converted models (<run>/models), where the folder converted from it is "
        "read, or stored after converting it here when no stage has yet",
    )
    parser.add_argument("--gguf-dtype", choices=gguf_models.DTYPES, help="for a .gguf --uri: model.ggufDtype")
    args = parser.parse_args(argv)
    if gguf_models.is_gguf(args.uri):
        if not args.gguf_store:
            parser.error(
                f"--uri {args.uri} is a .gguf file: --gguf-store must say where its conversion is kept"
            )
        folder = gguf_models.resolve_in_store(
            args.uri, gguf_models.resolve_dtype(args.uri, args.gguf_dtype), args.gguf_store
        )
        shutil.copytree(folder, args.to, dirs_exist_ok=True)
    elif args.uri.startswith("hf://"):
        # Clusters with hub access: the same snapshot `from_pretrained` would fetch, at the pinned revision.
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id=args.uri.removeprefix("hf://"), revision=args.revision, local_dir=args.to)
    else:
        storage.download_dir(args.uri, Path(args.to))
    print(f"downloaded {args.uri} to {args.to}", file=sys.stderr)
    return 0


def gguf_env(cfg: StageConfig) -> None:
    """Where a .gguf model (`model.uri`, a teacher's) is converted, and to which dtype: once per run, into the
    run's storage (`<run>/models/`), where every other stage and the serving init container find it."""
    os.environ.setdefault("TAO_GGUF_DTYPE", cfg.spec.model.gguf_dtype)
    teacher = cfg.spec.generation.teacher
    if teacher is not None and teacher.uri is not None:  # the teacher's own dtype, by its URI
        os.environ.setdefault("TAO_GGUF_DTYPES", json.dumps({teacher.uri: teacher.gguf_dtype}))
    os.environ.setdefault("TAO_GGUF_STORE", RunLayout(cfg.run_uri).converted_models)


def process_defaults() -> None:
    """Environment defaults of a stage process, set before torch is imported: the OpenMP runtime reads its
    settings once, when torch loads it (`tao run`'s warm worker imports torch before it forks a stage)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Idle OpenMP threads sleep instead of spinning: on shared or over-committed cores spinning threads made
    # the same greedy evaluation 25x slower (benchmarks/tao_vs_labels.py); set it in the pod to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def compute_used(seconds: float) -> dict[str, int]:
    """What this stage process used, for cost accounting (summed over a stage's pods): `cpuSeconds`, the CPU
    time of this process and its children (rounded up), and `gpuSeconds`, its duration times the GPUs it could
    use (only when torch was imported: a stage that never loads a model uses no GPU)."""
    import math
    import resource

    used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    counts = {"cpuSeconds": math.ceil(sum(u.ru_utime + u.ru_stime for u in used))}
    torch = sys.modules.get("torch")
    gpus = torch.cuda.device_count() if torch is not None and torch.cuda.is_available() else 0
    if gpus:
        counts["gpuSeconds"] = math.ceil(seconds * gpus)
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["download"]:
        return download(argv[1:])
    if argv[:1] == ["capture"]:
        # The serving Deployment's prompt-capture sidecar (tao_trainer.capture); aiohttp is imported there.
        from tao_trainer.capture import main as capture_main

        return capture_main(argv[1:])
    parser = argparse.ArgumentParser(prog="tao-stage", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=ALL_STAGES)
    parser.add_argument(
        "--config",
        required=True,
        help="StageConfig JSON: a local path (what pods and `tao run` pass), file:// or s3:// URI (an s3:// "
        "config on an S3-compatible server needs TAO_S3_ENDPOINT_URL: its own endpoint is inside it)",
    )
    parser.add_argument(
        "--result", default=os.environ.get("TAO_RESULT_PATH"), help="where to write the StageResult"
    )
    args = parser.parse_args(argv)

    process_defaults()
    started = time.monotonic()
    cfg: StageConfig | None = None
    stored: StageResult | None = None
    try:
        cfg = StageConfig.model_validate_json(storage.read_text(args.config))
        # The job's storage settings (endpoint, region, path style) before any other storage call.
        storage.configure(cfg.spec.storage)
        # Every hub download of the model or the teacher, wherever a stage resolves it, at its revision.
        hub.pin_revisions(cfg.spec)
        gguf_env(cfg)
        os.environ.setdefault(ANSWER_CACHE_ENV, RunLayout(cfg.run_uri).answer_cache_root)
        if cfg.stage != args.stage:
            raise ValueError(f"--config is for stage {cfg.stage!r}, not {args.stage!r}")
        # A new attempt of a stage whose result was lost (its pods collected before the operator read them)
        # re-reports the stored result at once instead of recomputing it.
        stored = stored_result(cfg)
        if stored is not None:
            result = stored
        else:
            result = _runner(args.stage)(cfg)
            result.duration_seconds = round(time.monotonic() - started, 2)
            result.counts |= compute_used(result.duration_seconds) | transfers.counts()
            if result.ok and int(os.environ.get("RANK", "0")) == 0:
                storage.write_text(stored_result_uri(cfg), result.model_dump_json(by_alias=True))
                track(cfg, result)
        code = 0 if result.ok else 1
    except Exception as e:  # noqa: BLE001 - every failure must become a reported result
        traceback.print_exc(file=sys.stderr)
        result = StageResult(
            stage=args.stage,
            round=cfg.round if cfg else 1,
            ok=False,
            message=f"{type(e).__name__}: {e}",
            duration_seconds=round(time.monotonic() - started, 2),
        )
        code = 1
    if int(os.environ.get("RANK", "0")) != 0:
        return code  # torchrun ranks share the container's termination log: rank 0 alone reports
    text = compact(result)
    if args.result:
        if args.result.startswith(("file://", "s3://")):
            storage.write_text(args.result, text)
        else:
            with open(args.result, "w", encoding="utf-8") as f:
                f.write(text)
    print(text, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

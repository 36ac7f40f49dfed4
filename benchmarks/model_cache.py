"""Bytes a round pulls from storage, with one cache volume shared by its pods or one cache per pod.

    python benchmarks/model_cache.py [--model DIR] [--shards 4] [--smoke]

A round's stages run as their pods do, each its own `tao-stage` process on an S3 run (the S3 protocol server,
moto, in its own process): prepare, the generate shards at once (an Indexed Job), score, train, evaluate. Two
ways: each process with its own cache directory (an emptyDir per pod: the default), and all of them on one
(a `spec.storage.cache` volume). Every stage result counts what it pulled (`treesPulled`, `treeBytesPulled`,
`treeCacheHits`, `bytesPulled`); the table sums them per stage. The model: --model, else the arithmetic
example's base model when examples/arithmetic/prepare.py has built it, else tests/tiny_model.py's.
Figures go to benchmarks/results/model_cache.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _bench as bench
from data_plane import BUCKET, start_moto

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_MODEL = ROOT / "examples" / "arithmetic" / "work" / "base-model"


def model_dir(given: Path | None, work: Path, smoke: bool) -> Path:
    if given is not None:
        return given
    if EXAMPLE_MODEL.is_dir() and not smoke:
        return EXAMPLE_MODEL
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tiny_model

    return Path(build_tiny_model(work / "tiny-model"))


def stage(
    name: str, cfg: dict[str, Any], work: Path, env: dict[str, str], index: int | None
) -> subprocess.Popen[str]:
    label = f"{name}-{index}" if index is not None else name
    (work / f"{label}.json").write_text(json.dumps(cfg | {"stage": name}))
    cmd = [sys.executable, "-m", "tao_trainer.cli", name, "--config", str(work / f"{label}.json")]
    cmd += ["--result", str(work / f"{label}.result.json")]
    env = env | ({"JOB_COMPLETION_INDEX": str(index)} if index is not None else {})
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def counts_of(proc: subprocess.Popen[str], work: Path, label: str) -> dict[str, int]:
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{err[-3000:]}")
    return dict(json.loads((work / f"{label}.result.json").read_text())["counts"])


def run_round(
    mode: str, cfg: dict[str, Any], shards: int, base: Path, env: dict[str, str]
) -> dict[str, dict[str, int]]:
    """Every stage of round 1 on one cache (`shared`) or a cache per process (`per-pod`)."""
    work = base / mode
    work.mkdir()
    cfg = cfg | {"runUri": f"s3://{BUCKET}/runs/{mode}"}

    def cache(label: str) -> dict[str, str]:
        return env | {"TAO_CACHE_DIR": str(work / ("cache" if mode == "shared" else f"cache-{label}"))}

    out = {"prepare": counts_of(stage("prepare", cfg, work, cache("prepare"), None), work, "prepare")}
    procs = [stage("generate", cfg, work, cache(f"generate-{i}"), i) for i in range(shards)]
    out |= {f"generate-{i}": counts_of(p, work, f"generate-{i}") for i, p in enumerate(procs)}
    for name in ("score", "train", "evaluate"):
        out[name] = counts_of(stage(name, cfg, work, cache(name), None), work, name)
    return out


def main(argv: list[str] | None = None) -> int:
    p = bench.parser(__doc__)
    p.add_argument("--model", type=Path)
    p.add_argument("--shards", type=int, default=4)
    bench.add_output_flags(p, "model_cache", "the tiny test model")
    args = p.parse_args(argv)
    machine = bench.Machine()
    base = Path(tempfile.mkdtemp(prefix="tao-model-cache-"))
    model = model_dir(args.model, base, args.smoke)
    model_bytes = sum(f.stat().st_size for f in model.rglob("*") if f.is_file())
    machine.announce(f"model {model} ({model_bytes / 1e6:.1f} MB); {args.shards} generate shards")
    moto, endpoint = start_moto()
    env = (
        os.environ
        | bench.OFFLINE
        | {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "TAO_S3_ENDPOINT_URL": endpoint,
            "TAO_S3_PATH_STYLE": "1",
            "HOME": str(base),
        }
    )
    try:
        import boto3

        s3 = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench").client(
            "s3", endpoint_url=endpoint, region_name="us-east-1"
        )
        s3.create_bucket(Bucket=BUCKET)
        for f in sorted(model.rglob("*")):
            if f.is_file():
                s3.upload_file(str(f), BUCKET, f"models/base/{f.relative_to(model)}")
        prompts = base / "prompts.jsonl"
        prompts.write_text(
            "".join(json.dumps({"prompt": f"{a}+{b}="}) + "\n" for a in range(10, 30) for b in range(3))
        )
        model_uri = f"s3://{BUCKET}/models/base"
        cfg = {
            "round": 1,
            "modelUri": model_uri,
            "spec": {
                "model": {"uri": model_uri},
                "prompts": {"uri": prompts.as_uri(), "heldOutFraction": 0.2},
                "storage": {"uri": f"s3://{BUCKET}/runs", "endpointUrl": endpoint, "pathStyle": True},
                "generation": {"candidates": 2, "maxNewTokens": 8, "shards": args.shards, "batchSize": 16},
                "scoring": {"scorers": [{"type": "regex", "pattern": r"\d"}]},
                "training": {"method": "sft", "epochs": 1, "batchSize": 8, "sft": {"minScore": 0.0}},
                "evaluation": {"maxPrompts": 8, "minImprovement": -1.0, "alarms": False},
            },
        }
        modes = {mode: run_round(mode, cfg, args.shards, base, env) for mode in ("per-pod", "shared")}
    finally:
        moto.terminate()
        moto.wait(30)
        shutil.rmtree(base, ignore_errors=True)

    stages = list(modes["shared"])
    rows = []
    totals: dict[str, dict[str, int]] = {}
    for mode, per_stage in modes.items():
        total = {
            k: sum(c.get(k, 0) for c in per_stage.values())
            for k in ("treesPulled", "treeBytesPulled", "treeCacheHits", "bytesPulled")
        }
        totals[mode] = total
        cells = [
            f"{per_stage[s].get('treesPulled', 0)}/{per_stage[s].get('treeCacheHits', 0)}" for s in stages
        ]
        rows.append([mode, *cells, str(total["treesPulled"]), f"{total['treeBytesPulled'] / 1e6:.1f} MB"])
    print("\nmodel trees pulled from storage / read from the cache, per stage process")
    print(bench.format_table(["cache", *stages, "trees pulled", "tree bytes"], rows))
    ratio = totals["shared"]["treeBytesPulled"] / totals["per-pod"]["treeBytesPulled"]
    print(
        f"model bytes pulled, shared / per pod: {ratio:.2f}x; the base model is {model_bytes / 1e6:.1f} MB, "
        f"pulled {totals['shared']['treeBytesPulled'] / model_bytes:.2f} times with the shared cache"
    )
    figures = {
        "modelBytes": model_bytes,
        "shards": args.shards,
        "stages": modes,
        "totals": totals,
        "ratio": round(ratio, 3),
    }
    machine.finish("model_cache", bench.results_path(args, "model_cache"), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

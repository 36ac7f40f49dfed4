"""The prepare stage on a million prompts in S3: prompts/s and peak memory of the stage process.

    python benchmarks/data_plane.py [--prompts 1000000] [--objects 8] [--shards 8] [--smoke]

Three processes: an S3 server (moto's ThreadedMotoServer, in its own process so that the objects it holds
are not counted against the stage), this driver, and the stage itself, run as a pod runs it:
`python -m tao_trainer.cli prepare --config cfg.json`. The driver writes the prompts as JSON-lines objects
under one prefix (a mix of plain-text prompts and chat messages, with a label field and a metadata field,
a few duplicates and malformed lines), uploads them, and times the stage: load every object, drop duplicates
and set aside malformed lines, split held-out prompts by hash, write the held-out files and the training
shards back to S3. The stage's peak RSS comes from the kernel (wait4's ru_maxrss for that child alone); a bare
interpreter that imports the same modules gives the baseline.

With --compare REV, the prepare stage of that commit (a git worktree of it, e.g. the last one before prepare
streamed) runs on the same objects in the same run, after ours: its wall time and peak RSS are printed beside
ours as ratios, and every file both wrote (shards, held-out prompts and labels, rejects) is compared byte for
byte. --storage file keeps the prompts and the run on local disk instead of S3 (for sizes whose objects would
not fit in the S3 server's memory, e.g. --prompts 10000000).

With --breakdown N (default 0: skip) the in-memory loader (`prompts.load_prompts`, which the watch stage and
the benchmarks use; prepare no longer does) runs on the first N prompts under tracemalloc, to show where the
memory goes per prompt held. Figures go to benchmarks/results/data_plane.json.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench as bench

ROOT = Path(__file__).resolve().parents[1]
TARGET_RSS_MB = 400.0
BUCKET = "bench"

MOTO = """
import threading
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"listening on {host}:{port}", flush=True)
threading.Event().wait()
"""

# What the stage process imports before it reads anything: the baseline its peak RSS is compared with.
BASELINE = """
import resource, sys
from tao_trainer import cli, prompts, storage
import tao_trainer.stages.prepare
storage._client()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

TOPICS = ["billing", "shipping", "returns", "accounts", "sql", "math", "travel", "health"]


def prompt_line(i: int, rng: random.Random) -> str:
    """One JSON line: ~60% plain text, ~40% chat messages; a label (answer) and metadata fields."""
    a, b = rng.randrange(10, 10_000), rng.randrange(10, 10_000)
    topic = TOPICS[i % len(TOPICS)]
    text = (
        f"Ticket {i} ({topic}): a customer asks how {a} and {b} combine; what is {a} + {b}? Answer briefly."
    )
    record: dict[str, Any]
    if i % 5 < 3:
        record = {"prompt": text}
    else:
        record = {
            "prompt": [
                {"role": "system", "content": "You are a concise support agent."},
                {"role": "user", "content": text},
            ]
        }
    record |= {"answer": str(a + b), "topic": topic, "meta": {"source": "bench", "priority": i % 3}}
    return json.dumps(record)


def write_objects(workdir: Path, n: int, objects: int) -> tuple[list[Path], int, int]:
    """The prompt files; returns (paths, duplicate lines, malformed lines)."""
    rng = random.Random(0)
    paths, dups, bad = [], 0, 0
    per = -(-n // objects)
    for k in range(objects):
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"part-{k:03d}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            first = None
            for i in range(k * per, min(n, (k + 1) * per)):
                line = prompt_line(i, rng)
                first = first or line
                f.write(line + "\n")
            # A few lines a real export has: a repeated prompt and lines that are not prompts.
            f.write(f"{first}\n")
            f.write('{"prompt": ""}\n{"text": "no prompt field"}\nnot json at all\n')
            dups, bad = dups + 1, bad + 3
        paths.append(path)
    return paths, dups, bad


def start_moto() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", MOTO], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"moto did not start: {line!r}")
    return proc, "http://" + line.split("listening on ", 1)[1].strip()


def run_child(
    cmd: list[str], env: dict[str, str], stdout: Any = subprocess.DEVNULL
) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS in MB) of one child process, from wait4."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[2:5]} exited {proc.returncode}: {err[-2000:]}")
    return proc.returncode, wall, usage.ru_maxrss / 1024


def breakdown(files: list[Path], n: int) -> dict[str, Any]:
    """tracemalloc over load + split of the first n prompts (local files: the S3 client is not what is measured)."""
    import gc
    import tracemalloc

    sys.path.insert(0, str(ROOT / "trainer_image"))
    from tao_trainer import prompts

    with tempfile.TemporaryDirectory(prefix="tao-dp-breakdown-") as tmp:
        src = Path(tmp) / "sample.jsonl"
        with src.open("w", encoding="utf-8") as out:
            left = n
            for path in files:
                with path.open(encoding="utf-8") as f:
                    for line in f:
                        if left == 0:
                            break
                        out.write(line)
                        left -= 1
        gc.collect()
        tracemalloc.start(1)
        t0 = tracemalloc.take_snapshot()
        loaded = prompts.load_prompts(src.as_uri())
        after_load, peak_load = tracemalloc.get_traced_memory()
        t1 = tracemalloc.take_snapshot()
        pool, held = prompts.split(loaded.records, 0.1)
        after_split, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    count = len(loaded.records)
    top = []
    for stat in t1.compare_to(t0, "lineno")[:6]:
        frame = stat.traceback[0]
        top.append(
            {
                "where": f"{Path(frame.filename).name}:{frame.lineno}",
                "bytesPerPrompt": round(stat.size_diff / count),
                "blocks": stat.count_diff,
            }
        )
    record = loaded.records[0]
    return {
        "prompts": count,
        "bytesPerPromptAfterLoad": round(after_load / count),
        "bytesPerPromptPeak": round(peak / count),
        "bytesPerPromptAfterSplit": round(after_split / count),
        "heldOut": len(held),
        "top": top,
        "sizesOfOnePrompt": {
            "record": sys.getsizeof(record) + sys.getsizeof(record.__dict__),
            "id": sys.getsizeof(record.id),
            "prompt": sys.getsizeof(record.prompt),
            "fields": sys.getsizeof(record.fields),
        },
    }


class Store:
    """Where the prompts and the runs live: the S3 server (moto) or a local directory (file://)."""

    def __init__(self, kind: str, workdir: Path, endpoint: str) -> None:
        self.kind, self.root, self.endpoint = kind, workdir / "store", endpoint
        self.s3: Any = None
        if kind == "s3":
            import boto3

            session = boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench")
            self.s3 = session.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            self.s3.create_bucket(Bucket=BUCKET)

    def uri(self, rel: str) -> str:
        return f"s3://{BUCKET}/{rel}" if self.kind == "s3" else (self.root / rel).as_uri()

    def storage_spec(self) -> dict[str, Any]:
        if self.kind == "s3":
            return {"uri": self.uri("runs"), "endpointUrl": self.endpoint, "pathStyle": True}
        return {"uri": self.uri("runs")}

    def put_prompts(self, files: list[Path]) -> str:
        for path in files:
            if self.kind == "s3":
                self.s3.upload_file(str(path), BUCKET, f"prompts/{path.name}")
            else:
                (self.root / "prompts").mkdir(parents=True, exist_ok=True)
                shutil.copy(path, self.root / "prompts" / path.name)
        return self.uri("prompts/")

    def outputs(self, name: str) -> dict[str, bytes]:
        """Every file a run's prepare wrote, by path under its round directory."""
        prefix = f"runs/default/{name}/uid/round-001/"
        if self.kind == "file":
            base = self.root / prefix
            return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}
        out = {}
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"][len(prefix) :]] = self.s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        return {k: v for k, v in out.items() if not k.startswith(("configs/", "results/"))}

    def written(self, name: str) -> int:
        return sum(len(v) for k, v in self.outputs(name).items() if k.startswith("prompts/"))


def run_prepare(
    workdir: Path, name: str, store: Store, prompts_uri: str, shards: int, env: dict[str, str]
) -> tuple[float, float, dict[str, Any]]:
    """(wall seconds, peak RSS MB, StageResult) of one `tao-stage prepare` writing run `name`."""
    config = {
        "stage": "prepare",
        "round": 1,
        "runUri": store.uri(f"runs/default/{name}/uid"),
        "modelUri": "s3://bench/base-model",
        "spec": {
            "model": {"uri": "s3://bench/base-model"},
            "prompts": {"uri": prompts_uri, "heldOutFraction": 0.1, "labelFields": ["answer"]},
            "storage": store.storage_spec(),
            "generation": {"shards": shards},
            "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
            "evaluation": {"maxPrompts": 500},
        },
    }
    cfg_path, result_path = workdir / f"{name}.json", workdir / f"{name}.result.json"
    cfg_path.write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "tao_trainer.cli", "prepare", "--config", str(cfg_path)]
    _, wall, peak_mb = run_child(cmd + ["--result", str(result_path)], env)
    result = json.loads(result_path.read_text())
    if not result.get("ok"):
        raise RuntimeError(f"prepare ({name}) failed: {result.get('message')}")
    return wall, peak_mb, result


def main(argv: list[str] | None = None) -> int:
    parser = bench.parser(__doc__)
    parser.add_argument("--prompts", type=int, default=1_000_000)
    parser.add_argument("--objects", type=int, default=8, help="JSONL objects under the prompts prefix")
    parser.add_argument("--shards", type=int, default=8, help="generation.shards: training shards written")
    parser.add_argument(
        "--breakdown", type=int, default=0, help="tracemalloc over this many prompts held in memory (0: skip)"
    )
    parser.add_argument("--compare", metavar="REV", help="also run the prepare stage of this commit")
    parser.add_argument("--storage", choices=("s3", "file"), default="s3")
    bench.add_output_flags(parser, "data_plane", "2,000 prompts, 2 objects, a 1,000-prompt breakdown")
    args = parser.parse_args(argv)
    if args.smoke:
        args.prompts, args.objects, args.shards, args.breakdown = 2000, 2, 2, 1000

    machine = bench.Machine()
    machine.announce(
        f"{args.prompts:,} prompts in {args.objects} objects, {args.shards} shards, {args.storage} storage"
        + (f"; compared with {args.compare}" if args.compare else "")
    )
    workdir = Path(tempfile.mkdtemp(prefix="tao-dataplane-"))
    moto, endpoint = start_moto() if args.storage == "s3" else (None, "")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(workdir / "absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "absent"),
        "TAO_LOG_LEVEL": "ERROR",
    }
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(name, None)
    store = Store(args.storage, workdir, endpoint)
    try:
        files, dups, bad = write_objects(workdir / "src", args.prompts, args.objects)
        size = sum(p.stat().st_size for p in files)
        started = time.monotonic()
        prompts_uri = store.put_prompts(files)
        upload_s = time.monotonic() - started
        print(f"  uploaded {size / 1e6:.0f} MB in {upload_s:.1f}s", flush=True)
        _, _, baseline_mb = run_child(
            [sys.executable, "-c", BASELINE], env | {"TAO_S3_ENDPOINT_URL": endpoint} if endpoint else env
        )
        wall, peak_mb, result = run_prepare(workdir, "ours", store, prompts_uri, args.shards, env)
        written = store.written("ours")
        old: dict[str, Any] | None = None
        if args.compare:
            with bench.worktree(args.compare, workdir / "old") as tree:
                old_env = env | {"PYTHONPATH": bench.pythonpath(tree)}
                old_wall, old_peak, _ = run_prepare(workdir, "old", store, prompts_uri, args.shards, old_env)
            same = store.outputs("ours") == store.outputs("old")
            old = {"rev": args.compare, "wallSeconds": round(old_wall, 2), "peakRssMb": round(old_peak, 1)}
            old |= {"sameOutputs": same, "throughputRatio": round(old_wall / wall, 3)}
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(30)

    counts = result["counts"]
    figures: dict[str, Any] = {
        "prompts": args.prompts,
        "objects": args.objects,
        "shards": args.shards,
        "inputMb": round(size / 1e6, 1),
        "writtenMb": round(written / 1e6, 1),
        "uploadSeconds": round(upload_s, 1),
        "stageWallSeconds": round(wall, 2),
        "stageReportedSeconds": result.get("durationSeconds"),
        "promptsPerSecond": round(args.prompts / wall),
        "peakRssMb": round(peak_mb, 1),
        "baselineRssMb": round(baseline_mb, 1),
        "peakRssMbPerMillionPrompts": round((peak_mb - baseline_mb) / args.prompts * 1e6, 1),
        "counts": counts,
        "expected": {"duplicates": dups, "rejects": bad},
        "targetRssMb": TARGET_RSS_MB,
        "rssTargetMet": peak_mb <= TARGET_RSS_MB,
        "storage": args.storage,
        "compared": old,
    }
    if args.breakdown:
        figures["breakdown"] = breakdown(files, min(args.breakdown, args.prompts))
    shutil.rmtree(workdir, ignore_errors=True)

    rows = [
        (
            "prompts",
            f"{args.prompts:,} generated: pool {counts['pool']:,} (all to shards), held-out kept "
            f"{counts['heldOut']}, duplicates {counts['duplicates']}, rejects {counts['rejects']}",
        ),
        (
            "input",
            f"{figures['inputMb']} MB in {args.objects} objects; written {figures['writtenMb']} MB "
            f"in {args.shards} shards + held-out",
        ),
        ("stage wall time", f"{wall:.1f} s (the stage reports {result.get('durationSeconds')} s)"),
        ("throughput", f"{figures['promptsPerSecond']:,} prompts/s"),
        (
            "peak RSS",
            f"{peak_mb:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB: "
            f"{'met' if figures['rssTargetMet'] else 'MISSED'})",
        ),
        ("baseline RSS (imports + S3 client)", f"{baseline_mb:.0f} MB"),
        ("RSS above baseline per 1M prompts", f"{figures['peakRssMbPerMillionPrompts']:.0f} MB"),
    ]
    if old is not None:
        rows += [
            (
                f"prepare of {old['rev']}",
                f"{old['wallSeconds']:.1f} s, peak RSS {old['peakRssMb']:.0f} MB; throughput ours/old "
                f"{old['throughputRatio']:.2f}x, peak RSS ours/old {peak_mb / old['peakRssMb']:.2f}x",
            ),
            ("same outputs (every file, byte for byte)", str(old["sameOutputs"])),
        ]
    width = max(len(k) for k, _ in rows)
    print(
        f"\nprepare stage (tao-stage prepare) reading prompts from {args.storage} storage and writing shards back"
    )
    for k, v in rows:
        print(f"  {k.ljust(width)}  {v}")
    if "breakdown" in figures:
        b = figures["breakdown"]
        print(
            f"\nmemory per prompt, load + split of {b['prompts']:,} prompts under tracemalloc (Python heap only)"
        )
        print(
            f"  after load {b['bytesPerPromptAfterLoad']} B, peak {b['bytesPerPromptPeak']} B, "
            f"after split {b['bytesPerPromptAfterSplit']} B"
        )
        for t in b["top"]:
            print(f"  {t['where']:<28} {t['bytesPerPrompt']:>6} B/prompt  ({t['blocks']:,} blocks)")
        print("  one prompt: " + ", ".join(f"{k} {v} B" for k, v in b["sizesOfOnePrompt"].items()))
    machine.finish("data_plane", bench.results_path(args, "data_plane"), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

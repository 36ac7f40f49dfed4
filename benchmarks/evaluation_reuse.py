"""Evaluate from round 2 on, with and without reuse of the champion's answers (evaluation.reuseAnswers).

    python benchmarks/evaluation_reuse.py [--run DIR] [--repeats 2]

Takes a finished run of two or more rounds (default: the arithmetic example's, from
`python examples/arithmetic/prepare.py && tao run examples/arithmetic/taojob.yaml`) and copies it. In the
copy, round 1's evaluate runs once as `tao run` would run it today, keeping each model's answers; then round
2's evaluate runs from the stored StageConfig in three ways, in turn: reuse off as a new process (both models
generate, as before reuse existed: what every evaluate cost), reuse on as a new process (round 2's champion,
round 1's promoted challenger, is read back: an evaluate pod), and reuse on forked from `tao run`'s warm worker
(torch, transformers and TRL already imported, as earlier stages of the run left it). Prints each run's CPU and
wall seconds, the ratios of medians to reuse off, and whether the reports (every metric, the verdict,
promotion) are identical. Figures go to benchmarks/results/evaluation_reuse.json.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as bench  # noqa: E402

from tao_operator.local_warm import WarmWorker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_RUN = ROOT / "examples" / "arithmetic" / "work" / "runs" / "default" / "arithmetic" / "local"


def copy_run(run: Path, dest: Path) -> Path:
    """The run copied to `dest`, its stored stage configs pointing at the copy."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("cache"))
    for cfg in dest.glob("round-*/configs/*.json"):
        cfg.write_text(cfg.read_text().replace(run.resolve().as_uri(), dest.resolve().as_uri()))
    return dest


def evaluate(
    run: Path, round_: int, reuse: bool, work: Path, worker: WarmWorker | None = None
) -> dict[str, Any]:
    """One `tao-stage evaluate` of the round from its stored config, as a new process or forked from `worker`;
    CPU and wall seconds, and its report."""
    cfg = json.loads((run / f"round-{round_:03d}" / "configs" / "evaluate.json").read_text())
    cfg["spec"].setdefault("evaluation", {})["reuseAnswers"] = reuse
    path = work / f"evaluate-{round_}-{'on' if reuse else 'off'}.json"
    path.write_text(json.dumps(cfg))
    # A stage whose result is stored only re-reports it: remove it, so that the evaluate really runs.
    (run / f"round-{round_:03d}" / "results" / "evaluate.json").unlink(missing_ok=True)
    argv = ["evaluate", "--config", str(path)]
    if worker is not None:
        assert worker.proc is not None
        before_cpu = bench.process_cpu_seconds(worker.proc.pid)[1]
        started = time.monotonic()
        code = worker.run(argv)
        wall = time.monotonic() - started
        cpu = bench.process_cpu_seconds(worker.proc.pid)[1] - before_cpu
        if code != 0:
            raise RuntimeError(f"evaluate round {round_} in the warm worker failed with status {code}")
    else:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        cmd = [sys.executable, "-m", "tao_trainer.cli", *argv]
        env = os.environ | bench.OFFLINE
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        if proc.returncode != 0:
            raise RuntimeError(f"evaluate round {round_} failed:\n{proc.stderr[-3000:]}")
    result = json.loads((run / f"round-{round_:03d}" / "results" / "evaluate.json").read_text())
    report = json.loads((run / f"round-{round_:03d}" / "eval" / "report.json").read_text())
    return {
        "cpuSeconds": round(cpu, 2),
        "wallSeconds": round(wall, 2),
        "reusedAnswers": result["counts"].get("reusedAnswers", 0),
        "report": {k: report[k] for k in ("metrics", "promoted", "verdict", "champion", "challenger")},
    }


def main(argv: list[str] | None = None) -> int:
    p = bench.parser(__doc__)
    p.add_argument("--run", type=Path, default=EXAMPLE_RUN, help="a finished run of at least two rounds")
    p.add_argument("--repeats", type=int, default=2, help="pairs of round-2 evaluates (off, then on)")
    p.add_argument("--json", "--out", dest="out", type=Path, default=bench.RESULTS / "evaluation_reuse.json")
    args = p.parse_args(argv)
    if not (args.run / "round-002" / "configs" / "evaluate.json").is_file():
        raise SystemExit(
            f"{args.run}: no round 2 evaluate config; run the arithmetic example first (see --help)"
        )
    machine = bench.Machine()
    work = Path(tempfile.mkdtemp(prefix="tao-eval-reuse-"))
    run = copy_run(args.run, work / "run")
    champion = json.loads((run / "round-002" / "configs" / "evaluate.json").read_text())["modelUri"]
    machine.announce(f"run {args.run}; round 2's champion {champion}; {args.repeats} pair(s)")
    first = evaluate(run, 1, True, work)  # what round 1 of a run keeps today
    kept = run / "cache" / "evaluation"
    shutil.copytree(kept, work / "kept-after-round-1")
    print(
        f"round 1 evaluate (keeps both models' answers): {first['cpuSeconds']} CPU s, {first['wallSeconds']} s"
    )
    modes = ("off", "on", "on-warm")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    log = open(work / "warm-worker.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    with WarmWorker(os.environ | bench.OFFLINE, log) as worker:
        # Started and its imports done before the timing, as the stages before evaluate leave it in a run.
        worker.run(["--help"])
        for i in range(args.repeats):
            for mode in modes if i % 2 == 0 else modes[::-1]:
                # Each round-2 evaluate finds what round 1 kept, and nothing of an earlier round-2 run.
                shutil.rmtree(kept)
                shutil.copytree(work / "kept-after-round-1", kept)
                warm = worker if mode == "on-warm" else None
                res = evaluate(run, 2, mode != "off", work, warm)
                runs[mode].append(res)
                print(
                    f"round 2 evaluate, reuse {mode}: {res['cpuSeconds']} CPU s, {res['wallSeconds']} s wall, "
                    f"{res['reusedAnswers']} model(s) read back"
                )
    log.close()
    reports = [r["report"] for rs in runs.values() for r in rs]
    identical = all(r == reports[0] for r in reports)
    cpu = {m: statistics.median(r["cpuSeconds"] for r in rs) for m, rs in runs.items()}
    wall = {m: statistics.median(r["wallSeconds"] for r in rs) for m, rs in runs.items()}
    for mode in modes[1:]:
        print(
            f"round 2 evaluate, median, reuse {mode} vs off: CPU {cpu[mode]:.1f} s vs {cpu['off']:.1f} s = "
            f"{cpu[mode] / cpu['off']:.2f}x; wall {wall[mode]:.1f} s vs {wall['off']:.1f} s = "
            f"{wall[mode] / wall['off']:.2f}x"
        )
    print(f"reports identical: {identical}")
    shutil.rmtree(work, ignore_errors=True)
    figures = {
        "run": str(args.run),
        "round1": first,
        "round2": runs,
        "medianCpuSeconds": cpu,
        "medianWallSeconds": wall,
        "cpuRatio": round(cpu["on"] / cpu["off"], 3),
        "wallRatio": round(wall["on"] / wall["off"], 3),
        "warmCpuRatio": round(cpu["on-warm"] / cpu["off"], 3),
        "warmWallRatio": round(wall["on-warm"] / wall["off"], 3),
        "reportsIdentical": identical,
    }
    machine.finish("evaluation_reuse", args.out, figures)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())

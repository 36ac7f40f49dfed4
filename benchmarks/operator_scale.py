"""The operator under many concurrent TAOJobs: stage-transition latency, API requests per transition, RSS and CPU.

    python benchmarks/operator_scale.py [--taojobs 50,200] [--paced 200:10,1000:10] [--rounds 2]
        [--compare REV] [--unrelated 1000] [--smoke]

Two processes. This one runs kmock's emulated API server (the tests' `Emulator`, with reads and writes
answered straight from its object store and server-side label selection, as a real API server does, so that
the emulator's own cost does not grow with the number of objects) and a benchmark-only fake control plane: for
each stage Job the operator creates, it creates a pod whose terminated container carries a valid StageResult
as its termination message, then marks the Job Complete. No stage process runs. The other process is the
real operator (kopf with the registry `tao operator` runs, its 60 s safety timer included, watching namespace
default, logged in to the emulator's URL): its peak RSS (VmHWM) and CPU time come from /proc.

Every TAOJob runs 2 fixed rounds (preflight and serving disabled): 10 stage Jobs, 9 transitions between them
plus the last Job -> Succeeded. Transition latency is measured in the emulator, on one clock: from the control
plane's PATCH that marks a Job Complete to the operator's POST of the TAOJob's next Job. Requests are counted
per verb and resource, the operator's (any agent but the control plane's) apart from the control plane's.

Two kinds of run:
- saturation (--taojobs): all TAOJobs applied at once, every stage completes the moment its Job exists. The
  fleet is a closed loop that always has work queued, so latency ~ fleet size / throughput: these runs give
  the throughput, the CPU per transition and requests per transition at each size;
- paced (--paced N:S): N TAOJobs arriving over S seconds, each stage 'running' 0.5-1.5x S: latency when the
  operator is not saturated (real stages run for minutes).
With --compare REV every fleet runs again, back to back, with the operator of that commit (a git worktree on
PYTHONPATH): its CPU per stage Job against this one's. --unrelated N: before the first saturation fleet, N watch
events of Jobs that are not the operator's (created, then completed, in the same namespace) and the operator
CPU they cost, as a share of the fleet's. Figures go to benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench as bench
import kmock
from _operator_rig import (
    NS,
    TAOJOBS,
    BenchEmulator,
    FastPlane,
    declare_resources,
    operator_code,
    proc_stats,
    start_operator,
)

STAGES_PER_ROUND = ("prepare", "generate", "score", "train", "evaluate")
# Latency and RSS of this operator; its CPU per stage Job against an older one (--compare); the share of CPU
# that unrelated Job events cost.
TARGETS = {"p95_ms": 1000.0, "rss_mb": 250.0, "cpu_ratio": 0.5, "unrelated_cpu": 0.10}


def taojob_manifest(name: str, rounds: int) -> dict[str, Any]:
    return {
        "apiVersion": "tao.dev/v1alpha1",
        "kind": "TAOJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"uri": "s3://bench/base-model"},
            "prompts": {"uri": "s3://bench/prompts.jsonl"},
            "storage": {"uri": "s3://bench/runs"},
            "rounds": rounds,
            "scoring": {"scorers": [{"type": "regex", "pattern": ".+"}]},
            "preflight": {"enabled": False},
            "serving": {"enabled": False},
        },
    }


# ------------------------------------------------------------------------------------------------ one run


async def run_once(
    n: int,
    rounds: int,
    stage_seconds: float,
    timeout: float,
    side: tuple[str, Path | None] = ("main", None),
    unrelated: int = 0,
) -> dict[str, Any]:
    """One fleet against a fresh emulator and operator. `side`: (label, worktree of an older commit or None
    for this one); `unrelated`: Job events of other workloads made in the namespace during the run."""
    workdir = Path(tempfile.mkdtemp(prefix="tao-opscale-"))
    label, tree = side
    async with BenchEmulator() as emu, kmock.Server(emu):
        declare_resources(emu)
        url = str(emu.url).rstrip("/")
        operator = start_operator(url, workdir, tree)
        plane = FastPlane(emu, url, stage_seconds)
        try:
            deadline = time.monotonic() + 60
            watched = lambda: {w for (who, verb, w) in emu.counts if who == "operator" and verb == "watch"}  # noqa: E731
            while not {"taojobs", "jobs"} <= watched():
                if operator.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the operator did not start: {(workdir / 'operator.log').read_text()[-2000:]}"
                    )
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            code = operator_code(workdir)
            if tree is not None and not code.startswith(str(tree)):
                raise RuntimeError(f"the {label} operator ran this commit's code ({code})")
            unrelated_cpu = 0.0
            if unrelated:
                # Before the fleet, alone: the operator CPU they cost is then theirs, not the rig's contention.
                before = proc_stats(operator.pid)["cpu_s"]
                await plane.unrelated_jobs(unrelated)
                await asyncio.sleep(1.0)
                unrelated_cpu = proc_stats(operator.pid)["cpu_s"] - before
            startup = proc_stats(operator.pid)
            startup_requests = sum(c for (who, _, _), c in emu.counts.items() if who == "operator")
            emu.counts.clear()
            emu.unselected_lists.clear()
            plane.start()

            started = time.monotonic()
            rig_cpu = time.process_time()
            posting = asyncio.Semaphore(20)

            async def post(i: int) -> None:
                if stage_seconds:  # paced: TAOJobs arrive spread over one stage duration
                    await asyncio.sleep(stage_seconds * i / n)
                async with posting:
                    await plane.call("POST", TAOJOBS, taojob_manifest(f"bench-{i:04d}", rounds))

            await asyncio.gather(*(post(i) for i in range(n)))
            while len(emu.finished) < n:
                if operator.poll() is not None:
                    raise RuntimeError(
                        f"the operator exited: {(workdir / 'operator.log').read_text()[-2000:]}"
                    )
                if time.monotonic() - started > timeout:
                    raise RuntimeError(f"only {len(emu.finished)}/{n} TAOJobs finished within {timeout:.0f}s")
                await asyncio.sleep(0.05)
            wall = time.monotonic() - started
            rig_cpu = time.process_time() - rig_cpu
            await asyncio.sleep(1.0)  # trailing events (kopf posts Kubernetes events asynchronously)
            emu.counting = False
            end = proc_stats(operator.pid)
        finally:
            await plane.stop()
            operator.terminate()
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
    shutil.rmtree(workdir, ignore_errors=True)  # kept when the run failed: the operator's log is there

    # Transitions: each Job's completion -> the next stage Job of the same TAOJob; the last -> the terminal phase.
    by_job: dict[str, list[tuple[int, int, str]]] = collections.defaultdict(list)
    order = {s: i for i, s in enumerate(STAGES_PER_ROUND)}
    for name, (taojob, round_, stage) in emu.job_meta.items():
        by_job[taojob].append((round_, order[stage], name))
    latencies, final = [], []
    for taojob, jobs in by_job.items():
        jobs.sort()
        for (_, _, a), (_, _, b) in zip(jobs, jobs[1:], strict=False):
            latencies.append(emu.created[b] - emu.completed[a])
        if taojob in emu.finished and jobs[-1][2] in emu.completed:
            final.append(emu.finished[taojob][0] - emu.completed[jobs[-1][2]])
    failed = sum(1 for _, phase in emu.finished.values() if phase != "Succeeded")
    handled = len(emu.completed)  # stage Jobs whose completion the operator had to act on
    op = {(verb, what): c for (who, verb, what), c in emu.counts.items() if who == "operator"}
    op_total = sum(op.values())
    per_stage = {f"{verb} {what}": round(c / handled, 3) for (verb, what), c in sorted(op.items())}
    plane_total = sum(c for (who, _, _), c in emu.counts.items() if who == "plane")
    cpu = end["cpu_s"] - startup["cpu_s"]
    return {
        "operator": label,
        "unrelatedJobEvents": unrelated,
        "taojobs": n,
        "rounds": rounds,
        "stageSeconds": stage_seconds,
        "stageJobs": len(emu.created),
        "transitions": len(latencies),
        "failedTaojobs": failed,
        "wallSeconds": round(wall, 2),
        "transitionsPerSecond": round((len(latencies) + len(final)) / wall, 1),
        "latencyMs": {
            "p50": round(bench.percentile(latencies, 50) * 1000, 1),
            "p95": round(bench.percentile(latencies, 95) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
            "mean": round(statistics.mean(latencies) * 1000, 1),
        },
        "finalLatencyMs": {
            "p50": round(bench.percentile(final, 50) * 1000, 1),
            "p95": round(bench.percentile(final, 95) * 1000, 1),
            "max": round(max(final) * 1000, 1),
        }
        if final
        else None,
        "operatorRequests": op_total,
        "operatorRequestsPerStageJob": round(op_total / handled, 2),
        "operatorRequestsByKindPerStageJob": per_stage,
        "operatorListsWithoutSelector": dict(emu.unselected_lists),
        "operatorWatchRequests": sum(c for (verb, _), c in op.items() if verb == "watch"),
        "startupRequests": startup_requests,
        "controlPlaneRequests": plane_total,
        "operatorRssMb": {
            "peak": round(end["hwm_mb"], 1),
            "end": round(end["rss_mb"], 1),
            "afterStartup": round(startup["rss_mb"], 1),
        },
        "operatorCpuSeconds": round(cpu, 2),
        "unrelatedCpuSeconds": round(unrelated_cpu, 3),
        "operatorCpuMsPerStageJob": round(cpu / handled * 1000, 2),
        "operatorCpuShare": round(cpu / wall, 2),
        "rigCpuShare": round(rig_cpu / wall, 2),  # the emulated API server and the fake control plane
    }


# ------------------------------------------------------------------------------------------------- main


def run_all(
    args: argparse.Namespace, plan: list[tuple[int, float]], rounds: int, tree: Path | None
) -> list[Any]:
    """Every planned fleet with this commit's operator, then (`tree`) the older one's, back to back. The
    first saturation fleet's runs start with the unrelated Job events."""
    sides: list[tuple[str, Path | None]] = [("main", None)]
    if tree is not None:
        sides.append((args.compare, tree))
    first_saturation = next((i for i, (_, secs) in enumerate(plan) if not secs), None)
    runs = []
    for i, (n, secs) in enumerate(plan):
        extra = args.unrelated if i == first_saturation else 0
        for side in sides:
            run = asyncio.run(run_once(n, rounds, secs, args.timeout, side, extra))
            runs.append(run)
            print(
                f"  done: {side[0]}, {n} TAOJobs, stages of {secs:g}s"
                + (f", after {extra} unrelated Job events" if extra else "")
                + f", in {run['wallSeconds']}s",
                flush=True,
            )
    return runs


def label(r: dict[str, Any]) -> str:
    return f"{r['operator']} N={r['taojobs']}/{r['stageSeconds']:g}s"


def comparisons(runs: list[dict[str, Any]], rev: str | None) -> dict[str, Any]:
    """CPU per stage Job against the older operator (same fleet, same run of this script), and the CPU that
    unrelated Job events cost each operator, as a share of what the fleet's run then cost it."""

    def find(operator: str, n: int, secs: float, unrelated: int) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in runs
                if (r["operator"], r["taojobs"], r["stageSeconds"], r["unrelatedJobEvents"])
                == (operator, n, secs, unrelated)
            ),
            None,
        )

    cpu = []
    for r in runs:
        old = find(rev, r["taojobs"], r["stageSeconds"], r["unrelatedJobEvents"]) if rev else None
        if r["operator"] == "main" and old is not None:
            ratio = r["operatorCpuMsPerStageJob"] / old["operatorCpuMsPerStageJob"]
            cpu.append(
                {
                    "run": label(r),
                    "main": r["operatorCpuMsPerStageJob"],
                    rev: old["operatorCpuMsPerStageJob"],
                    "ratio": round(ratio, 3),
                }
            )
    unrelated = [
        {
            "operator": r["operator"],
            "events": r["unrelatedJobEvents"],
            "taojobs": r["taojobs"],
            "cpuSeconds": r["unrelatedCpuSeconds"],
            "addedCpuShare": round(r["unrelatedCpuSeconds"] / r["operatorCpuSeconds"], 3),
        }
        for r in runs
        if r["unrelatedJobEvents"]
    ]
    return {"cpuPerStageJob": cpu, "unrelatedJobEvents": unrelated}


def main(argv: list[str] | None = None) -> int:
    parser = bench.parser(__doc__)
    parser.add_argument(
        "--taojobs", default="50,200", help="fleet sizes for saturation runs (stages end at once)"
    )
    parser.add_argument(
        "--paced",
        default="200:10,1000:10",
        help="paced runs as TAOJOBS:STAGE_SECONDS (comma-separated; '' for none): each stage Job "
        "'runs' 0.5-1.5x STAGE_SECONDS and TAOJobs arrive over STAGE_SECONDS",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument(
        "--compare",
        metavar="REV",
        help="also run every fleet with the operator of this commit (a git worktree)",
    )
    parser.add_argument(
        "--unrelated",
        type=int,
        default=None,
        help="Job events of other workloads in the namespace for an extra run of the first saturation fleet "
        "(default 1000; 0 for none; none with --smoke)",
    )
    bench.add_output_flags(parser, "operator_scale", "3 TAOJobs, 1 round, no paced run (the smoke test)")
    args = parser.parse_args(argv)
    if args.unrelated is None:
        args.unrelated = 0 if args.smoke else 1000
    plan = [(3, 0.0)] if args.smoke else [(int(x), 0.0) for x in args.taojobs.split(",") if x]
    if not args.smoke:
        plan += [(int(n), float(secs)) for n, secs in (p.split(":") for p in args.paced.split(",") if p)]
    rounds = 1 if args.smoke else args.rounds

    machine = bench.Machine()
    machine.announce(
        f"{rounds} round(s) per TAOJob" + (f"; compared with {args.compare}" if args.compare else "")
    )
    if args.compare:
        with (
            tempfile.TemporaryDirectory(prefix="tao-opscale-old-") as tmp,
            bench.worktree(args.compare, Path(tmp) / "old") as tree,
        ):
            runs = run_all(args, plan, rounds, tree)
    else:
        runs = run_all(args, plan, rounds, None)

    header = [
        "operator",
        "taojobs",
        "unrelated",
        "stage s",
        "stage jobs",
        "transitions",
        "wall s",
        "trans/s",
        "p50 ms",
        "p95 ms",
        "max ms",
        "last->done p95",
        "req/job",
        "lists w/o selector",
        "rss MB",
        "cpu s",
        "cpu ms/job",
        "op cpu %",
        "rig cpu %",
    ]
    rows = [
        [
            r["operator"],
            str(r["taojobs"]),
            str(r["unrelatedJobEvents"]),
            f"{r['stageSeconds']:g}",
            str(r["stageJobs"]),
            str(r["transitions"]),
            f"{r['wallSeconds']:.1f}",
            f"{r['transitionsPerSecond']:.1f}",
            f"{r['latencyMs']['p50']:.0f}",
            f"{r['latencyMs']['p95']:.0f}",
            f"{r['latencyMs']['max']:.0f}",
            f"{(r['finalLatencyMs'] or {}).get('p95', float('nan')):.0f}",
            f"{r['operatorRequestsPerStageJob']:.2f}",
            str(sum(r["operatorListsWithoutSelector"].values())),
            f"{r['operatorRssMb']['peak']:.0f}",
            f"{r['operatorCpuSeconds']:.1f}",
            f"{r['operatorCpuMsPerStageJob']:.1f}",
            f"{r['operatorCpuShare'] * 100:.0f}",
            f"{r['rigCpuShare'] * 100:.0f}",
        ]
        for r in runs
    ]
    print("\noperator under N concurrent TAOJobs (latency: Job marked Complete -> next stage Job created)")
    print(bench.right_table(header, rows))
    kinds = sorted(
        {k for r in runs for k in r["operatorRequestsByKindPerStageJob"] if not k.startswith("watch")}
    )
    print("\noperator API requests per stage Job, by verb and resource")
    print(
        bench.right_table(
            ["request", *(label(r) for r in runs)],
            [[k, *(f"{r['operatorRequestsByKindPerStageJob'].get(k, 0):.2f}" for r in runs)] for k in kinds],
        )
    )
    print(
        "watch requests during the runs (reconnects; each replays its resource): "
        + ", ".join(str(r["operatorWatchRequests"]) for r in runs)
    )
    compared = comparisons(runs, args.compare)
    for c in compared["cpuPerStageJob"]:
        print(
            f"operator CPU per stage Job, {c['run']}: {c['main']:.2f} ms vs {c[args.compare]:.2f} ms "
            f"({args.compare}): {c['ratio']:.2f}x (target <= {TARGETS['cpu_ratio']}x: "
            f"{'met' if c['ratio'] <= TARGETS['cpu_ratio'] else 'MISSED'})"
        )
    for u in compared["unrelatedJobEvents"]:
        print(
            f"{u['events']} unrelated Job events cost the {u['operator']} operator {u['cpuSeconds']:.2f} CPU s: "
            f"{u['addedCpuShare'] * 100:.1f}% of its CPU for N={u['taojobs']} (target <= "
            f"{TARGETS['unrelated_cpu'] * 100:.0f}%: "
            f"{'met' if u['addedCpuShare'] <= TARGETS['unrelated_cpu'] else 'MISSED'})"
        )
    main_runs = [r for r in runs if r["operator"] == "main"]
    verdicts = []
    for r in main_runs:
        verdicts.append(
            {
                "taojobs": r["taojobs"],
                "stageSeconds": r["stageSeconds"],
                "unrelatedJobEvents": r["unrelatedJobEvents"],
                "p95<=1s": r["latencyMs"]["p95"] <= TARGETS["p95_ms"],
                "rss<=250MB": r["operatorRssMb"]["peak"] <= TARGETS["rss_mb"],
                "noUnselectedLists": not r["operatorListsWithoutSelector"],
            }
        )
    per_job = [r["operatorRequestsPerStageJob"] for r in main_runs if not r["stageSeconds"]]
    bounded = len(per_job) < 2 or max(per_job) <= 1.25 * min(per_job)
    print(
        "\ntargets (main): "
        + "; ".join(
            f"N={v['taojobs']}/{v['stageSeconds']:g}s: p95<=1s {'met' if v['p95<=1s'] else 'MISSED'}, "
            f"RSS<=250MB {'met' if v['rss<=250MB'] else 'MISSED'}"
            for v in verdicts
        )
        + f"; requests per stage Job independent of N: {'yes' if bounded else 'NO'} ({', '.join(map(str, per_job))})"
    )
    figures = {
        "targets": {
            "p95LatencyMs": TARGETS["p95_ms"],
            "rssMb": TARGETS["rss_mb"],
            "cpuRatio": TARGETS["cpu_ratio"],
            "unrelatedCpuShare": TARGETS["unrelated_cpu"],
        },
        "compared": args.compare,
        "runs": runs,
        "comparisons": compared,
        "verdicts": verdicts,
        "requestsPerStageJobIndependentOfN": bounded,
    }
    machine.finish("operator_scale", bench.results_path(args, "operator_scale"), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

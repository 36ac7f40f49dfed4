"""The operator under many concurrent TAOJobs: stage-transition latency, API requests per transition, RSS and CPU.

    python benchmarks/operator_scale.py [--taojobs 50,200] [--paced 200:10] [--rounds 2] [--smoke]

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
Figures go to benchmarks/results/operator_scale.json.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench as bench
import kmock
from _operator_rig import NS, TAOJOBS, BenchEmulator, FastPlane, declare_resources

STAGES_PER_ROUND = ("prepare", "generate", "score", "train", "evaluate")
TARGETS = {"p95_ms": 1000.0, "rss_mb": 250.0}


# ------------------------------------------------------------------------------------------- the operator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The operator's own process: what `tao operator -n default` runs (the same registry, handlers and settings: a
# 60 s safety timer, no metrics port), logged in straight to the emulator's URL so that no kubeconfig is needed.
OPERATOR = """
import asyncio, sys, kopf
from tao_operator.builders import OperatorDefaults
from tao_operator.handlers import build_registry
url, liveness = sys.argv[1], sys.argv[2]
defaults = OperatorDefaults(trainer_image="tao-trainer:bench", serving_image="vllm:bench")
asyncio.run(kopf.operator(registry=build_registry(defaults, server=url, metrics_port=None),
                          namespaces=["default"], liveness_endpoint=liveness, standalone=True))
"""


def start_operator(url: str, workdir: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", OPERATOR, url, f"http://127.0.0.1:{free_port()}/healthz"]
    log = open(workdir / "operator.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, env={**os.environ, "HOME": str(workdir)}, stdout=log, stderr=subprocess.STDOUT
    )


def proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds (user + system), peak and current RSS in MB, from /proc."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    kb = lambda key: int(status[key].split()[0])  # noqa: E731
    return {"cpu_s": bench.proc_cpu_seconds(pid), "hwm_mb": kb("VmHWM") / 1024, "rss_mb": kb("VmRSS") / 1024}


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


async def run_once(n: int, rounds: int, stage_seconds: float, timeout: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="tao-opscale-"))
    async with BenchEmulator() as emu, kmock.Server(emu):
        declare_resources(emu)
        url = str(emu.url).rstrip("/")
        operator = start_operator(url, workdir)
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
        "operatorCpuMsPerStageJob": round(cpu / handled * 1000, 2),
        "operatorCpuShare": round(cpu / wall, 2),
        "rigCpuShare": round(rig_cpu / wall, 2),  # the emulated API server and the fake control plane
    }


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = bench.parser(__doc__)
    parser.add_argument(
        "--taojobs", default="50,200", help="fleet sizes for saturation runs (stages end at once)"
    )
    parser.add_argument(
        "--paced",
        default="200:10",
        help="paced runs as TAOJOBS:STAGE_SECONDS (comma-separated; '' for none): each stage Job "
        "'runs' 0.5-1.5x STAGE_SECONDS and TAOJobs arrive over STAGE_SECONDS",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0)
    bench.add_output_flags(parser, "operator_scale", "3 TAOJobs, 1 round, no paced run (the smoke test)")
    args = parser.parse_args(argv)
    plan = [(3, 0.0)] if args.smoke else [(int(x), 0.0) for x in args.taojobs.split(",") if x]
    if not args.smoke:
        plan += [(int(n), float(secs)) for n, secs in (p.split(":") for p in args.paced.split(",") if p)]
    rounds = 1 if args.smoke else args.rounds

    machine = bench.Machine()
    machine.announce(f"{rounds} round(s) per TAOJob")
    runs = []
    for n, secs in plan:
        run = asyncio.run(run_once(n, rounds, secs, args.timeout))
        runs.append(run)
        print(f"  done: {n} TAOJobs, stages of {secs:g}s, in {run['wallSeconds']}s", flush=True)

    header = [
        "taojobs",
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
            str(r["taojobs"]),
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
            ["request", *(f"N={r['taojobs']}/{r['stageSeconds']:g}s" for r in runs)],
            [[k, *(f"{r['operatorRequestsByKindPerStageJob'].get(k, 0):.2f}" for r in runs)] for k in kinds],
        )
    )
    print(
        "watch requests during the runs (reconnects; each replays its resource): "
        + ", ".join(str(r["operatorWatchRequests"]) for r in runs)
    )
    verdicts = []
    for r in runs:
        verdicts.append(
            {
                "taojobs": r["taojobs"],
                "stageSeconds": r["stageSeconds"],
                "p95<=1s": r["latencyMs"]["p95"] <= TARGETS["p95_ms"],
                "rss<=250MB": r["operatorRssMb"]["peak"] <= TARGETS["rss_mb"],
                "noUnselectedLists": not r["operatorListsWithoutSelector"],
            }
        )
    per_job = [r["operatorRequestsPerStageJob"] for r in runs if not r["stageSeconds"]]
    bounded = len(per_job) < 2 or max(per_job) <= 1.25 * min(per_job)
    print(
        "\ntargets: "
        + "; ".join(
            f"N={v['taojobs']}/{v['stageSeconds']:g}s: p95<=1s {'met' if v['p95<=1s'] else 'MISSED'}, "
            f"RSS<=250MB {'met' if v['rss<=250MB'] else 'MISSED'}"
            for v in verdicts
        )
        + f"; requests per stage Job independent of N: {'yes' if bounded else 'NO'} ({', '.join(map(str, per_job))})"
    )
    figures = {
        "targets": {"p95LatencyMs": TARGETS["p95_ms"], "rssMb": TARGETS["rss_mb"]},
        "runs": runs,
        "verdicts": verdicts,
        "requestsPerStageJobIndependentOfN": bounded,
    }
    machine.finish("operator_scale", bench.results_path(args, "operator_scale"), figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

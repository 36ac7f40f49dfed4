"""Multi-task TAO on CPU: one TAOJob over two tasks, each with its own label-free scorer (examples/multitask).

    python benchmarks/multitask.py [--seeds 0,1,2] [--work DIR] [--fresh]

For each seed: `examples/multitask/prepare.py --seed S` (a tiny model pretrained on additions and on sorting
digits, and 3,000 unlabeled prompts of each, every one with its `task`), then `tao run` of the example's TAOJob
(2 rounds: a majority vote scores the additions, a verifier the sorts; each task a guard of the gate). Reads
each round's eval/report.json: each task's held-out accuracy (the label metric, reporting only) for the base
and for the champion after each round, and the gate's verdict. Prints a table, writes
benchmarks/results/multitask.json (~5 min per seed on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multitask"
TASKS = ("math", "sort")


def decompose(samples: list[dict[str, Any]], side: str) -> dict[str, Any]:
    """Where accuracy comes from, per task, for one side's greedy answers (`eval/samples.jsonl`). math: the
    share of answers by route (column / compensation / other) and the accuracy within each; sort: the share
    that wrote exactly the prompt's digits (any order), and of those the share in ascending order."""
    import re

    routes: dict[str, list[int]] = {"column": [0, 0], "compensation": [0, 0], "other": [0, 0]}
    same_digits = ordered = sorts = 0
    for row in samples:
        prompt, answer = row["prompt"], row[side]["answer"]
        ok = row[side].get("accuracy") == 1.0
        if "+" in prompt:
            first = answer.split(",")[0].split(";")[0]
            plus = first.split("=")[0].count("+") if "=" in first else 0
            route = routes[{2: "column", 1: "compensation"}.get(plus, "other")]
            route[0] += 1
            route[1] += ok
        else:
            sorts += 1
            digits = sorted(re.findall(r"\d", prompt.split("=")[0]))
            final = re.search(r";(\d+)$", answer)
            written = sorted(final.group(1)) if final else None
            same_digits += written == digits
            ordered += bool(written == digits and ok)
    adds = sum(n for n, _ in routes.values())
    return {
        "math": {
            name: {"share": round(n / adds, 3), "accuracy": round(k / n, 3) if n else None}
            for name, (n, k) in routes.items()
        },
        "sort": {
            "rightDigits": round(same_digits / sorts, 3),
            "orderedGivenRightDigits": round(ordered / same_digits, 3) if same_digits else None,
        },
    }


def run_seed(seed: int, work: Path, fresh: bool) -> dict[str, Any]:
    """Prepare (unless kept) and run the example for one seed; each task's accuracy per round."""
    folder = work / f"seed-{seed}"
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "work" / "base-model").is_dir():
        subprocess.run(
            [sys.executable, str(EXAMPLE / "prepare.py"), "--seed", str(seed), "--out", str(folder / "work")],
            check=True,
            env=os.environ | bench.OFFLINE,
        )
    for name in ("taojob.yaml", "verify_sort.py"):
        shutil.copy(EXAMPLE / name, folder / name)
    cmd = [sys.executable, "-m", "tao_operator.cli", "run", str(folder / "taojob.yaml")]
    subprocess.run(cmd, check=True, env=os.environ | bench.OFFLINE)
    run = folder / "work" / "runs" / "default" / "multitask" / "local"
    rounds = []
    for report_path in sorted(run.glob("round-*/eval/report.json")):
        report = json.loads(report_path.read_text())
        m = report["metrics"]
        side = "challenger" if report["promoted"] else "champion"
        rounds.append(
            {
                "round": report["round"],
                "promoted": report["promoted"],
                "reason": report["gate"]["reason"],
                "guards": {g["name"]: g["passed"] for g in report["gate"]["guards"]},
                "champion": {t: m[f"task.{t}.{side}.accuracy"] for t in TASKS},
                "challenger": {t: m[f"task.{t}.challenger.accuracy"] for t in TASKS},
                "prompts": {t: int(m[f"task.{t}.prompts"]) for t in TASKS},
            }
        )
    first = json.loads((run / "round-001" / "eval" / "report.json").read_text())["metrics"]
    read = lambda r: [json.loads(x) for x in (run / f"round-{r:03d}" / "eval" / "samples.jsonl").open()]  # noqa: E731
    last = rounds[-1]
    return {
        "seed": seed,
        "base": {t: first[f"task.{t}.champion.accuracy"] for t in TASKS},
        "rounds": rounds,
        "tuned": last["champion"],
        "decomposition": {
            "base": decompose(read(1), "champion"),
            "tuned": decompose(read(last["round"]), "challenger" if last["promoted"] else "champion"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = bench.parser(__doc__)
    p.add_argument("--seeds", type=bench.parse_ints, default=[0, 1, 2])
    p.add_argument("--work", type=Path, default=bench.DEFAULT_WORK / "multitask")
    p.add_argument("--fresh", action="store_true", help="prepare and run again even where a run is kept")
    p.add_argument("--json", "--out", dest="out", type=Path, default=bench.RESULTS / "multitask.json")
    args = p.parse_args(argv)
    machine = bench.Machine()
    machine.announce(f"seeds {args.seeds}; work {args.work}")
    seeds = [run_seed(s, args.work, args.fresh) for s in args.seeds]
    header = ["seed", *(f"{t} base" for t in TASKS), *(f"{t} tuned" for t in TASKS), "rounds promoted"]
    rows = [
        [
            str(s["seed"]),
            *(f"{s['base'][t]:.3f}" for t in TASKS),
            *(f"{s['tuned'][t]:.3f}" for t in TASKS),
            ", ".join(f"r{r['round']}:{r['reason']}" for r in s["rounds"]),
        ]
        for s in seeds
    ]
    print(bench.right_table(header, rows))
    for s in seeds:
        for when in ("base", "tuned"):
            d = s["decomposition"][when]
            print(
                f"seed {s['seed']} {when}: math routes "
                + ", ".join(f"{k} {v['share']:.2f}@{v['accuracy']}" for k, v in d["math"].items())
                + f"; sort: right digits {d['sort']['rightDigits']:.2f}, of those ordered "
                f"{d['sort']['orderedGivenRightDigits']}"
            )
    gains = {t: [s["tuned"][t] - s["base"][t] for s in seeds] for t in TASKS}
    summary = {
        t: {
            "base": round(statistics.mean(s["base"][t] for s in seeds), 3),
            "tuned": round(statistics.mean(s["tuned"][t] for s in seeds), 3),
            "minGain": round(min(gains[t]), 3),
        }
        for t in TASKS
    }
    for t, v in summary.items():
        print(
            f"{t}: base {v['base']:.3f} -> {v['tuned']:.3f} (mean of {len(seeds)} seeds); smallest gain "
            f"{v['minGain'] * 100:+.1f} points (target >= +10 on every seed: "
            f"{'met' if v['minGain'] >= 0.10 else 'MISSED'})"
        )
    machine.finish("multitask", args.out, {"seeds": seeds, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure a finished text-to-SQL run: stage times, scorer counters, and held-out execution accuracy.

Usage::

    python examples/text-to-sql/measure.py [RUN_DIR] [--database FILE]

RUN_DIR defaults to ``work/runs/default/text-to-sql/local`` beside this file (where ``tao run taojob.yaml``
writes). Everything comes from the run's own artifacts:

* ``round-NNN/results/*.json``: each stage's duration and counters (the sql scorer's ``executed``/``errors``,
  the judge's ``calls``, ``parseFailures``, ``httpErrors``, ``cacheHits``);
* ``round-NNN/eval/samples.jsonl``: the greedy answer of the champion and of the challenger to every
  held-out question;
* ``round-NNN/heldout/labels.jsonl``: the held-out ``reference_sql`` labels. The loop strips them
  (``prompts.labelFields``) and never reads them; this script is the only reader. Execution accuracy (the
  answer returns the same rows as the reference, as a multiset, floats to 6 places) is a report, not a gate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def answer_stats(database: Path, answers: list[str], references: list[str | None]) -> dict[str, float]:
    """Shares of answers that run, return rows, and return the reference's rows."""
    from tao_trainer.scorers.code import extract_code
    from tao_trainer.scorers.sql import run_query, same_result

    runs = rows = match = 0
    cache: dict[str, Any] = {}
    for answer, reference in zip(answers, references, strict=True):
        got = run_query(database, extract_code(answer, None, language="sql"), timeout=2.0, max_rows=10_000)
        runs += got.ok
        rows += bool(got.ok and got.rows)
        if got.ok and reference:
            if reference not in cache:
                cache[reference] = run_query(database, reference, timeout=2.0, max_rows=10_000)
            expected = cache[reference]
            match += bool(
                expected.ok and same_result(got.rows or [], expected.rows or [], order_matters=False)
            )
    n = max(len(answers), 1)
    return {"runs": runs / n, "rows": rows / n, "execAccuracy": match / n}


def measure(run_dir: Path, database: Path) -> dict[str, Any]:
    rounds = sorted(p for p in run_dir.glob("round-*") if p.is_dir())
    out: dict[str, Any] = {"rounds": []}
    total = 0.0
    for rdir in rounds:
        results = {p.stem: json.loads(p.read_text()) for p in (rdir / "results").glob("*.json")}
        durations = {stage: round(r.get("durationSeconds", 0.0), 1) for stage, r in results.items()}
        total += sum(durations.values())
        row: dict[str, Any] = {"round": int(rdir.name.split("-")[1]), "seconds": durations}
        if "score" in results:
            row["score"] = results["score"]["counts"]
        if "preflight" in results:
            row["preflight"] = results["preflight"]["counts"] | results["preflight"].get("metrics", {})
        if "train" in results:
            row["trainExamples"] = results["train"]["counts"].get("examples")
        samples = rdir / "eval" / "samples.jsonl"
        if samples.exists():
            held = _read_jsonl(samples)
            labels = {r["id"]: r.get("reference_sql") for r in _read_jsonl(rdir / "heldout" / "labels.jsonl")}
            refs = [labels.get(s["id"]) for s in held]
            row["heldOut"] = len(held)
            for side in ("champion", "challenger"):
                row[side] = answer_stats(database, [s[side]["answer"] for s in held], refs)
                row[side]["gateScore"] = results.get("evaluate", {}).get("metrics", {}).get(f"{side}.score")
            row["promoted"] = results.get("evaluate", {}).get("promoted")
        out["rounds"].append(row)
    out["stageSeconds"] = round(total, 1)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def print_report(report: dict[str, Any]) -> None:
    print(
        "round  stage seconds                                  sql executed/candidates  judge calls (parse failures, http errors, cache hits)  train examples"
    )
    for r in report["rounds"]:
        secs = " ".join(f"{k}={v}" for k, v in r["seconds"].items())
        s = r.get("score", {})
        sql = f"{s.get('sql.executed', 0)}/{s.get('candidates', 0)}" if s else "-"
        judge = (
            (
                f"{s.get('judge.calls', 0)} ({s.get('judge.parseFailures', 0)}, {s.get('judge.httpErrors', 0)}, "
                f"{s.get('judge.cacheHits', 0)})"
            )
            if s
            else "-"
        )
        print(f"{r['round']:<6} {secs:<46} {sql:<24} {judge:<53} {r.get('trainExamples', '-')}")
    print(f"stages took {report['stageSeconds']} s in all")
    print()
    print(
        "held-out greedy answers, champion -> challenger (execution accuracy reads the reference_sql labels; "
        "the loop never does)"
    )
    print("round  prompts  runs          returns rows   exec accuracy  gate score     promoted")
    for r in report["rounds"]:
        if "champion" not in r:
            continue
        a, b = r["champion"], r["challenger"]
        cells = [f"{_pct(a[k])} -> {_pct(b[k])}" for k in ("runs", "rows", "execAccuracy", "gateScore")]
        print(
            f"{r['round']:<6} {r['heldOut']:<8} " + " ".join(f"{c:<14}" for c in cells) + f" {r['promoted']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, default=HERE / "work/runs/default/text-to-sql/local")
    parser.add_argument("--database", type=Path, default=HERE / "work/shop.sqlite")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if not (args.run_dir / "spec.json").exists():
        print(f"{args.run_dir}: not a run directory (no spec.json)", file=sys.stderr)
        return 2
    report = measure(args.run_dir, args.database)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

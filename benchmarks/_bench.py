"""What every benchmark script shares: its common flags, the machine it ran on, tables, and the epilogue.

Only the standard library is imported (the scripts must import without matplotlib, and overhead.py's
child processes import this file before they time anything).

- flags: `--smoke` and `--json`/`--out` for every script that writes figures; the quality benchmarks'
  `--seeds`, `--work`, `--fresh`, `--no-plot` on top;
- `Machine`: the load average before and after, cores, wall time, and the two epilogues: the system
  benchmarks' (load average after, figures with a `machine` record, `figures: PATH`) and the quality
  benchmarks' (load average and wall, figures with the command and settings, `wrote PATH`, the plot);
- tables and numbers: right-aligned and left-aligned tables, percentiles, mean ± sd over seeds;
- `worktree`: an older commit checked out beside this one, for the `--compare REV` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_WORK = Path(tempfile.gettempdir()) / "tao-bench"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
QUALITY_NOTE = "(2 shared cores: timings move with it; accuracies do not)"


def process_cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, waited-for children's) CPU seconds, user + system, of a live process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


# ------------------------------------------------------------------------------------------------ flags


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A script's parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n")[0])


def add_output_flags(p: argparse.ArgumentParser, name: str, smoke_help: str) -> None:
    """`--smoke` (a tiny size, what tests/benchmarks runs) and `--json PATH` (alias `--out`, dest `out`)."""
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    p.add_argument(
        "--json",
        "--out",
        dest="out",
        type=Path,
        default=None,
        help=f"where the figures go (default: benchmarks/results/{name}.json; none with --smoke)",
    )


def results_path(args: argparse.Namespace, name: str) -> Path | None:
    """Where the figures go: --json, else benchmarks/results/NAME.json; nowhere for --smoke without --json."""
    return args.out or (None if args.smoke else RESULTS / f"{name}.json")


def quality_parser(doc: str | None, seeds: list[int]) -> argparse.ArgumentParser:
    """The quality benchmarks' parser, starting with `--seeds` (their own flags follow, then `quality_flags`)."""
    p = parser(doc)
    p.add_argument("--seeds", type=parse_ints, default=seeds)
    return p


def quality_flags(p: argparse.ArgumentParser, name: str, smoke_help: str, fresh_help: str) -> None:
    """`--work`, `--json`/`--out`, `--fresh`, `--smoke`, `--no-plot`: what both quality benchmarks take."""
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help=f"base models and runs, reused (default {DEFAULT_WORK}/full, or /smoke)",
    )
    p.add_argument(
        "--json",
        "--out",
        dest="out",
        type=Path,
        default=None,
        help=f"where to write the figures (default benchmarks/results/{name}.json; none with --smoke)",
    )
    p.add_argument("--fresh", action="store_true", help=fresh_help)
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    p.add_argument("--no-plot", action="store_true")


def quality_defaults(args: argparse.Namespace, name: str) -> None:
    """The work directory (per size) and the figures' path, once --smoke has been applied."""
    args.work = args.work or (DEFAULT_WORK / ("smoke" if args.smoke else "full"))
    args.out = results_path(args, name)


def parse_ints(text: str) -> list[int]:
    """
    >>> parse_ints("1, 2,4")
    [1, 2, 4]
    """
    return [int(x) for x in text.split(",") if x.strip()]


# ---------------------------------------------------------------------------------------- the machine


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (other jobs on the shared cores)."""
    return [round(x, 2) for x in os.getloadavg()]


class Machine:
    """The machine a benchmark ran on: cores, load average before and after, wall time; and the epilogue."""

    def __init__(self) -> None:
        self.before = os.getloadavg()
        self.started = time.monotonic()

    def announce(self, detail: str) -> None:
        """The system benchmarks' first line: cores, load average, and what runs."""
        print(
            f"machine: {os.cpu_count()} cores (shared), load average {self.before[0]:.2f}; {detail}",
            flush=True,
        )

    def finish(self, name: str, out: Path | None, figures: dict[str, Any], **machine: Any) -> None:
        """The system benchmarks' epilogue: load average after, then the figures (unless `out` is None) as
        {"benchmark", "machine": {cores, load averages, shared, **machine}, **figures}."""
        after = os.getloadavg()
        print(f"load average after: {after[0]:.2f}")
        if out is None:
            return
        record = {
            "cores": os.cpu_count(),
            "loadAverageBefore": round(self.before[0], 2),
            "loadAverageAfter": round(after[0], 2),
            "shared": True,
            **machine,
        }
        write_json(out, {"benchmark": name, "machine": record, **figures}, indent=1)
        print(f"figures: {out}")

    def announce_quality(self) -> None:
        """The quality benchmarks' first line (and their clock starts here)."""
        self.before = os.getloadavg()
        print(f"load average before: {[round(x, 2) for x in self.before]} {QUALITY_NOTE}")
        self.started = time.monotonic()

    def finish_quality(
        self,
        name: str,
        args: argparse.Namespace,
        argv: Sequence[str] | None,
        spec_changes: dict[str, Any],
        figures: dict[str, Any],
        plot: Callable[[Any, Path], None],
    ) -> int:
        """The quality benchmarks' epilogue: load average and wall time, then (unless args.out is None) the
        figures after the command, settings and TAOJob spec changes, and the plot of figures["summary"]."""
        wall = round(time.monotonic() - self.started, 1)
        after = load_average()
        print(f"load average after: {after}; wall {wall:.0f}s")
        if args.out is None:
            return 0
        record = {
            "benchmark": name,
            "command": " ".join(
                ["python", f"benchmarks/{name}.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "taojobSpecChanges": spec_changes,
            "wallSeconds": wall,
            "loadAverage": {"before": [round(x, 2) for x in self.before], "after": after},
            **figures,
        }
        write_json(args.out, record)
        print(f"wrote {args.out}")
        if not args.no_plot:
            plot(figures["summary"], args.out.with_suffix(".png"))
        return 0


def write_json(path: Path, data: Any, indent: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent) + "\n")


def proc_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------- tables


def right_table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> str:
    """Columns right-aligned under a header line (the system benchmarks' tables).

    >>> print(right_table(["a", "bb"], [["1", "2"], ["333", "4"]]))
      a  bb
      1   2
    333   4
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [indent + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += [indent + "  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned, a dashed line under the header (the quality benchmarks' tables).

    >>> print(format_table(["a", "bb"], [["1", "2"]]))
    a  bb
    -  --
    1  2
    """
    rows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-th percentile; nan for no values.

    >>> percentile([3.0, 1.0, 2.0], 50), percentile([1.0, 2.0, 3.0, 4.0], 95), percentile([], 50)
    (2.0, 4.0, nan)
    """
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def mean_sd(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, min and max over seeds (None values skipped).

    >>> mean_sd([0.5, 0.7, None])
    {'mean': 0.6, 'sd': 0.1414, 'min': 0.5, 'max': 0.7, 'n': 2}
    """
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {
        "mean": round(statistics.fmean(vals), 4),
        "sd": round(sd, 4),
        "min": round(min(vals), 4),
        "max": round(max(vals), 4),
        "n": len(vals),
    }


def fmt_ms(stat: dict[str, Any], digits: int = 3, signed: bool = False) -> str:
    """'.722±.031' (mean ± sample sd over seeds), '-' when nothing was measured.

    >>> fmt_ms(mean_sd([0.7, 0.75])), fmt_ms(mean_sd([30.0, 31.0]), 1), fmt_ms(mean_sd([0.1]), signed=True)
    ('.725±.035', '30.5±.7', '+.100')
    """
    if stat.get("mean") is None:
        return "-"
    sign = "+" if signed else ""
    m = _drop_zero(f"{stat['mean']:{sign}.{digits}f}")
    if stat.get("n", 0) < 2:
        return m
    sd = _drop_zero(f"{stat['sd']:.{digits}f}")
    return f"{m}±{sd}"


def _drop_zero(text: str) -> str:
    """'0.722' -> '.722', '-0.1' -> '-.1', '30.1' unchanged.

    >>> _drop_zero("0.722"), _drop_zero("-0.1"), _drop_zero("+0.05"), _drop_zero("30.1")
    ('.722', '-.1', '+.05', '30.1')
    """
    for prefix in ("0.", "-0.", "+0."):
        if text.startswith(prefix):
            return text[: len(prefix) - 2] + text[len(prefix) - 1 :]
    return text


def pyplot() -> Any:
    """matplotlib.pyplot on a file backend, or None (plots are optional: `pip install -e '.[bench]'`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping plots (pip install -e '.[bench]')")
        return None
    return plt


# ------------------------------------------------------------------------------------- an older commit


@contextlib.contextmanager
def worktree(rev: str, dest: Path) -> Iterator[Path]:
    """A git worktree of `rev` at `dest`, removed afterwards. Its `operator` and `trainer_image` folders on
    PYTHONPATH run that commit's code (they come before the editable install of this one)."""
    git = ["git", "-C", str(REPO), "worktree"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run([*git, "add", "--detach", str(dest), rev], check=True, **quiet)  # type: ignore[call-overload]
    try:
        yield dest
    finally:
        subprocess.run([*git, "remove", "--force", str(dest)], check=False, **quiet)  # type: ignore[call-overload]


def pythonpath(tree: Path) -> str:
    """The PYTHONPATH that runs a worktree's code."""
    return f"{tree / 'operator'}{os.pathsep}{tree / 'trainer_image'}"

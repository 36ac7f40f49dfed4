"""What `tao run` and `tao preflight` print: one line per stage, the preflight table, the final table per round.

Pure formatting of results and reports (dicts as written to report.json); no I/O.
"""

from __future__ import annotations

from typing import Any

from tao_trainer.contract import StageResult


def format_preflight(report: dict[str, Any]) -> str:
    """The preflight report as a short table: the whole sample, then each scorer."""
    lines = [
        f"{report['prompts']} prompts, {report['candidates']} candidates: informative share "
        f"{_fmt(report['informativeShare'])}, mean spread {_fmt(report['meanSpread'])}, score std "
        f"{_fmt(report['scoreStd'])}, unscored share {_fmt(report['unscoredShare'])}",
        "",
    ]
    header = ["scorer", "informative", "abstain", "mean", "greedy = vote"]
    rows = [header] + [
        [
            name,
            _fmt(v.get("informativeShare")),
            _fmt(v.get("abstainShare")),
            _fmt(v.get("meanScore")),
            _fmt(v.get("greedyAgreement")),
        ]
        for name, v in report["scorers"].items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if report.get("scorerCounters"):
        lines += ["", "counters: " + " ".join(f"{k}={v}" for k, v in report["scorerCounters"].items())]
    lines += ["", report["verdict"]]
    return "\n".join(lines)


def summarize(result: StageResult) -> str:
    """One line per stage for the terminal."""
    if result.stage in ("evaluate", "preflight"):
        return result.message
    parts = [f"{k}={v}" for k, v in result.counts.items() if v]
    parts += [f"{k}={v}" for k, v in result.metrics.items() if v is not None]
    return " ".join(parts)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def format_table(report: dict[str, Any]) -> str:
    """The final table: one row per round, champion -> challenger on held-out prompts."""
    metric_names = report.get("labelMetrics", [])
    header = ["round", "prompts", "candidates", "kept", "mean score", "held-out score"]
    header += [f"held-out {m}*" for m in metric_names] + ["promoted"]
    rows = [header]
    for r in report["rounds"]:
        champ, chall = r.get("champion", {}), r.get("challenger", {})
        row = [
            str(r["round"]),
            _fmt(r.get("prompts")),
            _fmt(r.get("candidates")),
            _fmt(r.get("trainExamples")),
            _fmt(r.get("meanCandidateScore")),
            f"{_fmt(champ.get('score'))} -> {_fmt(chall.get('score'))}",
        ]
        row += [f"{_fmt(champ.get(m))} -> {_fmt(chall.get(m))}" for m in metric_names]
        row.append("yes" if r.get("promoted") else "no")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if metric_names:
        lines.append(
            "* computed from label fields for reporting only; the gate reads one only when it is a guard "
            "(gate: true, marked '(labels)' in a verdict)"
        )
    if used := [
        (r["round"], describe_usage(r["usage"], report.get("currency")))
        for r in report["rounds"]
        if r.get("usage")
    ]:
        lines += ["", "used (tokens by endpoint, in/out; CPU- and GPU-seconds of the stages):"]
        lines += [f"  round {rnd}: {text}" for rnd, text in used]
    if teachers := [(r["round"], r["teacher"]) for r in report["rounds"] if r.get("teacher")]:
        lines += ["", "the teacher on the same held-out prompts (evaluation.teacherBaseline):"]
        lines += [
            f"  round {rnd}: score {_fmt(t.get('score'))}"
            + "".join(f", {m}* {_fmt(t.get(m))}" for m in metric_names)
            for rnd, t in teachers
        ]
    per_success = [(r["round"], describe_per_success(r, report.get("currency"))) for r in report["rounds"]]
    if per_success := [(rnd, text) for rnd, text in per_success if text]:
        lines += [
            "",
            "cost per success on the held-out prompts (prompt + answer tokens per successful answer):",
        ]
        lines += [f"  round {rnd}: {text}" for rnd, text in per_success]
    verdicts = [(r["round"], r["verdict"]) for r in report["rounds"] if r.get("verdict")]
    if verdicts:
        lines += [
            "",
            "gate (change of the label-free score, challenger - champion, paired per prompt, with its bound):",
        ]
        lines += [f"  round {rnd}: {verdict}" for rnd, verdict in verdicts]
    return "\n".join(lines)


def describe_usage(used: dict[str, Any], currency: str | None) -> str:
    """One round's use as a line: `teacher 1200/340 tokens, 95 CPU-s, 0 GPU-s, 0.42 USD`.

    >>> describe_usage({"tokens": {"teacher": {"input": 1200, "output": 340}}, "cpuSeconds": 95, "gpuSeconds": 0,
    ...                 "money": 0.4213}, "USD")
    'teacher 1200/340 tokens, 95 CPU-s, 0 GPU-s, 0.4213 USD'
    """
    parts = [
        f"{name} {t['input']}/{t['output']} tokens" for name, t in sorted(used.get("tokens", {}).items())
    ]
    parts += [f"{used.get('cpuSeconds', 0)} CPU-s", f"{used.get('gpuSeconds', 0)} GPU-s"]
    if used.get("money") is not None:
        parts.append(f"{used['money']:.4g} {currency or ''}".rstrip())
    return ", ".join(parts)


def describe_per_success(row: dict[str, Any], currency: str | None) -> str:
    """A round's cost per success by model, e.g. `champion 31.2 tokens (12 successes), teacher 40.1 ...`.

    >>> describe_per_success({"champion": {"successes": 4.0, "inputTokensPerSuccess": 8.0,
    ...     "outputTokensPerSuccess": 2.5}, "teacher": {"successes": 9.0, "inputTokensPerSuccess": 10.0,
    ...     "outputTokensPerSuccess": 4.0, "moneyPerSuccess": 0.00006}}, "USD")
    'champion 10.5 tokens (4 successes), teacher 14 tokens, 6e-05 USD (9 successes)'
    """
    parts = []
    for side in ("champion", "challenger", "teacher"):
        figures = row.get(side) or {}
        if "successes" not in figures:
            continue
        if figures.get("inputTokensPerSuccess") is None:
            parts.append(f"{side}: no success")
            continue
        tokens = figures["inputTokensPerSuccess"] + figures["outputTokensPerSuccess"]
        money = (
            f", {figures['moneyPerSuccess']:.3g} {currency or ''}".rstrip()
            if "moneyPerSuccess" in figures
            else ""
        )
        parts.append(f"{side} {tokens:g} tokens{money} ({figures['successes']:g} successes)")
    return ", ".join(parts)


def describe_champion(report: dict[str, Any]) -> str:
    champ = report["champion"]
    if champ["round"] == 0:
        return f"champion: the base model (no round beat it): {champ['uri']}"
    line = f"champion: round {champ['round']} model at {champ['uri']}"
    exported = [
        row["exportUri"] for row in report["rounds"] if row["round"] == champ["round"] and "exportUri" in row
    ]
    return line + (f"\nexported to {exported[0]}" if exported else "")

"""Tuned accuracy vs tuning compute (candidates per prompt), with the tuned model's inference cost beside it.

    python benchmarks/compute_scaling.py [--seeds 0] [--candidates 1,2,4,8,16] [--fresh]
    python benchmarks/compute_scaling.py --smoke        # seconds-scale plumbing check (tests)

One TAO round of the arithmetic example (`tao run` of examples/arithmetic/taojob.yaml, majority vote over
the final answers, SFT on the candidates agreeing with a >= 50% majority) for each N candidates per prompt,
on the same 1600 round prompts and the same base model (`prepare.py --seed S`, shared with
tao_vs_labels.py). Only `generation.candidates` changes; the gate's reference samples stay at 8 per model
(`evaluation.referenceSamples`), so the promotion decision is judged alike for every N.

What N means for the vote: N=1 keeps every sample (a group of one is its own majority: plain self-training
on the model's own samples, a control); N=2 keeps a pair that agrees, and when they disagree the first
sample (a 1-1 tie reaches the 0.5 share; the product's tie rule picks the first answer); larger N
approaches the majority-of-N the base can reach.

Reported per N: held-out greedy accuracy after the round (`rounds[0].accuracy` in report.json; label-based,
reporting only), its split into route mix and within-route skill, the routes of the greedy answers, the
tuning compute (candidate tokens generated), what the round trained on, and the inference cost of the
tuned model: mean tokens per greedy answer on the held-out set (round-001/eval/samples.jsonl). Writes
benchmarks/results/compute_scaling.json and, with matplotlib, compute_scaling.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as bench  # noqa: E402
import _common as c  # noqa: E402

REFERENCE_SAMPLES = 8


def spec_for(n: int, smoke: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "rounds": 1,
        "generation": {"candidates": n},
        "evaluation": {"referenceSamples": REFERENCE_SAMPLES},
    }
    if smoke:
        spec = c.deep_merge(
            spec,
            {
                "prompts": {"maxPerRound": 16, "heldOutFraction": 0.2},
                "training": {"epochs": 1, "batchSize": 8, "sft": {"minScore": 0.0}},
                "evaluation": {"maxPrompts": 12, "minImprovement": -10.0, "referenceSamples": 2},
            },
        )
    return spec


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    work = args.work / "compute_scaling" / f"seed-{seed}"
    base_dir = c.base_dir(args.work, seed)
    info = c.prepare_base(seed, base_dir, smoke=args.smoke)
    tok = c.load_tokenizer(base_dir / "base-model")
    out: dict[str, Any] = {"seed": seed, "prepare": info, "byCandidates": {}}
    for n in args.candidates:
        result = c.run_variant(
            f"scale-n{n:02d}", base_dir, work, spec_for(n, args.smoke), fresh=args.fresh, tokenizer=tok
        )
        base = result.pop("base")
        out.setdefault("base", base["analysis"])
        result["decomposition"] = c.decompose(out["base"], result["analysis"])
        result["candidateTokens"] = result["rounds"][0]["candidateTokens"]
        result["generateSeconds"] = result["stageSeconds"].get("round-001/generate")
        out["byCandidates"][str(n)] = result
        c.log(f"  N={n}: accuracy {result['accuracy']} (seconds {result['seconds']})")
    return out


def summarize(seeds: list[dict[str, Any]], candidates: list[int]) -> dict[str, Any]:
    rows: dict[str, Any] = {
        "base": {
            "accuracy": bench.mean_sd(s["base"]["accuracy"] for s in seeds),
            "tokensPerAnswer": bench.mean_sd(s["base"]["tokensPerAnswer"] for s in seeds),
            "routes": {
                r: {
                    "share": bench.mean_sd(s["base"]["routes"][r]["share"] for s in seeds),
                    "accuracy": bench.mean_sd(s["base"]["routes"][r]["accuracy"] for s in seeds),
                }
                for r in c.ROUTES
            },
        }
    }
    for n in candidates:
        ms = [s["byCandidates"][str(n)] for s in seeds]
        td = [m.get("trainData") or {} for m in ms]
        rows[str(n)] = {
            "candidates": n,
            "accuracy": bench.mean_sd(m["accuracy"] for m in ms),
            "change": bench.mean_sd(m["decomposition"]["change"] for m in ms),
            "mix": bench.mean_sd(m["decomposition"]["mix"] for m in ms),
            "skill": bench.mean_sd(m["decomposition"]["skill"] for m in ms),
            "routes": {
                r: {
                    "share": bench.mean_sd(m["analysis"]["routes"][r]["share"] for m in ms),
                    "accuracy": bench.mean_sd(m["analysis"]["routes"][r]["accuracy"] for m in ms),
                }
                for r in c.ROUTES
            },
            "tokensPerAnswer": bench.mean_sd(m["analysis"]["tokensPerAnswer"] for m in ms),
            "candidateTokens": bench.mean_sd(m["candidateTokens"] for m in ms),
            "trainExamples": bench.mean_sd(m["rounds"][0]["trainExamples"] for m in ms),
            "trainColumnShare": bench.mean_sd(t.get("columnShare") for t in td),
            "trainCorrectShare": bench.mean_sd(t.get("correctShare") for t in td),
            "promoted": sum(bool(m["promotedAll"]) for m in ms),
            "seeds": len(ms),
            "seconds": bench.mean_sd(m["seconds"] for m in ms),
            "generateSeconds": bench.mean_sd(m["generateSeconds"] for m in ms),
        }
    return rows


def route(s: dict[str, Any], r: str) -> str:
    return f"{bench.fmt_ms(s['routes'][r]['share'], 2)} ({bench.fmt_ms(s['routes'][r]['accuracy'], 2)})"


def table(summary: dict[str, Any]) -> str:
    rows = []
    b = summary["base"]
    rows.append(
        [
            "base",
            "-",
            "-",
            "-",
            bench.fmt_ms(b["accuracy"]),
            "-",
            "-",
            "-",
            route(b, "column"),
            route(b, "compensation"),
            bench.fmt_ms(b["tokensPerAnswer"], 1),
            "-",
            "-",
        ]
    )
    for key, s in summary.items():
        if key == "base":
            continue
        k = s["candidateTokens"]["mean"]
        rows.append(
            [
                str(s["candidates"]),
                f"{k / 1e3:.0f}k" if k is not None else "-",
                bench.fmt_ms(s["trainExamples"], 0),
                f"{bench.fmt_ms(s['trainColumnShare'], 2)} / {bench.fmt_ms(s['trainCorrectShare'], 2)}",
                bench.fmt_ms(s["accuracy"]),
                bench.fmt_ms(s["change"], signed=True),
                bench.fmt_ms(s["mix"], signed=True),
                bench.fmt_ms(s["skill"], signed=True),
                route(s, "column"),
                route(s, "compensation"),
                bench.fmt_ms(s["tokensPerAnswer"], 1),
                f"{s['promoted']}/{s['seeds']}",
                bench.fmt_ms(s["seconds"], 0),
            ]
        )
    return bench.format_table(
        [
            "N",
            "candidate tokens",
            "kept",
            "kept: column / correct",
            "accuracy",
            "change",
            "  mix",
            "  skill",
            "column share (acc)",
            "compensation share (acc)",
            "tokens/answer",
            "promoted",
            "seconds",
        ],
        rows,
    )


LEGEND = """\
N: candidates sampled per prompt (T=1.0) on the same round prompts. candidate tokens: tuning compute spent on
sampling (tokens of every candidate). kept: training examples (candidates agreeing with a >= 50% majority);
column / correct: their share in the column route / with the right answer (labels read for this report only).
accuracy: held-out greedy exact match after one round (label-based, reporting only); change = mix + skill as in
tao_vs_labels.py (mix: route shares moved at base per-route accuracy; skill: per-route accuracy moved).
tokens/answer: mean tokens per greedy held-out answer of the tuned model: its inference cost, one answer per
prompt, whatever N was spent in tuning. seconds: the round's stage processes (generation grows with N)."""


def plot(summary: dict[str, Any], path: Path) -> None:
    plt = bench.pyplot()
    if plt is None:
        return
    keys = [k for k in summary if k != "base"]
    ns = [summary[k]["candidates"] for k in keys]
    acc = [summary[k]["accuracy"]["mean"] for k in keys]
    err = [summary[k]["accuracy"]["sd"] or 0 for k in keys]
    toks = [summary[k]["tokensPerAnswer"]["mean"] for k in keys]
    col = [summary[k]["routes"]["column"]["share"]["mean"] for k in keys]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.errorbar(
        ns, acc, yerr=err, fmt="-o", capsize=3, color="tab:blue", label="held-out accuracy after 1 round"
    )
    ax.plot(ns, col, "--s", color="tab:green", alpha=0.7, label="column-route share of greedy answers")
    base = summary["base"]["accuracy"]["mean"]
    if base is not None:
        ax.axhline(base, color="tab:gray", ls=":", label=f"base accuracy {base:.3f}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("candidates per prompt in tuning (N)")
    ax.set_ylabel("share of held-out prompts")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(ns, toks, "-^", color="tab:orange", label="tokens per greedy answer (inference cost)")
    base_tok = summary["base"]["tokensPerAnswer"]["mean"]
    if base_tok is not None:
        ax2.axhline(base_tok, color="tab:orange", ls=":", alpha=0.6)
    ax2.set_ylabel("tokens per greedy answer")
    top = max([t for t in toks if t is not None] + [base_tok or 0]) * 1.6 or 1.0
    ax2.set_ylim(0, top)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
    ax.set_title("Tuning compute vs held-out accuracy (majority vote, 1 round)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = bench.quality_parser(__doc__, seeds=[0])
    p.add_argument("--candidates", type=bench.parse_ints, default=[1, 2, 4, 8, 16])
    bench.quality_flags(
        p,
        "compute_scaling",
        smoke_help="tiny: a barely trained base, a few prompts, N=2, 1 seed",
        fresh_help="re-run TAO rounds whose runs exist in --work",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds = args.seeds[:1]
        if args.candidates == [1, 2, 4, 8, 16]:
            args.candidates = [2]
    bench.quality_defaults(args, "compute_scaling")
    machine = bench.Machine()
    machine.announce_quality()
    seeds = [run_seed(seed, args) for seed in args.seeds]
    summary = summarize(seeds, args.candidates)
    held = seeds[0]["base"]["n"]
    print(
        f"\ncompute scaling, seeds {','.join(map(str, args.seeds))}: {held} held-out prompts, 1 round, "
        f"majority vote, SFT (mean ± sample sd over seeds where more than one)"
    )
    print(table(summary))
    print(LEGEND)
    spec_changes = {str(n): spec_for(n, args.smoke) for n in args.candidates}
    figures = {"summary": summary, "seeds": seeds}
    return machine.finish_quality("compute_scaling", args, argv, spec_changes, figures, plot)


if __name__ == "__main__":
    raise SystemExit(main())

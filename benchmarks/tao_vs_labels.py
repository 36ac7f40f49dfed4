"""TAO without labels vs supervised fine-tuning on labels, in miniature (the arithmetic example, CPU).

    python benchmarks/tao_vs_labels.py [--seeds 0,1,2] [--labels 200,1600] [--rounds 1] [--fresh]
    python benchmarks/tao_vs_labels.py --smoke          # seconds-scale plumbing check (tests)

For each seed, `examples/arithmetic/prepare.py --seed S` builds a base model (pretrained until held-out greedy
exact match reaches .40), then every method starts from that base and is measured on the same held-out
prompts (the product's hash split, the first `evaluation.maxPrompts` of them), greedily, by exact match of
the final answer against the prompt's `answer` label (reporting only):

- ``base``: the base model;
- ``sft-labels-N``: plain TRL SFT on N labeled prompts of the round-1 pool with gold worked solutions in
  the column route (a labeled dataset for this task: a correct worked solution per prompt, written the
  reliable way, as prepare.py can generate it), same recipe as TAO's SFT (lr, schedule, epochs, batch);
- ``sft-labels-mixed-N``: the same with gold solutions in either route, 50/50, as in pretraining (labels
  that do not also pick the strategy);
- ``tao-majority``: `tao run` of the example's TAOJob (majority vote over 8 samples, SFT on the kept);
- ``tao-verifier``: the scorer is a python rule that recomputes a+b from the prompt (a task rule, no
  label; on this task it is a perfect checker);
- ``tao-dpo``: majority scores, DPO on the best vs worst candidate of each prompt (training.dpo's defaults:
  a likelihood term on the chosen answer);
- ``tao-grpo``: majority vote as the online reward of TRL's GRPO (training.grpo's defaults: the vote is taken
  over the round's generated candidates, a KL term to the starting model), lr 5e-5, one epoch, batch 64;
- ``tao-grpo-verifier``: the verifier as GRPO's reward, same settings.

TAO variants run through the real product: a TAOJob per variant (the example's, with scoring/training
changed) and `tao run` as a subprocess; accuracy is read from report.json (`base.accuracy`,
`rounds[].accuracy`). Routes are read from each round's eval/samples.jsonl (greedy answers of champion
and challenger): the share of answers per route and the accuracy within each route, and a split of the
change into route mix (strategy chosen / format learned) and within-route skill. Prints a per-seed table
and a summary (mean ± sample sd over seeds), writes benchmarks/results/tao_vs_labels.json and, with
matplotlib, tao_vs_labels.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as bench  # noqa: E402
import _common as c  # noqa: E402
import _labeled_sft as labeled  # noqa: E402

TAO_METHODS = ("tao-majority", "tao-verifier", "tao-dpo", "tao-grpo", "tao-grpo-verifier")
DESCRIPTIONS = {
    "base": ("base model", "-"),
    "tao-majority": ("TAO: majority vote, SFT on kept", "none"),
    "tao-verifier": ("TAO: a+b verifier (rule), SFT on kept", "none"),
    "tao-dpo": ("TAO: majority vote, DPO best vs worst", "none"),
    "tao-grpo": ("TAO: majority vote as GRPO reward", "none"),
    "tao-grpo-verifier": ("TAO: a+b verifier as GRPO reward", "none"),
}


def method_specs(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each TAO variant's changes to the example's TAOJob spec."""
    specs: dict[str, dict[str, Any]] = {
        "tao-majority": {},
        "tao-verifier": c.VERIFIER_SCORING,
        # DPO and GRPO keep the shipped defaults of training.dpo and training.grpo (docs/training.md).
        "tao-dpo": {"training": {"method": "dpo", "learningRate": args.dpo_lr, "epochs": args.dpo_epochs}},
        # GRPO: 8 samples of a prompt form a group; batch 64 = 8 prompts per step.
        "tao-grpo": {
            "prompts": {"maxPerRound": args.grpo_prompts},
            "training": {
                "method": "grpo",
                "learningRate": args.grpo_lr,
                "epochs": 1,
                "batchSize": args.grpo_batch,
                "lrScheduler": "constant_with_warmup",
            },
        },
    }
    specs["tao-grpo-verifier"] = c.deep_merge(specs["tao-grpo"], specs["tao-verifier"])
    specs = {name: c.deep_merge({"rounds": args.rounds}, spec) for name, spec in specs.items()}
    if args.smoke:  # every code path, seconds per stage: a few prompts, thresholds that always keep something
        smoke = {
            "prompts": {"maxPerRound": 16, "heldOutFraction": 0.2},
            "generation": {"candidates": 4},
            "training": {"epochs": 1, "batchSize": 8, "sft": {"minScore": 0.0}, "dpo": {"minMargin": 0.0}},
            "evaluation": {"maxPrompts": 12, "minImprovement": -10.0},
        }
        specs = {name: c.deep_merge(spec, smoke) for name, spec in specs.items()}
        for grpo in ("tao-grpo", "tao-grpo-verifier"):
            specs[grpo] = c.deep_merge(specs[grpo], {"prompts": {"maxPerRound": 4}})
    return specs


# ------------------------------------------------------------------------------------ one seed


def run_seed(seed: int, args: argparse.Namespace, specs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    work = args.work / "tao_vs_labels" / f"seed-{seed}"
    base_dir = c.base_dir(args.work, seed)
    info = c.prepare_base(seed, base_dir, smoke=args.smoke)
    tok = c.load_tokenizer(base_dir / "base-model")
    out: dict[str, Any] = {"seed": seed, "prepare": info, "methods": {}}
    base_analysis: dict[str, Any] | None = None
    held_prompts: list[str] | None = None

    for name in [m for m in TAO_METHODS if m in args.methods]:
        result = c.run_variant(name, base_dir, work, specs[name], fresh=args.fresh, tokenizer=tok)
        base = result.pop("base")
        if base_analysis is None:
            base_analysis, held_prompts = base["analysis"], base["prompts"]
        elif base["analysis"]["accuracy"] != base_analysis["accuracy"]:
            c.log(
                f"warning: {name}: base accuracy {base['analysis']['accuracy']} != {base_analysis['accuracy']}"
            )
        out["methods"][name] = result

    # The labeled baselines: same held-out prompts (checked against the TAO runs' own split).
    job = c.base_job()
    job["spec"] = c.deep_merge(job["spec"], specs["tao-majority"])
    train_prompts, held = labeled.split_like_the_product(base_dir, job)
    if held_prompts is not None and [r.prompt for r in held] != held_prompts:
        raise RuntimeError("the labeled baselines' held-out prompts differ from the TAO runs'")
    labels = [r.fields["answer"] for r in held]
    if base_analysis is None:  # no TAO method selected: evaluate the base here
        base_analysis = labeled.greedy_analysis(base_dir / "base-model", held, job, tok)
    out["methods"]["base"] = {
        "accuracy": base_analysis["accuracy"],
        "analysis": base_analysis,
        "perRound": [base_analysis["accuracy"]],
    }
    label_runs = [(n, "column") for n in args.labels] + [(n, "mixed") for n in args.mixed_labels]
    for n, style in label_runs:
        name = f"sft-labels-{n}" if style == "column" else f"sft-labels-mixed-{n}"
        c.log(f"seed {seed}: {name}: TRL SFT on {n} gold {style}-route solutions")
        res = labeled.sft_on_labels(
            base_dir, work / "labels" / name, job, train_prompts, held, n, style, seed
        )
        analysis = c.analyze(res["answers"], labels, tok)
        c.log(f"  {name}: accuracy {analysis['accuracy']} ({res['seconds']}s, {res['steps']} steps)")
        out["methods"][name] = {
            "accuracy": analysis["accuracy"],
            "analysis": analysis,
            "perRound": [base_analysis["accuracy"], analysis["accuracy"]],
            "trainData": res["trainData"],
            "seconds": res["seconds"],
            "steps": res["steps"],
        }
    for m in out["methods"].values():
        m["decomposition"] = c.decompose(base_analysis, m["analysis"])
    return out


# ------------------------------------------------------------------------------------ tables


def method_order(names: list[str]) -> list[str]:
    def by_n(prefix: str) -> list[str]:
        return sorted(
            (n for n in names if n.startswith(prefix) and n[len(prefix) :].isdigit()),
            key=lambda n: int(n[len(prefix) :]),
        )

    first = ["base", *by_n("sft-labels-"), *by_n("sft-labels-mixed-")]
    return [n for n in first if n in names] + [n for n in TAO_METHODS if n in names]


def describe(name: str) -> tuple[str, str]:
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    n = name.rsplit("-", 1)[1]
    if "mixed" in name:
        return f"SFT on {n} gold solutions, either route", n
    return f"SFT on {n} gold column-route solutions", n


def route_cell(analysis: dict[str, Any], route: str) -> str:
    r = analysis["routes"][route]
    acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.2f}".replace("0.", ".")
    return f"{r['share']:.2f} ({acc})".replace("0.", ".", 1)


def seed_heading(seed_out: dict[str, Any]) -> str:
    prepare = seed_out["prepare"]
    return f"\nseed {seed_out['seed']} (prepare {prepare['seconds']}s; {prepare.get('summary') or ''})"


def seed_table(seed_out: dict[str, Any]) -> str:
    rows = []
    for name in method_order(list(seed_out["methods"])):
        m = seed_out["methods"][name]
        a = m["analysis"]
        rows.append(
            [
                name,
                f"{m['accuracy']:.3f}",
                route_cell(a, "column"),
                route_cell(a, "compensation"),
                f"{a['routes']['other']['share']:.2f}",
                f"{a['tokensPerAnswer']:.1f}",
                {True: "yes", False: "no"}.get(m.get("promotedAll"), "-"),
                f"{m.get('seconds', 0):.0f}",
            ]
        )
    return bench.format_table(
        [
            "method",
            "accuracy",
            "column share (acc)",
            "compensation share (acc)",
            "other",
            "tokens/answer",
            "promoted",
            "seconds",
        ],
        rows,
    )


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    names = method_order(sorted({n for s in seeds for n in s["methods"]}))
    summary: dict[str, Any] = {}
    for name in names:
        ms = [s["methods"][name] for s in seeds if name in s["methods"]]

        def stat(f: Any, ms: list[dict[str, Any]] = ms) -> dict[str, Any]:
            return bench.mean_sd(f(m) for m in ms)

        rounds = max(len(m["perRound"]) for m in ms)
        td = [m.get("trainData") or {} for m in ms]
        summary[name] = {
            "description": describe(name)[0],
            "labelsUsedInTraining": describe(name)[1],
            "seeds": len(ms),
            "accuracy": stat(lambda m: m["accuracy"]),
            "change": stat(lambda m: m["decomposition"]["change"]),
            "mix": stat(lambda m: m["decomposition"]["mix"]),
            "skill": stat(lambda m: m["decomposition"]["skill"]),
            "routes": {
                r: {
                    "share": stat(lambda m, r=r: m["analysis"]["routes"][r]["share"]),
                    "accuracy": stat(lambda m, r=r: m["analysis"]["routes"][r]["accuracy"]),
                }
                for r in c.ROUTES
            },
            "tokensPerAnswer": stat(lambda m: m["analysis"]["tokensPerAnswer"]),
            "perRound": [
                bench.mean_sd(m["perRound"][i] for m in ms if len(m["perRound"]) > i) for i in range(rounds)
            ],
            "promoted": sum(bool(m.get("promotedAll")) for m in ms) if "promotedAll" in ms[0] else None,
            "trainColumnShare": bench.mean_sd(_train_share(t, "columnShare") for t in td),
            "trainCorrectShare": bench.mean_sd(_train_share(t, "correctShare") for t in td),
            "seconds": stat(lambda m: m.get("seconds")),
        }
    return summary


def _train_share(t: dict[str, Any], key: str) -> float | None:
    if "chosen" in t:  # dpo: what the model was pushed toward
        return t["chosen"].get(key)
    return t.get(key)


def summary_table(summary: dict[str, Any]) -> str:
    rows = []
    for name, s in summary.items():
        rows.append(
            [
                name,
                s["labelsUsedInTraining"],
                bench.fmt_ms(s["accuracy"]),
                "-" if name == "base" else bench.fmt_ms(s["change"], signed=True),
                "-" if name == "base" else bench.fmt_ms(s["mix"], signed=True),
                "-" if name == "base" else bench.fmt_ms(s["skill"], signed=True),
                f"{bench.fmt_ms(s['routes']['column']['share'], 2)} ({bench.fmt_ms(s['routes']['column']['accuracy'], 2)})",
                f"{bench.fmt_ms(s['routes']['compensation']['share'], 2)} ({bench.fmt_ms(s['routes']['compensation']['accuracy'], 2)})",
                bench.fmt_ms(s["routes"]["other"]["share"], 2),
                bench.fmt_ms(s["tokensPerAnswer"], 1),
                f"{bench.fmt_ms(s['trainColumnShare'], 2)} / {bench.fmt_ms(s['trainCorrectShare'], 2)}",
                "-" if s["promoted"] is None else f"{s['promoted']}/{s['seeds']}",
                bench.fmt_ms(s["seconds"], 0),
            ]
        )
    return bench.format_table(
        [
            "method",
            "labels",
            "accuracy",
            "change",
            "  mix",
            "  skill",
            "column share (acc)",
            "compensation share (acc)",
            "other",
            "tokens",
            "trained on: column / correct",
            "promoted",
            "seconds",
        ],
        rows,
    )


LEGEND = """\
accuracy: held-out greedy exact match (mean ± sample sd over seeds), from the `answer` label, reporting only.
change = mix + skill. mix: route shares moved, each route valued at its base accuracy (a strategy chosen; a
move out of `other`, malformed answers, is a format learned). skill: accuracy within each route moved,
weighted by the tuned shares (arithmetic done better). column/compensation share (acc): share of greedy
answers taking the route (accuracy within it). tokens: mean tokens per greedy answer (inference cost).
trained on: share of training completions in the column route / with the right final answer (judged with
labels for this report only; dpo: the chosen side; grpo: online, not recorded). promoted: seeds whose every
round passed the product's label-free gate."""


def plot(summary: dict[str, Any], path: Path) -> None:
    plt = bench.pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, s in summary.items():
        if name == "base":
            continue
        ys = [p["mean"] for p in s["perRound"]]
        es = [p["sd"] or 0 for p in s["perRound"]]
        style = "--o" if name.startswith("sft-labels") else "-o"
        ax1.errorbar(range(len(ys)), ys, yerr=es, fmt=style, capsize=3, label=name)
    rounds = max(len(s["perRound"]) for s in summary.values())
    ax1.set_xticks(range(rounds))
    ax1.set_ylim(0, 1.02)
    if "base" in summary and summary["base"]["accuracy"]["mean"] is not None:
        ax1.axhline(summary["base"]["accuracy"]["mean"], color="tab:gray", ls=":", label="base")
    ax1.set_xlabel("round (0 = base model)")
    ax1.set_ylabel("held-out accuracy (greedy)")
    ax1.set_title("Accuracy per round (mean ± sd over seeds)")
    ax1.legend(fontsize=7, ncol=2, loc="upper left")
    ax1.grid(alpha=0.3)
    names = list(summary)
    bottom = [0.0] * len(names)
    colors = {"column": "tab:green", "compensation": "tab:red", "other": "tab:gray"}
    for route in c.ROUTES:
        shares = [summary[n]["routes"][route]["share"]["mean"] or 0 for n in names]
        bars = ax2.bar(range(len(names)), shares, bottom=bottom, color=colors[route], label=f"{route} route")
        for bar, n in zip(bars, names, strict=True):
            acc = summary[n]["routes"][route]["accuracy"]["mean"]
            if bar.get_height() > 0.06 and acc is not None:
                ax2.text(
                    bar.get_x() + bar.get_width() / 2,
                    bar.get_y() + bar.get_height() / 2,
                    f"{acc:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    ax2.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax2.set_ylabel("share of held-out greedy answers")
    ax2.set_title("Route taken (label inside: accuracy within the route)")
    ax2.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def report_only(path: Path, plot_it: bool) -> int:
    """Tables and plot again from a results file (its summary recomputed from the per-seed data)."""
    import json

    data = json.loads(path.read_text())
    for seed_out in data["seeds"]:
        print(seed_heading(seed_out))
        print(seed_table(seed_out))
    data["summary"] = summarize(data["seeds"])
    print(
        f"\nsummary over seeds {','.join(str(s['seed']) for s in data['seeds'])}: held-out prompts "
        f"{data['seeds'][0]['methods']['base']['analysis']['n']}, rounds {data['settings']['rounds']}"
    )
    print(summary_table(data["summary"]))
    print(LEGEND)
    bench.write_json(path, data)
    if plot_it:
        plot(data["summary"], path.with_suffix(".png"))
    return 0


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = bench.quality_parser(__doc__, seeds=[0, 1, 2])
    p.add_argument(
        "--labels", type=bench.parse_ints, default=[200, 1600], help="N of the column-route labeled SFT runs"
    )
    p.add_argument(
        "--mixed-labels", type=bench.parse_ints, default=[1600], help="N of the either-route labeled SFT runs"
    )
    p.add_argument(
        "--methods",
        type=lambda s: s.split(","),
        default=None,
        help=f"TAO variants to run (default: all: {','.join(TAO_METHODS)}; with --smoke: tao-majority)",
    )
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--dpo-lr", type=float, default=5e-5)
    p.add_argument("--dpo-epochs", type=float, default=2)
    p.add_argument("--grpo-prompts", type=int, default=1600, help="round prompts for GRPO (as the others)")
    p.add_argument("--grpo-lr", type=float, default=5e-5)
    p.add_argument("--grpo-batch", type=int, default=64, help="completions per GRPO step (a multiple of 8)")
    bench.quality_flags(
        p,
        "tao_vs_labels",
        smoke_help="tiny: a barely trained base, a few prompts, 1 seed",
        fresh_help="re-run TAO variants whose runs exist in --work",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="re-print the tables and re-plot from the --json file of an earlier run (no training)",
    )
    args = p.parse_args(argv)
    if args.report_only:
        return report_only(args.out or bench.RESULTS / "tao_vs_labels.json", plot_it=not args.no_plot)
    if args.smoke:
        args.seeds = args.seeds[:1]
        args.labels, args.mixed_labels = [8], []
        args.methods = args.methods or ["tao-majority"]
    args.methods = args.methods or list(TAO_METHODS)
    if unknown := set(args.methods) - set(TAO_METHODS):
        p.error(f"unknown methods {sorted(unknown)}; choose from {','.join(TAO_METHODS)}")
    bench.quality_defaults(args, "tao_vs_labels")
    machine = bench.Machine()
    machine.announce_quality()
    specs = method_specs(args)
    seeds = []
    for seed in args.seeds:
        seed_out = run_seed(seed, args, specs)
        seeds.append(seed_out)
        print(seed_heading(seed_out))
        print(seed_table(seed_out))
    summary = summarize(seeds)
    print(
        f"\nsummary over seeds {','.join(map(str, args.seeds))}: held-out prompts "
        f"{seeds[0]['methods']['base']['analysis']['n']}, rounds {args.rounds}"
    )
    print(summary_table(summary))
    print(LEGEND)
    figures = {"summary": summary, "seeds": seeds}
    return machine.finish_quality("tao_vs_labels", args, argv, specs, figures, plot)


if __name__ == "__main__":
    raise SystemExit(main())

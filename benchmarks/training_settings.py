"""Which GRPO and DPO settings matter on the arithmetic task: one seed, one `tao run` round per variant.

    python benchmarks/training_settings.py [--seed 1] [--variants NAME,...]
    python benchmarks/training_settings.py --smoke          # seconds-scale plumbing check (tests)

The base and prompts are tao_vs_labels.py's for the seed (`examples/arithmetic/prepare.py --seed S`, shared in
--work). Each variant is the example's TAOJob with its training changed (below, every setting spelled out, so a
changed default does not change a row); accuracy is greedy exact match on the same 500 held-out prompts, split
into route mix and skill within a route as in tao_vs_labels.py. Seed 1 is the seed on which GRPO with a
majority reward collapsed hardest in the first benchmark (.386 -> .266). One seed: a difference of a few points
between two rows is within seed-to-seed noise (tao_vs_labels.py measures the chosen settings over 3 seeds).

Variants (GRPO: batch 64 = 8 prompts of 8 completions per step, one epoch, constant lr after warmup):
- ``grpo-*``: majority vote as GRPO's reward; `votes` group (the vote of the 8 completions of a GRPO group)
  or candidates (the vote of the generate stage's samples of the round's starting model, `training.grpo.votes`);
  `beta` the KL coefficient to the starting model; lr; prompts per round; 16 votes for groups of 8; groups of
  16 (`g16`: 4 prompts per step);
- ``grpo-verifier-*``: the a+b verifier as GRPO's reward;
- ``dpo-*``: majority scores, DPO best vs worst (lr 5e-5, 2 epochs), with and without the likelihood term on the
  chosen answer (`training.dpo.sftWeight`).
Prints a table and writes benchmarks/results/training_settings.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as bench  # noqa: E402
import _common as c  # noqa: E402


def _grpo(
    votes: str, beta: float, lr: float, prompts: int, candidates: int = 8, group: int = 8
) -> dict[str, Any]:
    return {
        "prompts": {"maxPerRound": prompts},
        "generation": {"candidates": candidates},
        "training": {
            "method": "grpo",
            "learningRate": lr,
            "epochs": 1,
            "batchSize": 64,
            "lrScheduler": "constant_with_warmup",
            "grpo": {"votes": votes, "beta": beta, "numGenerations": group},
        },
    }


def _dpo(sft_weight: float) -> dict[str, Any]:
    dpo = {"minMargin": 0.5, "beta": 0.1, "sftWeight": sft_weight}
    return {"training": {"method": "dpo", "learningRate": 5e-5, "epochs": 2, "dpo": dpo}}


VARIANTS: dict[str, dict[str, Any]] = {
    "grpo-group-kl0-lr1e-4": _grpo("group", 0.0, 1e-4, 512),  # the first benchmark's GRPO
    "grpo-group-kl0-lr1e-5": _grpo("group", 0.0, 1e-5, 512),
    "grpo-group-kl004-lr3e-5": _grpo("group", 0.04, 3e-5, 512),
    "grpo-group-kl004-lr1e-4": _grpo("group", 0.04, 1e-4, 512),
    "grpo-votes-kl0-lr1e-4": _grpo("candidates", 0.0, 1e-4, 512),
    "grpo-votes-kl004-lr3e-5": _grpo("candidates", 0.04, 3e-5, 512),
    "grpo-votes-kl004-lr5e-5": _grpo("candidates", 0.04, 5e-5, 512),
    "grpo-votes-kl004-lr1e-4": _grpo("candidates", 0.04, 1e-4, 512),
    "grpo-16votes-kl004-lr1e-4": _grpo("candidates", 0.04, 1e-4, 512, candidates=16),
    "grpo-votes-kl004-lr5e-5-1600": _grpo("candidates", 0.04, 5e-5, 1600),
    "grpo-verifier-kl0-lr1e-4-1600": c.deep_merge(_grpo("candidates", 0.0, 1e-4, 1600), c.VERIFIER_SCORING),
    "grpo-verifier-kl004-lr1e-4-1600": c.deep_merge(
        _grpo("candidates", 0.04, 1e-4, 1600), c.VERIFIER_SCORING
    ),
    "grpo-verifier-kl004-lr5e-5-512": c.deep_merge(_grpo("candidates", 0.04, 5e-5, 512), c.VERIFIER_SCORING),
    "grpo-verifier-kl004-lr5e-5-1600": c.deep_merge(
        _grpo("candidates", 0.04, 5e-5, 1600), c.VERIFIER_SCORING
    ),
    "grpo-verifier-kl004-lr5e-5-1600-g16": c.deep_merge(
        _grpo("candidates", 0.04, 5e-5, 1600, group=16), c.VERIFIER_SCORING
    ),
    "dpo-plain": _dpo(0.0),
    "dpo-sft1": _dpo(1.0),
}
SMOKE_VARIANTS = ("grpo-votes-kl004-lr5e-5", "dpo-sft1")
SMOKE = {
    "prompts": {"maxPerRound": 8, "heldOutFraction": 0.2},
    "generation": {"candidates": 4},
    "training": {"batchSize": 8, "grpo": {"numGenerations": 4}, "dpo": {"minMargin": 0.0}},
    "evaluation": {"maxPrompts": 12, "minImprovement": -10.0},
}


def run(args: argparse.Namespace) -> dict[str, Any]:
    base_dir = c.base_dir(args.work, args.seed)
    info = c.prepare_base(args.seed, base_dir, smoke=args.smoke)
    tok = c.load_tokenizer(base_dir / "base-model")
    work = args.work / "training_settings" / f"seed-{args.seed}"
    rows: dict[str, Any] = {}
    for name in args.variants:
        spec = c.deep_merge({"rounds": 1}, VARIANTS[name])
        if args.smoke:
            spec = c.deep_merge(spec, SMOKE)
        result = c.run_variant(name, base_dir, work, spec, fresh=args.fresh, tokenizer=tok)
        base = result.pop("base")["analysis"]
        rows[name] = {
            "spec": VARIANTS[name],
            "baseAccuracy": base["accuracy"],
            "accuracy": result["accuracy"],
            "promoted": result["promotedAll"],
            "decomposition": c.decompose(base, result["analysis"]),
            "routes": result["analysis"]["routes"],
            "trainData": result["trainData"],
            "seconds": result["seconds"],
        }
        c.log(f"{name}: {base['accuracy']} -> {result['accuracy']}")
    return {"seed": args.seed, "prepare": info, "variants": rows}


def table(out: dict[str, Any]) -> str:
    header = ["variant", "base", "accuracy", "change", "mix", "skill", "column share (acc)", "promoted"]
    rows = []
    for name, row in out["variants"].items():
        d, column = row["decomposition"], row["routes"]["column"]
        acc = "-" if column["accuracy"] is None else f"{column['accuracy']:.2f}"
        rows.append(
            [
                name,
                f"{row['baseAccuracy']:.3f}",
                f"{row['accuracy']:.3f}",
                f"{d['change']:+.3f}",
                f"{d['mix']:+.3f}" if d["mix"] is not None else "-",
                f"{d['skill']:+.3f}" if d["skill"] is not None else "-",
                f"{column['share']:.2f} ({acc})",
                "yes" if row["promoted"] else "no",
            ]
        )
    return bench.format_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    p = bench.parser(__doc__)
    p.add_argument("--seed", type=int, default=None, help="the base's seed (default 1; with --smoke 0)")
    p.add_argument(
        "--variants",
        type=lambda s: [v for v in s.split(",") if v],
        default=None,
        help=f"variants to run (default: all; with --smoke: {','.join(SMOKE_VARIANTS)})",
    )
    bench.quality_flags(
        p,
        "training_settings",
        smoke_help="tiny: a barely trained base, a few prompts, two variants",
        fresh_help="re-run variants whose runs exist in --work",
    )
    args = p.parse_args(argv)
    args.variants = args.variants or list(SMOKE_VARIANTS if args.smoke else VARIANTS)
    if args.seed is None:  # the smoke base of seed 0 is the other smoke tests' too
        args.seed = 0 if args.smoke else 1
    if unknown := set(args.variants) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    bench.quality_defaults(args, "training_settings")
    machine = bench.Machine()
    machine.announce_quality()
    out = run(args)
    print(f"\nseed {args.seed}, one round per variant, held-out greedy accuracy")
    print(table(out))
    args.no_plot = True  # a table, no plot
    return machine.finish_quality(
        "training_settings", args, argv, VARIANTS, {"summary": out}, lambda *_: None
    )


if __name__ == "__main__":
    raise SystemExit(main())

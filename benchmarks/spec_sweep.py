"""One-off settings trials on the arithmetic task: each a `tao run` round of the example's TAOJob with a change.

    python benchmarks/spec_sweep.py SEED NAME 'JSON spec change' [NAME 'JSON' ...] [--verifier]
        [--work DIR] [--out FILE] [--smoke]

For a question training_settings.py does not ask, on any seed: the base and prompts are tao_vs_labels.py's
for the seed (prepared once in --work), every run starts fresh, and one line per run is appended to --out
(default benchmarks/results/spec_sweep.jsonl): the seed, the change, the held-out greedy accuracy of the
base and of the last round's model (and of each round's), its split into route mix and skill within a route,
and whether the gate promoted every round's model. `--verifier` adds the a+b verifier as the only scorer (as tao_vs_labels.py's verifier methods).
`--smoke`: the plumbing in seconds (the smoke base, a few prompts; measures nothing).

    python benchmarks/spec_sweep.py 0 kl02 '{"prompts": {"maxPerRound": 1600}, "training": {"method": "grpo",
        "learningRate": 5e-5, "epochs": 1, "batchSize": 64, "lrScheduler": "constant_with_warmup",
        "grpo": {"beta": 0.2}}}' --verifier
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as bench  # noqa: E402
import _common as c  # noqa: E402

TAOJOB_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# --smoke: a few prompts, thresholds that always keep something, and a gate that never blocks.
SMOKE = {
    "prompts": {"maxPerRound": 8, "heldOutFraction": 0.2},
    "generation": {"candidates": 4},
    "training": {"batchSize": 8, "grpo": {"numGenerations": 4}, "sft": {"minScore": 0.0}},
    "evaluation": {"maxPrompts": 12, "minImprovement": -10.0},
}


def trial(
    seed: int, name: str, change: dict[str, Any], work: Path, verifier: bool, smoke: bool = False
) -> dict[str, Any]:
    """A fresh run of the example's TAOJob with `change` (one round unless it sets `rounds`), measured on the
    seed's held-out prompts."""
    base_dir = c.base_dir(work, seed)
    c.prepare_base(seed, base_dir, smoke=smoke)
    spec = c.deep_merge({"rounds": 1}, c.deep_merge(change, c.VERIFIER_SCORING) if verifier else change)
    if smoke:
        spec = c.deep_merge(spec, SMOKE)
    result = c.run_variant(
        name,
        base_dir,
        work / "spec_sweep" / f"seed-{seed}",
        spec,
        fresh=True,
        tokenizer=c.load_tokenizer(base_dir / "base-model"),
    )
    base = result.pop("base")["analysis"]
    return {
        "seed": seed,
        "name": name,
        "verifier": verifier,
        "change": change,
        "baseAccuracy": base["accuracy"],
        "accuracy": result["accuracy"],  # the last round's model
        "perRound": result["perRound"],  # the base's, then each round's model's
        "promoted": result["promotedAll"],  # every round's model
        "decomposition": c.decompose(base, result["analysis"]),
        "routes": {k: [v["share"], v["accuracy"]] for k, v in result["analysis"]["routes"].items()},
        "seconds": result["seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("seed", type=int)
    p.add_argument("trials", nargs="+", help="NAME 'JSON spec change' pairs")
    p.add_argument("--verifier", action="store_true", help="the a+b verifier as the only scorer")
    p.add_argument(
        "--work", type=Path, default=None, help=f"bases and runs (default {bench.DEFAULT_WORK}/full)"
    )
    p.add_argument("--smoke", action="store_true", help="the plumbing in seconds: measures nothing")
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "spec_sweep.jsonl"
    )
    args = p.parse_args(argv)
    if len(args.trials) % 2:
        p.error("trials come in pairs: NAME 'JSON spec change'")
    # Every trial is checked before the first one runs: a typo in the last must not cost the others' time.
    changes: dict[str, dict[str, Any]] = {}
    for name, text in zip(args.trials[::2], args.trials[1::2], strict=True):
        if not TAOJOB_NAME.fullmatch(name):
            p.error(
                f"trial name {name!r}: it names the trial's TAOJob, so lowercase letters, digits and '-' only"
            )
        if name in changes:
            p.error(f"trial name {name!r} is given twice: each trial's run is kept under its name")
        try:
            changes[name] = json.loads(text)
        except json.JSONDecodeError as e:
            p.error(f"trial {name!r}: its spec change is not JSON ({e})")
        if not isinstance(changes[name], dict):
            p.error(f"trial {name!r}: its spec change must be a JSON object, like '{{\"rounds\": 2}}'")
    work = args.work or bench.DEFAULT_WORK / ("smoke" if args.smoke else "full")
    for name, change in changes.items():
        row = trial(args.seed, name, change, work, args.verifier, args.smoke)
        print(json.dumps(row), flush=True)
        with args.out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

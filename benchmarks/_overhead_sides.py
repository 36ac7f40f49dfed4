"""The two sides overhead.py compares, each run as its own child process of overhead.py and timed in CPU seconds.

- theirs (`hand_written`): the script a user would write with transformers + TRL, timed phase by phase;
- ours (`instrumented_stage`): `tao-stage` main with timers around the imports, model loads, storage calls
  and the compute; `ours` runs prepare, generate, score and train as `tao run` runs them.

`run_measured` runs one child pinned to the given cores and takes its CPU time from wait4. Only the
standard library is imported at module level: the children import this file before their clocks start.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCRIPT = (
    Path(__file__).resolve().with_name("overhead.py")
)  # the children's entry point (--stage, --hand-written)
# Inner timings are CPU seconds of the process (all threads): on a machine shared with other people's jobs,
# wall time measures their load as much as ours, CPU time much less so (see overhead.py's docstring).
clock = time.process_time
PATTERN = r"\d"
TOP_K = 2

# ------------------------------------------------------------------------------ theirs: the plain script


def hand_written(params: dict[str, Any]) -> dict[str, float]:
    """The script a user would write with transformers + TRL, timed phase by phase. No tao_trainer import."""
    timings: dict[str, float] = {}
    t = clock()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    timings["imports"] = clock() - t
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    t = clock()
    tokenizer = AutoTokenizer.from_pretrained(params["model"])
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(params["model"], dtype=torch.float32)
    model.eval()
    timings["model load"] = clock() - t

    t = clock()
    records = [json.loads(line) for line in Path(params["prompts"]).read_text().splitlines() if line.strip()]
    prompts = [r["prompt"] for r in records]
    candidates: list[list[str]] = []
    n, batch_size = params["candidates"], params["batch_size"]
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        torch.manual_seed(params["seed"] * 1_000_003 + start)
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            seqs = model.generate(
                **enc,
                max_new_tokens=params["max_new_tokens"],
                pad_token_id=tokenizer.pad_token_id,
                num_return_sequences=n,
                do_sample=True,
                temperature=params["temperature"],
                top_p=1.0,
                top_k=0,
            )
        texts = tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        candidates += [texts[i * n : (i + 1) * n] for i in range(len(batch))]
    timings["generate"] = clock() - t

    t = clock()
    pattern = re.compile(PATTERN)
    rows = []
    for prompt, cands in zip(prompts, candidates, strict=True):
        kept = [c for c in cands if pattern.search(c)][:TOP_K]
        rows += [{"prompt": prompt, "completion": c} for c in kept]
    out = Path(params["out"])
    args = SFTConfig(
        output_dir=str(out / "trainer"),
        learning_rate=params["learning_rate"],
        num_train_epochs=params["epochs"],
        per_device_train_batch_size=params["train_batch_size"],
        warmup_steps=0.1,
        lr_scheduler_type="linear",
        seed=0,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=False,
        bf16=False,
        max_length=params["max_length"],
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    timings["train setup"] = clock() - t

    t = clock()
    output = trainer.train()
    timings["train"] = clock() - t

    t = clock()
    trainer.model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    timings["save"] = clock() - t
    timings["examples"] = len(rows)
    timings["trainLoss"] = round(float(output.training_loss), 5)
    return timings


# --------------------------------------------------------------------------- ours: a stage, instrumented


def instrumented_stage(argv: list[str], timings_path: str) -> int:
    """Run `tao-stage` main with timers around imports, model loads, storage calls and the compute."""
    timings: dict[str, float] = {"entered": clock(), "storage": 0.0, "model load": 0.0, "compute": 0.0}
    t = clock()
    heavy = argv[0] in ("generate", "train")
    if heavy:  # the stage imports these anyway; imported first to time them
        import torch  # noqa: F401
        import transformers
    if argv[0] == "train":
        import datasets  # noqa: F401
        import trl  # noqa: F401
    from tao_trainer import cli, storage
    from tao_trainer import generation as generate

    depth = [0]

    def timed(key: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if depth[0]:
                return fn(*args, **kwargs)
            depth[0] += 1
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[key] += clock() - started
                depth[0] -= 1

        return wrapper

    for name in (
        "read_jsonl",
        "write_jsonl",
        "read_text",
        "write_text",
        "write_json",
        "read_json",
        "exists",
        "upload_dir",
        "list_uris",
    ):
        setattr(storage, name, timed("storage", getattr(storage, name)))
    if heavy:
        model_cls = transformers.PreTrainedModel
        load = model_cls.from_pretrained.__func__
        model_cls.from_pretrained = classmethod(timed("model load", load))  # type: ignore[method-assign]
    if argv[0] == "generate":
        generate.TransformersGenerator.generate = timed("compute", generate.TransformersGenerator.generate)
    if argv[0] == "train":
        transformers.Trainer.train = timed("compute", transformers.Trainer.train)  # type: ignore[method-assign]
    # Reaching transformers.PreTrainedModel (and .Trainer) above imported them (transformers imports lazily):
    # the stage imports them anyway, in its first lines of work, so they count as imports.
    timings["imports"] = clock() - t
    t = clock()
    code = cli.main(argv)
    timings["main"] = clock() - t
    timings["finished"] = clock()
    Path(timings_path).write_text(json.dumps(timings))
    return code


def ours(
    workdir: Path, spec: dict[str, Any], model: Path, env: dict[str, str], threads: int
) -> dict[str, Any]:
    """prepare, generate, score, train as `tao run` runs them; returns per-stage wall time and inner timings."""
    run_uri = (workdir / "run").as_uri()
    stages: dict[str, Any] = {}
    for stage in ("prepare", "generate", "score", "train"):
        config = {"stage": stage, "round": 1, "runUri": run_uri, "modelUri": model.as_uri(), "spec": spec}
        cfg = workdir / f"{stage}.json"
        cfg.write_text(json.dumps(config))
        result, timings = workdir / f"{stage}.result.json", workdir / f"{stage}.timings.json"
        cmd = [sys.executable, str(SCRIPT), "--stage", stage, "--config", str(cfg), "--result", str(result)]
        wall, cpu = run_measured(
            cmd, env | {"TAO_BENCH_TIMINGS": str(timings)}, threads, workdir / f"{stage}.log"
        )
        inner = json.loads(timings.read_text())
        stages[stage] = {
            "wall": wall,
            "cpu": cpu,
            "start": inner["entered"],
            "exit": cpu - inner["finished"],
            **inner,
            "result": json.loads(result.read_text()),
        }
    return stages


def ours_warm(
    workdir: Path, spec: dict[str, Any], model: Path, env: dict[str, str], threads: int, worker: Any
) -> dict[str, Any]:
    """The same four stages as `tao run` runs them with its warm worker (`tao_operator.local_warm`): generate and
    train forked from `worker` (imports done, pinned to the same cores), prepare and score as plain processes.
    Per stage: wall and CPU seconds (a forked stage's from the worker's waited-for children), and its result."""
    from _bench import process_cpu_seconds

    run_uri = (workdir / "run").as_uri()
    stages: dict[str, Any] = {}
    for stage in ("prepare", "generate", "score", "train"):
        config = {"stage": stage, "round": 1, "runUri": run_uri, "modelUri": model.as_uri(), "spec": spec}
        cfg, result = workdir / f"{stage}.json", workdir / f"{stage}.result.json"
        cfg.write_text(json.dumps(config))
        argv = [stage, "--config", str(cfg), "--result", str(result)]
        if stage in ("generate", "train"):
            before = process_cpu_seconds(worker.proc.pid)[1]
            started = time.monotonic()
            if worker.run(argv) != 0:
                raise RuntimeError(f"{stage} forked from the warm worker failed")
            wall = time.monotonic() - started
            cpu = process_cpu_seconds(worker.proc.pid)[1] - before
        else:
            cmd = [sys.executable, "-m", "tao_trainer.cli", *argv]
            wall, cpu = run_measured(cmd, env, threads, workdir / f"{stage}.log")
        stages[stage] = {"wall": wall, "cpu": cpu, "result": json.loads(result.read_text())}
    return stages


def theirs(workdir: Path, params: dict[str, Any], env: dict[str, str], threads: int) -> dict[str, Any]:
    params_path = workdir / "params.json"
    params_path.write_text(json.dumps(params | {"out": str(workdir / "out")}))
    timings = workdir / "theirs.json"
    cmd = [sys.executable, str(SCRIPT), "--hand-written", str(params_path)]
    wall, cpu = run_measured(cmd, env | {"TAO_BENCH_TIMINGS": str(timings)}, threads, workdir / "theirs.log")
    inner = json.loads(timings.read_text())
    return {"wall": wall, "cpu": cpu, "start": inner["entered"], "exit": cpu - inner["finished"], **inner}


def run_measured(cmd: list[str], env: dict[str, str], threads: int, log: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one child, pinned to `threads` cores (torch uses as many)."""
    cores = sorted(os.sched_getaffinity(0))[:threads]
    started = time.monotonic()
    with log.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=lambda: os.sched_setaffinity(0, cores),
        )  # noqa: PLW1509
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd[2:4]} failed: {log.read_text(errors='replace')[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime

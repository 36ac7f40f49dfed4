"""The labeled baselines of tao_vs_labels.py: plain TRL SFT on gold worked solutions, and greedy answers.

The same held-out prompts as the TAO runs (the product's own split, recomputed here and checked by the
caller), the same SFT recipe as TAO's train stage (`tao_trainer.stages.train._common_args`), and the product's
generator for the greedy answers.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from pathlib import Path
from typing import Any

import _bench as bench
import _common as c


def split_like_the_product(base_dir: Path, job: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """(round-1 training prompts, evaluated held-out prompts) exactly as `tao run`'s prepare stage picks them."""
    from tao_trainer import prompts
    from tao_trainer.stages.prepare import round_slice

    spec = job["spec"]
    loaded = prompts.load_prompts((base_dir / "prompts.jsonl").as_uri(), "prompt")
    pool, held = prompts.split(loaded.records, spec["prompts"]["heldOutFraction"])
    return round_slice(pool, 1, spec["prompts"]["maxPerRound"]), held[: spec["evaluation"]["maxPrompts"]]


def gold(a: int, b: int, style: str, rng: random.Random) -> str:
    prep = c.prepare_module()
    if style == "column" or (style == "mixed" and rng.random() < 0.5):
        return prep.column_route(a, b)
    return prep.compensation_route(a, b)


def sft_on_labels(
    base_dir: Path,
    out: Path,
    job: dict[str, Any],
    train_prompts: list[Any],
    held: list[Any],
    n: int,
    style: str,
    seed: int,
) -> dict[str, Any]:
    """Plain TRL SFT on n labeled prompts (gold worked solutions), then greedy answers on the held-out set."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar
    from trl import SFTConfig, SFTTrainer

    from tao_trainer import generation as generate
    from tao_trainer import models
    from tao_trainer.spec import TrainingSpec
    from tao_trainer.stages.train import _common_args
    from tao_trainer.stages.train_data import sft_tokens  # the exact recipe of TAO's train stage

    done = out / "result.json"
    if done.exists():
        import json

        return json.loads(done.read_text())
    started = time.monotonic()
    models.cpu_threads()
    disable_progress_bar()
    rng = random.Random(1000 + seed)
    model_path = str(base_dir / "base-model")
    tok = models.load_tokenizer(model_path)
    rows = []
    for rec in train_prompts[:n]:
        a, b = c.parse_problem(rec.prompt)
        rows.append(
            {
                "prompt_ids": models.prepare_prompt(tok, rec.prompt, None).ids,
                "completion": gold(a, b, style, rng),
            }
        )
    t = TrainingSpec.model_validate(job["spec"]["training"])
    args = SFTConfig(
        **_common_args(t, str(out / "trainer"), gradient_checkpointing=False),  # tiny models: below 1B
        max_length=t.max_length,
        completion_only_loss=True,
    )
    # The same token ids and labels as TAO's SFT rows (the train stage's own conversion).
    dataset = Dataset.from_list([sft_tokens(row, tok) for row in rows])
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=dataset, processing_class=tok)
    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log lines; stdout is for the tables
        trainer.train()
    trainer.model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    train_seconds = time.monotonic() - started
    gen_spec = job["spec"]["generation"]
    generator = generate.load_generator(str(out / "model"), "transformers", gen_spec["batchSize"])
    greedy = generate.Sampling(1, 0.0, 1.0, gen_spec["maxNewTokens"], 0)
    answers = [
        g[0]
        for g in generator.generate([models.prepare_prompt(tok, r.prompt, None).ids for r in held], greedy)
    ]
    result = {
        "answers": answers,
        "examples": len(rows),
        "steps": int(trainer.state.global_step),
        "trainData": {
            "examples": len(rows),
            "columnShare": c._r(sum(c.route_of(r["completion"]) == "column" for r in rows) / len(rows)),
            "correctShare": 1.0,
        },
        "seconds": round(time.monotonic() - started, 1),
        "trainSeconds": round(train_seconds, 1),
    }
    bench.write_json(done, result)
    return result


def greedy_analysis(model_dir: Path, held: list[Any], job: dict[str, Any], tok: Any) -> dict[str, Any]:
    from tao_trainer import generation as generate

    gen = job["spec"]["generation"]
    generator = generate.load_generator(str(model_dir), "transformers", gen["batchSize"])
    from tao_trainer import models

    tok_ = generator.tokenizer
    answers = [
        g[0]
        for g in generator.generate(
            [models.prepare_prompt(tok_, r.prompt, None).ids for r in held],
            generate.Sampling(1, 0.0, 1.0, gen["maxNewTokens"], 0),
        )
    ]
    return c.analyze(answers, [r.fields["answer"] for r in held], tok)

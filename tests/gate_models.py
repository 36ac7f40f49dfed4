"""Tiny models that really are better or worse at one task, for tests of the promotion gate.

The task: `a,b>` -> `b` (repeat the last digit; 100 prompts), which a tiny model learns in seconds. A champion is the tiny random model fine-tuned with
TRL's SFTTrainer on the right answers; each challenger is that champion fine-tuned further the same way toward
something worse (always one answer, a consistent wrong answer per prompt, or one task forgotten), or a copy of
its weights.
Prompts are rendered as the product renders them, so what a model learned is what the evaluate stage asks.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

PROMPT = "{a},{b}>"
PROMPTS = [(a, b) for a in range(10) for b in range(10)]

# Each kind's answers to prompt (a, b): one completion per training row.
ANSWERS: dict[str, Callable[[int, int], list[str]]] = {
    "right": lambda a, b: [str(b)],
    "collapsed": lambda a, b: ["5"],  # one answer to every prompt
    "wrong": lambda a, b: [str(a)],  # a consistent wrong answer per prompt (the other digit)
    # Right on the prompts of task "low" (a < 5); on those of task "high" the skill is forgotten: a non-digit that
    # no extraction finds, so its samples never outvote the champion's right answer, however long it trains
    # (a consistent wrong digit would supply its own majority once learnt).
    "forgot-high": lambda a, b: [str(b)] if a < 5 else ["x"],
}


def task(a: int) -> str:
    """The task of prompt (a, b) in the multi-task tests."""
    return "low" if a < 5 else "high"


def write_prompts(path: Path, tasks: bool = False) -> Path:
    """The task's prompts with their label (reporting only: the loop never sees it); with `tasks`, each
    with its `task` field too."""
    path.write_text(
        "".join(
            json.dumps(
                {"prompt": PROMPT.format(a=a, b=b), "answer": str(b)} | ({"task": task(a)} if tasks else {})
            )
            + "\n"
            for a, b in PROMPTS
        )
    )
    return path


def fine_tune(
    start: Path, out: Path, kind: str, *, epochs: int, learning_rate: float = 1e-2, batch_size: int = 10
) -> Path:
    """SFT of the model at `start` toward `kind`'s answers (prompt-completion pairs, completion-only loss);
    `noop` copies `start`'s weights unchanged."""
    if kind == "noop":
        shutil.copytree(start, out)
        return out
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tao_trainer import models

    models.cpu_threads()

    tok = models.load_tokenizer(str(start))
    rows = [
        {
            "prompt": models.render_prompt(tok, PROMPT.format(a=a, b=b), None),
            "completion": completion,
        }
        for a, b in PROMPTS
        for completion in ANSWERS[kind](a, b)
    ]
    args = SFTConfig(
        output_dir=str(out / "trainer"),
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        lr_scheduler_type="constant",
        seed=0,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        logging_steps=1000,
        dataloader_num_workers=0,
        max_length=32,
        completion_only_loss=True,
        bf16=False,  # TRL's default asks for bf16, which a CPU cannot do
        use_cpu=True,
    )
    trainer = SFTTrainer(
        model=str(start), args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    trainer.model.save_pretrained(out)
    tok.save_pretrained(out)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    return out

"""Build the base model and the unlabeled prompts for the multi-task example: addition and digit sorting.

Usage::

    python examples/multitask/prepare.py [--out DIR] [--seed N] [--sort-share 0.10]

One tiny character-level model (the arithmetic example's: GPT-2, 3 layers, ~340k parameters, the same
tokenizer) pretrained on two tasks at once, and 3,000 prompts of each, every one with its `task` field:

* ``math``: the arithmetic example's additions ``347+285=`` with worked solutions by two routes (see
  examples/arithmetic/prepare.py); the loop scores them with a majority vote over final answers;
* ``sort``: ``5,9,1,7,3,8,2=`` -> ``;1235789``, the digits in ascending order (6 to 9 of them); the loop scores
  them with a verifier (verify_sort.py: is the answer these digits, sorted?), which needs no label.

Pretraining stops when the addition's greedy accuracy reaches the arithmetic example's target (0.40), as there.
Sorting gets `--sort-share` (0.10) of each batch, so that it is learned less well by then: its base accuracy is
printed, and moves with the seed (with 0.12: .19, .22 and .52 on seeds 0-2, which stopped after 850, 950 and
1100 steps; with 0.25: .30 and .67 on seeds 0 and 1; holding it at a cap by switching the sorting rows off and
on each check overshot both ways, 0.06 to 0.71). Answers are labels for reporting only:
the loop never sees them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _arithmetic() -> Any:
    """The arithmetic example's prepare.py, for its model, tokenizer, addition task and pretraining loop."""
    path = HERE.parent / "arithmetic" / "prepare.py"
    spec = importlib.util.spec_from_file_location("arithmetic_prepare", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


arith = _arithmetic()

SORT_SEED = 20261201
NUM_SORT_PROMPTS = 3000
NUM_SORT_STOP_EVAL = 300
MIN_DIGITS, MAX_DIGITS = 6, 9


def sort_prompt(digits: tuple[int, ...]) -> str:
    """
    >>> sort_prompt((5, 9, 1)), sort_completion((5, 9, 1))
    ('5,9,1=', ';159')
    """
    return ",".join(map(str, digits)) + "="


def sort_completion(digits: tuple[int, ...]) -> str:
    return ";" + "".join(map(str, sorted(digits)))


def random_digits(rng: random.Random) -> tuple[int, ...]:
    return tuple(rng.randint(0, 9) for _ in range(rng.randint(MIN_DIGITS, MAX_DIGITS)))


def reserved_sorts() -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """The sort prompts and the sort stop-eval set, the same for every seed and kept out of pretraining."""
    rng = random.Random(SORT_SEED)
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[int, ...]] = []
    while len(out) < NUM_SORT_PROMPTS + NUM_SORT_STOP_EVAL:
        digits = random_digits(rng)
        if digits not in seen:
            seen.add(digits)
            out.append(digits)
    return out[:NUM_SORT_PROMPTS], out[NUM_SORT_PROMPTS:]


def mixed_batch(sort_share: float, reserved_sort: set[tuple[int, ...]]) -> Any:
    """The arithmetic example's batch with `sort_share` of its rows replaced by sorting examples."""
    add_batch = arith.training_batch

    def batch(rng: random.Random, reserved: Any, vocab: dict[str, int], eos_id: int, pad_id: int) -> Any:
        import torch

        ids, labels = add_batch(rng, reserved, vocab, eos_id, pad_id)
        rows_ids, rows_labels = [list(r) for r in ids.tolist()], [list(r) for r in labels.tolist()]
        for i in range(len(rows_ids)):
            if rng.random() >= sort_share:
                continue
            digits = random_digits(rng)
            while digits in reserved_sort:
                digits = random_digits(rng)
            p = arith.encode(sort_prompt(digits), vocab)
            c = arith.encode(sort_completion(digits), vocab) + [eos_id]
            rows_ids[i], rows_labels[i] = p + c, [-100] * len(p) + c
        width = max(map(len, rows_ids))
        out_ids = torch.full((len(rows_ids), width), pad_id, dtype=torch.long)
        out_labels = torch.full((len(rows_ids), width), -100, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(rows_ids, rows_labels, strict=True)):
            s = [t for t in s if t != pad_id]  # the addition rows come right-padded
            lab = lab[: len(s)]
            out_ids[i, : len(s)] = torch.tensor(s)
            out_labels[i, : len(lab)] = torch.tensor(lab)
        return out_ids, out_labels

    return batch


def sort_accuracy(model: Any, tok: Any, stop: list[tuple[int, ...]]) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        enc = tok([sort_prompt(d) for d in stop], return_tensors="pt", padding=True)
        out = model.generate(**enc, do_sample=False, max_new_tokens=16)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train()
    return sum(t == sort_completion(d) for d, t in zip(stop, texts, strict=True)) / len(stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sort-share", type=float, default=0.10, help="share of pretraining rows that sort")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    import torch

    torch.manual_seed(args.seed)
    tok = arith.build_tokenizer()
    model = arith.build_model(tok)
    add_prompts, add_stop = arith.reserved_pairs()
    sort_prompts, sort_stop = reserved_sorts()
    # The arithmetic pretraining loop, on batches that also sort (it draws them through training_batch).
    arith.training_batch = mixed_batch(args.sort_share, set(sort_prompts) | set(sort_stop))
    steps, stats = arith.pretrain(
        model, tok, args.seed, set(add_prompts) | set(add_stop), add_stop, arith.TARGET_ACCURACY
    )
    sorted_ok = sort_accuracy(model, tok, sort_stop)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "base-model")
    tok.save_pretrained(out / "base-model")
    arith.portable_tokenizer_class(out / "base-model")
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "task": "math"} for a, b in add_prompts]
    rows += [
        {"prompt": sort_prompt(d), "answer": sort_completion(d)[1:], "task": "sort"} for d in sort_prompts
    ]
    random.Random(SORT_SEED).shuffle(rows)
    with open(out / "prompts.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(
        f"base greedy exact match after {steps} steps: math {stats['accuracy']:.3f}, sort {sorted_ok:.3f}",
        flush=True,
    )
    print(f"wrote {out / 'base-model'} and {len(rows)} prompts to {out / 'prompts.jsonl'}")
    print(f"total {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()

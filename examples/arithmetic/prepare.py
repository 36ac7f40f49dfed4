"""Build the tiny offline base model and the unlabeled prompts for the arithmetic example.

Usage::

    python examples/arithmetic/prepare.py [--out DIR] [--seed N]

Writes, with no downloads and deterministically for a given seed (on the same machine):

* ``DIR/base-model/``: a Hugging Face causal LM (GPT-2 architecture, 3 layers, 96 hidden, ~340k
  parameters) with a character-level tokenizer (one token per character, no BOS or other special
  tokens added on encoding, ``<eos>`` and a distinct ``<pad>``). Loadable offline with
  ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
* ``DIR/prompts.jsonl``: the task, one ``{"prompt": "347+285=", "answer": "632"}`` per line. The
  ``answer`` field is a label used only to report metrics; the TAO loop never sees it.

How the base is produced
------------------------
The model is pretrained from random init on synthetic additions ``a+b`` (operands 10-999) whose
completions are worked solutions in one of two routes, chosen 50/50 at random per example::

    347+285=7+5+0=12,4+8+1=13,3+2+1=06;632<eos>   column: one digit pair plus carry per step
    347+285=347+300=647,647-15=632;632<eos>       compensation: round b up to the next hundred,
                                                  add that, subtract the excess

Every step of the column route is a one-digit addition. The compensation route needs the
complement (300-285=15) and a multi-digit subtraction with borrows written most significant digit
first, which a model this small learns later and less reliably. Pretraining stops as soon as
held-out greedy exact match (mean of the last three checks, 50 steps apart) reaches a target
(0.40 by default). At that point the column route is mostly right and the compensation route
mostly wrong, and greedy decoding takes one or the other depending on the prompt. Stopping on a
target rather than after a fixed number of steps makes the base reproducible across seeds.

Why the TAO loop can improve it
-------------------------------
Sampling 8 completions per prompt at temperature 1.0 gives a mix of both routes. The column
answers agree with each other (they are mostly right), the compensation answers scatter (they are
mostly wrong, in different ways), so the label-free majority vote over final answers keeps mostly
column-route candidates. Fine-tuning on the kept candidates makes greedy decoding take the
reliable route. The gain is in strategy selection, not in new arithmetic skill: the loop unlocks a
mode the base already had. The prompts' operand pairs are disjoint from the pretraining data.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

# --- the task -----------------------------------------------------------------------------------

MIN_OPERAND = 10
MAX_OPERAND = 999
#: the prompts file is the same for every --seed: only the base model varies with the seed
PROMPTS_SEED = 20261121
NUM_PROMPTS = 3000
#: pairs reserved (disjoint from pretraining and prompts) to decide when pretraining stops
NUM_STOP_EVAL = 400

#: the final answer of a completion, as the loop's scorer extracts it
ANSWER_REGEX = r";(\d+)$"

PAD, EOS, UNK, BOS = "<pad>", "<eos>", "<unk>", "<bos>"
CHARS = "0123456789+-=,;"

# --- pretraining ------------------------------------------------------------------------------

BATCH_SIZE = 64
LEARNING_RATE = 1e-3
WARMUP_STEPS = 100
EVAL_EVERY = 50
#: stop when the mean greedy accuracy of the last SMOOTH_CHECKS checks reaches the target: one check
#: alone swings by +-10 points with the share of prompts greedy decoding sends down each route
SMOOTH_CHECKS = 3
MAX_STEPS = 4000
TARGET_ACCURACY = 0.40
MAX_NEW_TOKENS = 48


def column_route(a: int, b: int) -> str:
    """Column-wise addition with carries, least significant digit first.

    >>> column_route(347, 285)
    '7+5+0=12,4+8+1=13,3+2+1=06;632'
    >>> column_route(47, 55)
    '7+5+0=12,4+5+1=10;102'
    """
    width = max(len(str(a)), len(str(b)))
    da, db = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    steps, carry = [], 0
    for x, y in zip(da, db, strict=True):
        s = int(x) + int(y) + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return ",".join(steps) + f";{a + b}"


def compensation_route(a: int, b: int) -> str:
    """Round b up to the next hundred, add that, then take the excess back off.

    >>> compensation_route(347, 285)
    '347+300=647,647-15=632;632'
    >>> compensation_route(347, 85)
    '347+100=447,447-15=432;432'
    >>> compensation_route(347, 200)
    '347+200=547;547'
    """
    if b % 100 == 0:
        return f"{a}+{b}={a + b};{a + b}"
    up = (b // 100 + 1) * 100
    return f"{a}+{up}={a + up},{a + up}-{up - b}={a + b};{a + b}"


def route_of(completion: str) -> str:
    """Which route a completion took: 'column', 'compensation' or 'other'.

    >>> route_of('7+5+0=12;12'), route_of('347+300=647,647-15=632;632'), route_of('x')
    ('column', 'compensation', 'other')
    """
    first = completion.split(",")[0].split(";")[0]
    lhs = first.split("=")[0]
    if "=" not in first:
        return "other"
    if lhs.count("+") == 2:
        return "column"
    if lhs.count("+") == 1:
        return "compensation"
    return "other"


def final_answer(completion: str) -> str | None:
    """The answer after ';' at the end of a completion, or None.

    >>> final_answer('7+5+0=12;12'), final_answer('7+5')
    ('12', None)
    """
    m = re.search(ANSWER_REGEX, completion)
    return m.group(1) if m else None


# --- model and tokenizer -------------------------------------------------------------------------


def build_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """A char-level tokenizer: one token per character, nothing added on encoding; with `bos`, a BOS token put in
    front of every text, as Llama- and Mistral-style tokenizers do."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([PAD, EOS, UNK, *CHARS, *([BOS] if bos else [])])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        model_max_length=64,
        **({"bos_token": BOS} if bos else {}),
    )
    return tok


def portable_tokenizer_class(model_dir: Path) -> None:
    """Name the tokenizer class so that transformers 4.x loads it too (5.x writes its own name)."""
    path = model_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2) + "\n")


def build_model(tok: PreTrainedTokenizerFast) -> GPT2LMHeadModel:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=64,
        n_embd=96,
        n_layer=3,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the class name does not say so; avoids a warning per process
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.eos_token_id
    return model


# --- data -------------------------------------------------------------------------------------


def reserved_pairs() -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The task's prompt pairs and the stop-eval pairs, fixed for every seed and disjoint."""
    rng = random.Random(PROMPTS_SEED)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < NUM_PROMPTS + NUM_STOP_EVAL:
        pair = (rng.randint(MIN_OPERAND, MAX_OPERAND), rng.randint(MIN_OPERAND, MAX_OPERAND))
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out[:NUM_PROMPTS], out[NUM_PROMPTS:]


def encode(text: str, vocab: dict[str, int]) -> list[int]:
    return [vocab[c] for c in text]


def training_batch(
    rng: random.Random, reserved: set[tuple[int, int]], vocab: dict[str, int], eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A right-padded batch; labels cover the completion and EOS only."""
    import torch

    seqs: list[list[int]] = []
    labels: list[list[int]] = []
    while len(seqs) < BATCH_SIZE:
        a, b = rng.randint(MIN_OPERAND, MAX_OPERAND), rng.randint(MIN_OPERAND, MAX_OPERAND)
        if (a, b) in reserved:
            continue
        completion = column_route(a, b) if rng.random() < 0.5 else compensation_route(a, b)
        # The prompt as the tokenizer encodes it: a BOS first when it adds one (--bos).
        p, c = (
            ([vocab[BOS]] if BOS in vocab else []) + encode(f"{a}+{b}=", vocab),
            encode(completion, vocab) + [eos_id],
        )
        seqs.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, seqs))
    ids = torch.full((BATCH_SIZE, width), pad_id, dtype=torch.long)
    lab = torch.full((BATCH_SIZE, width), -100, dtype=torch.long)
    for i, (s, l_) in enumerate(zip(seqs, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(l_)] = torch.tensor(l_)
    return ids, lab


def greedy_eval(
    model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, pairs: list[tuple[int, int]], batch: int = 200
) -> dict[str, float]:
    """Greedy exact match over pairs, with the route each greedy completion took."""
    import torch

    correct = 0
    routes = {"column": [0, 0], "compensation": [0, 0], "other": [0, 0]}  # route -> [count, correct]
    model.eval()
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            chunk = pairs[i : i + batch]
            enc = tok([f"{a}+{b}=" for a, b in chunk], return_tensors="pt", padding=True)
            out = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for (a, b), text in zip(chunk, texts, strict=True):
                ok = final_answer(text) == str(a + b)
                correct += ok
                r = routes[route_of(text)]
                r[0] += 1
                r[1] += ok
    model.train()
    n = len(pairs)
    stats = {"accuracy": correct / n}
    for name, (count, ok) in routes.items():
        stats[f"{name}_share"] = count / n
        stats[f"{name}_accuracy"] = ok / count if count else float("nan")
    return stats


def pretrain(
    model: GPT2LMHeadModel,
    tok: PreTrainedTokenizerFast,
    seed: int,
    reserved: set[tuple[int, int]],
    stop_eval: list[tuple[int, int]],
    target: float,
) -> tuple[int, dict[str, float]]:
    """Train until greedy exact match on stop_eval, averaged over the last checks, reaches target."""
    import torch

    rng = random.Random(seed)
    vocab = tok.get_vocab()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP_STEPS))
    model.train()
    t0 = time.monotonic()
    stats: dict[str, float] = {"accuracy": 0.0}
    recent: list[float] = []
    for step in range(1, MAX_STEPS + 1):
        ids, labels = training_batch(rng, reserved, vocab, tok.eos_token_id, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % EVAL_EVERY == 0:
            stats = greedy_eval(model, tok, stop_eval)
            print(
                f"step {step:5d}  loss {loss.item():.3f}  greedy {stats['accuracy']:.3f}  "
                f"column {stats['column_share']:.2f}@{stats['column_accuracy']:.2f}  "
                f"compensation {stats['compensation_share']:.2f}@{stats['compensation_accuracy']:.2f}  "
                f"{time.monotonic() - t0:.0f}s",
                flush=True,
            )
            recent = [*recent[-(SMOOTH_CHECKS - 1) :], stats["accuracy"]]
            if len(recent) == SMOOTH_CHECKS and sum(recent) / SMOOTH_CHECKS >= target:
                return step, stats
    return MAX_STEPS, stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--target", type=float, default=TARGET_ACCURACY, help="stop pretraining at this greedy accuracy"
    )
    parser.add_argument(
        "--bos",
        action="store_true",
        help="a tokenizer that puts a BOS token in front of every text (Llama-style), pretrained with it",
    )
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    import torch

    torch.manual_seed(args.seed)
    tok = build_tokenizer(bos=args.bos)
    model = build_model(tok)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tok)}", flush=True)

    prompts, stop_eval = reserved_pairs()
    reserved = set(prompts) | set(stop_eval)
    steps, stats = pretrain(model, tok, args.seed, reserved, stop_eval, args.target)

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out / "base-model")
    tok.save_pretrained(out / "base-model")
    portable_tokenizer_class(out / "base-model")
    with open(out / "prompts.jsonl", "w") as f:
        for a, b in prompts:
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    print(
        f"base greedy exact match {stats['accuracy']:.3f} after {steps} steps "
        f"(column route {stats['column_share']:.2f} of answers, {stats['column_accuracy']:.2f} correct; "
        f"compensation route {stats['compensation_share']:.2f}, {stats['compensation_accuracy']:.2f} correct)"
    )
    print(f"wrote {out / 'base-model'} and {len(prompts)} prompts to {out / 'prompts.jsonl'}")
    print(f"total {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()

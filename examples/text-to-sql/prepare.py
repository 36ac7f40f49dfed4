"""Build the shop database, the unlabeled prompts and a tiny SQL-writing base model for the text-to-SQL example.

Usage::

    python examples/text-to-sql/prepare.py [--out DIR] [--seed N] [--max-steps N]

Writes, with no downloads:

* ``DIR/shop.sqlite``: the database of ``schema.sql`` (customers, products, orders, order_items), filled from a
  fixed seed (``DATA_SEED``, the same for every ``--seed``): 60 customers, 30 products, 200 orders, 458 items.
* ``DIR/prompts.jsonl``: one ``{"prompt": <question>, "qid": ..., "reference_sql": ...}`` per question of
  ``questions.jsonl``. ``reference_sql`` is a label: the TAOJob lists it in ``prompts.labelFields``, so the loop
  never sees it; only ``measure.py`` reads it, after the run, to report execution accuracy.
* ``DIR/base-model/``: a GPT-2 causal LM (3 layers, 96 hidden, 0.6M parameters) with a byte-level BPE tokenizer
  trained here, which holds the system prompt as one token. It is pretrained for a few hundred steps on
  synthetic question -> SQL pairs made from templates over the schema (``TEMPLATES`` below, phrased
  differently from ``questions.jsonl``), behind the system prompt of ``taojob.yaml``. It writes SQL-shaped
  text that sometimes runs and often does not. It exists to exercise the loop on a CPU, not to be a useful
  text-to-SQL model; it also stands in as the CPU judge (``tao serve``).

The model is deterministic for a given seed on a given machine (thread counts change float sums slightly).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent

# --- the database ------------------------------------------------------------------------------------------

#: the data is the same for every --seed: only the base model varies with the seed
DATA_SEED = 20261121
N_CUSTOMERS = 60
N_ORDERS = 200
#: customers who never order (questions ask about them)
N_IDLE_CUSTOMERS = 8

CITIES = [
    ("Lisbon", "Portugal"),
    ("Porto", "Portugal"),
    ("Madrid", "Spain"),
    ("Barcelona", "Spain"),
    ("Valencia", "Spain"),
    ("Paris", "France"),
    ("Lyon", "France"),
    ("Berlin", "Germany"),
    ("Munich", "Germany"),
    ("Hamburg", "Germany"),
    ("Milan", "Italy"),
    ("Rome", "Italy"),
    ("Amsterdam", "Netherlands"),
    ("Dublin", "Ireland"),
]
FIRST_NAMES = [
    "Ana",
    "Bruno",
    "Carla",
    "David",
    "Elena",
    "Filipe",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Klara",
    "Luis",
    "Marta",
    "Nils",
    "Olivia",
    "Pedro",
    "Rosa",
    "Sven",
    "Teresa",
    "Victor",
]
LAST_NAMES = [
    "Almeida",
    "Bauer",
    "Costa",
    "Dubois",
    "Esposito",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ibarra",
    "Janssen",
    "Keller",
    "Lopez",
    "Martin",
    "Novak",
    "Oliveira",
    "Petit",
    "Rossi",
    "Silva",
    "Schmidt",
    "Weber",
]
PRODUCTS = [  # name, category, price in euros
    ("The Silent Harbor", "Books", 14.90),
    ("Learning SQL", "Books", 39.50),
    ("Garden Birds of Europe", "Books", 24.00),
    ("A Short History of Maps", "Books", 18.75),
    ("Cooking with Olive Oil", "Books", 22.40),
    ("Wireless Mouse", "Electronics", 19.99),
    ("USB-C Cable", "Electronics", 9.99),
    ("Bluetooth Speaker", "Electronics", 49.00),
    ("Noise-Cancelling Headphones", "Electronics", 189.00),
    ("Mechanical Keyboard", "Electronics", 89.90),
    ("27-inch Monitor", "Electronics", 229.00),
    ("Webcam HD", "Electronics", 59.50),
    ("Chef Knife", "Kitchen", 64.00),
    ("Cast Iron Pan", "Kitchen", 45.90),
    ("Espresso Maker", "Kitchen", 129.00),
    ("Bamboo Cutting Board", "Kitchen", 17.50),
    ("Glass Teapot", "Kitchen", 27.90),
    ("Wooden Train Set", "Toys", 34.90),
    ("Puzzle 1000 Pieces", "Toys", 15.99),
    ("Building Blocks Box", "Toys", 42.00),
    ("Plush Fox", "Toys", 12.50),
    ("Garden Hose 25m", "Garden", 32.00),
    ("Pruning Shears", "Garden", 21.90),
    ("Terracotta Pot Set", "Garden", 26.50),
    ("Bird Feeder", "Garden", 18.00),
    ("Yoga Mat", "Sports", 25.00),
    ("Running Socks", "Sports", 11.90),
    ("Water Bottle 1L", "Sports", 14.00),
    ("Tennis Racket", "Sports", 95.00),
    ("Cycling Gloves", "Sports", 23.50),
]
STATUSES = [("delivered", 0.55), ("shipped", 0.20), ("pending", 0.12), ("cancelled", 0.13)]
FIRST_SIGNUP, LAST_SIGNUP = date(2023, 1, 1), date(2024, 12, 31)
FIRST_ORDER, LAST_ORDER = date(2024, 1, 1), date(2025, 6, 30)


def _day(rng: random.Random, lo: date, hi: date) -> date:
    return lo + timedelta(days=rng.randint(0, (hi - lo).days))


def shop_rows() -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the shop database, from DATA_SEED: the same on every machine and Python 3 version."""
    rng = random.Random(DATA_SEED)
    names = [f"{f} {l_}" for f in FIRST_NAMES for l_ in LAST_NAMES]
    customers = []
    for cid, name in enumerate(sorted(rng.sample(names, N_CUSTOMERS), key=names.index), start=1):
        city, country = rng.choice(CITIES)
        email = name.lower().replace(" ", ".") + "@example.com"
        customers.append((cid, name, email, city, country, _day(rng, FIRST_SIGNUP, LAST_SIGNUP).isoformat()))
    products = []
    for pid, (name, category, price) in enumerate(PRODUCTS, start=1):
        stock = 0 if rng.random() < 0.15 else rng.randint(1, 150)
        products.append((pid, name, category, price, stock))
    buyers = rng.sample(customers, N_CUSTOMERS - N_IDLE_CUSTOMERS)
    weights = [rng.choice([1, 1, 2, 3, 5]) for _ in buyers]
    drafts = []
    for _ in range(N_ORDERS):
        c = rng.choices(buyers, weights)[0]
        start = max(date.fromisoformat(c[5]), FIRST_ORDER)
        status = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES])[0]
        drafts.append((_day(rng, start, LAST_ORDER).isoformat(), c[0], status))
    drafts.sort()  # order ids follow order dates
    orders = [(oid, cid, day, status) for oid, (day, cid, status) in enumerate(drafts, start=1)]
    items = []
    for oid, *_ in orders:
        for pid, _name, _cat, price, _stock in rng.sample(products, rng.choice([1, 1, 2, 2, 2, 3, 3, 4])):
            unit = round(price * 0.9, 2) if rng.random() < 0.1 else price  # an occasional 10% discount
            items.append((oid, pid, rng.choices([1, 2, 3, 4], [6, 3, 1, 1])[0], unit))
    return {"customers": customers, "products": products, "orders": orders, "order_items": items}


def build_database(path: Path) -> dict[str, int]:
    """Create schema.sql's tables in a new SQLite file at `path` and fill them; return row counts."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        conn.executescript((HERE / "schema.sql").read_text())
        rows = shop_rows()
        for table, values in rows.items():
            marks = ",".join("?" * len(values[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", values)
        conn.commit()
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise RuntimeError(f"foreign key violations in the generated data: {problems[:5]}")
    finally:
        conn.close()
    os.replace(tmp, path)
    return {table: len(values) for table, values in rows.items()}


def run_sql(conn: sqlite3.Connection, sql: str, timeout: float = 1.0) -> list[tuple[Any, ...]] | None:
    """Rows of a query, or None when it fails or runs past `timeout` seconds (a half-trained model writes
    cross joins of every table: 165 million rows)."""
    deadline = time.monotonic() + timeout
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        return conn.execute(sql).fetchmany(10_000)
    except (sqlite3.Error, sqlite3.Warning):
        return None
    finally:
        conn.set_progress_handler(None, 0)


def open_read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


# --- the task: questions and the system prompt -----------------------------------------------------------


def load_questions(path: Path = HERE / "questions.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def system_prompt(manifest: Path = HERE / "taojob.yaml") -> str:
    """The system prompt the TAOJob renders every prompt with: the base model is pretrained behind it."""
    import yaml

    doc = yaml.safe_load(manifest.read_text())
    return doc["spec"]["generation"]["systemPrompt"].strip()


def render(system: str, question: str) -> str:
    """What the model sees, exactly as tao_trainer.models.render_prompt renders it for a model without a chat
    template: the system prompt, a newline, the question. The completion follows after one space."""
    return f"{system}\n{question}"


# --- synthetic pretraining pairs: templates over the schema ----------------------------------------------

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
TABLE_WORDS = {
    "customers": "customers",
    "products": "products",
    "orders": "orders",
    "order_items": "order lines",
}

Template = Callable[[random.Random, dict[str, list[Any]]], tuple[str, str]]


def _templates() -> list[Template]:
    """Question -> SQL generators. Their wording is deliberately unlike questions.jsonl ("Count the ...",
    "Give the ...", "Which ..."): the base model has to carry the SQL over to new phrasings, and often fails."""

    def pick(rng: random.Random, *options: str) -> str:
        return rng.choice(options)

    def t_count(rng, v):
        t = rng.choice(list(TABLE_WORDS))
        return pick(
            rng, f"Count the {TABLE_WORDS[t]}.", f"Give the number of {TABLE_WORDS[t]}."
        ), f"SELECT COUNT(*) FROM {t};"

    def t_city(rng, v):
        c = rng.choice(v["city"])
        return pick(
            rng, f"Which customers are from {c}?", f"Give the names of the customers in {c}."
        ), f"SELECT name FROM customers WHERE city = '{c}';"

    def t_country_count(rng, v):
        c = rng.choice(v["country"])
        return pick(
            rng, f"Count the customers from {c}.", f"Give the number of customers in {c}."
        ), f"SELECT COUNT(*) FROM customers WHERE country = '{c}';"

    def t_category(rng, v):
        c = rng.choice(v["category"])
        return pick(
            rng, f"Which products belong to the {c} category?", f"Give the {c} products."
        ), f"SELECT name FROM products WHERE category = '{c}';"

    def t_price(rng, v):
        p = rng.choice(v["product"])
        return pick(
            rng, f"Give the price of the {p}.", f"What does the {p} cost?"
        ), f"SELECT price FROM products WHERE name = '{p}';"

    def t_price_cmp(rng, v):
        x = rng.choice([10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 150, 200])
        word, op = rng.choice([("less than", "<"), ("more than", ">"), ("under", "<"), ("over", ">")])
        return (
            f"Which products cost {word} {x} euros?",
            f"SELECT name, price FROM products WHERE price {op} {x};",
        )

    def t_avg_price(rng, v):
        c = rng.choice(v["category"])
        agg, word = rng.choice([("AVG", "average"), ("MAX", "highest"), ("MIN", "lowest")])
        return (
            f"Give the {word} price of the {c} products.",
            f"SELECT {agg}(price) FROM products WHERE category = '{c}';",
        )

    def t_status(rng, v):
        s = rng.choice(v["status"])
        return pick(
            rng, f"Count the {s} orders.", f"Give the number of orders with status {s}."
        ), f"SELECT COUNT(*) FROM orders WHERE status = '{s}';"

    def t_top_price(rng, v):
        n = rng.randint(2, 10)
        word, order = rng.choice([("most expensive", "DESC"), ("cheapest", "ASC")])
        return (
            f"Give the {n} {word} products.",
            f"SELECT name, price FROM products ORDER BY price {order} LIMIT {n};",
        )

    def t_signup_year(rng, v):
        y = rng.choice(["2023", "2024"])
        return (
            f"Count the customers who signed up in {y}.",
            f"SELECT COUNT(*) FROM customers WHERE strftime('%Y', signup_date) = '{y}';",
        )

    def t_order_month(rng, v):
        y, m = rng.choice([(2024, m) for m in range(1, 13)] + [(2025, m) for m in range(1, 7)])
        return (
            f"Count the orders placed in {MONTHS[m - 1]} {y}.",
            f"SELECT COUNT(*) FROM orders WHERE strftime('%Y-%m', order_date) = '{y}-{m:02d}';",
        )

    def t_orders_of(rng, v):
        c = rng.choice(v["customer"])
        return pick(
            rng, f"Give the ids of the orders placed by {c}.", f"Which orders did {c} place?"
        ), f"SELECT o.id FROM orders AS o JOIN customers AS c ON c.id = o.customer_id WHERE c.name = '{c}';"

    def t_group_customers(rng, v):
        col = rng.choice(["city", "country"])
        return f"Count the customers per {col}.", f"SELECT {col}, COUNT(*) FROM customers GROUP BY {col};"

    def t_group_other(rng, v):
        return rng.choice(
            [
                ("Count the orders per status.", "SELECT status, COUNT(*) FROM orders GROUP BY status;"),
                (
                    "Count the products per category.",
                    "SELECT category, COUNT(*) FROM products GROUP BY category;",
                ),
                (
                    "Give the average price per category.",
                    "SELECT category, AVG(price) FROM products GROUP BY category;",
                ),
            ]
        )

    def t_stock(rng, v):
        n = rng.choice([5, 10, 20, 30, 50])
        return rng.choice(
            [
                ("Which products are out of stock?", "SELECT name FROM products WHERE stock = 0;"),
                (
                    f"Which products have fewer than {n} units in stock?",
                    f"SELECT name FROM products WHERE stock < {n};",
                ),
                (
                    f"Which products have more than {n} units in stock?",
                    f"SELECT name FROM products WHERE stock > {n};",
                ),
            ]
        )

    def t_units_sold(rng, v):
        p = rng.choice(v["product"])
        return f"Give the total quantity sold of the {p}.", (
            "SELECT SUM(oi.quantity) FROM order_items AS oi JOIN products AS p ON p.id = oi.product_id "
            f"WHERE p.name = '{p}';"
        )

    def t_revenue_group(rng, v):
        col = rng.choice(["category", "name"])
        return f"Give the revenue per product {col}.", (
            f"SELECT p.{col}, SUM(oi.quantity * oi.unit_price) FROM order_items AS oi JOIN products AS p "
            f"ON p.id = oi.product_id GROUP BY p.{col};"
        )

    def t_email(rng, v):
        c = rng.choice(v["customer"])
        return f"Give the email address of {c}.", f"SELECT email FROM customers WHERE name = '{c}';"

    def t_between(rng, v):
        d1 = _day(rng, FIRST_ORDER, LAST_ORDER - timedelta(days=40))
        d2 = d1 + timedelta(days=rng.randint(7, 40))
        return (
            f"Count the orders placed between {d1} and {d2}.",
            f"SELECT COUNT(*) FROM orders WHERE order_date BETWEEN '{d1}' AND '{d2}';",
        )

    def t_city_status(rng, v):
        c, s = rng.choice(v["city"]), rng.choice(v["status"])
        return f"Give the names of the customers from {c} with a {s} order.", (
            "SELECT DISTINCT c.name FROM customers AS c JOIN orders AS o ON o.customer_id = c.id "
            f"WHERE c.city = '{c}' AND o.status = '{s}';"
        )

    def t_top_customers(rng, v):
        n = rng.randint(2, 10)
        return f"Give the {n} customers with the most orders.", (
            "SELECT c.name, COUNT(*) AS n FROM customers AS c JOIN orders AS o ON o.customer_id = c.id "
            f"GROUP BY c.id ORDER BY n DESC LIMIT {n};"
        )

    def t_top_products(rng, v):
        n = rng.randint(2, 10)
        return f"Give the {n} best-selling products by quantity.", (
            "SELECT p.name, SUM(oi.quantity) AS units FROM products AS p JOIN order_items AS oi "
            f"ON oi.product_id = p.id GROUP BY p.id ORDER BY units DESC LIMIT {n};"
        )

    def t_recent(rng, v):
        n = rng.randint(2, 10)
        return (
            f"Give the {n} most recent orders.",
            f"SELECT id, order_date FROM orders ORDER BY order_date DESC LIMIT {n};",
        )

    def t_order_total(rng, v):
        o = rng.randint(1, N_ORDERS)
        return (
            f"Give the total of order {o}.",
            f"SELECT SUM(quantity * unit_price) FROM order_items WHERE order_id = {o};",
        )

    def t_signed_after(rng, v):
        d = _day(rng, FIRST_SIGNUP, LAST_SIGNUP)
        word, op = rng.choice([("after", ">"), ("before", "<")])
        return (
            f"Which customers signed up {word} {d}?",
            f"SELECT name FROM customers WHERE signup_date {op} '{d}';",
        )

    return [
        t_count,
        t_city,
        t_country_count,
        t_category,
        t_price,
        t_price_cmp,
        t_avg_price,
        t_status,
        t_top_price,
        t_signup_year,
        t_order_month,
        t_orders_of,
        t_group_customers,
        t_group_other,
        t_stock,
        t_units_sold,
        t_revenue_group,
        t_email,
        t_between,
        t_city_status,
        t_top_customers,
        t_top_products,
        t_recent,
        t_order_total,
        t_signed_after,
    ]


TEMPLATES = _templates()


def schema_values() -> dict[str, list[Any]]:
    rows = shop_rows()
    return {
        "city": sorted({c[3] for c in rows["customers"]}),
        "country": sorted({c[4] for c in rows["customers"]}),
        "customer": [c[1] for c in rows["customers"]],
        "product": [p[1] for p in rows["products"]],
        "category": sorted({p[2] for p in rows["products"]}),
        "status": [s for s, _ in STATUSES],
    }


def synthetic_pairs(rng: random.Random, n: int, exclude: set[str]) -> list[tuple[str, str]]:
    """n template pairs (question, sql) whose question is not in `exclude` (the task's own questions)."""
    values = schema_values()
    out: list[tuple[str, str]] = []
    while len(out) < n:
        q, sql = rng.choice(TEMPLATES)(rng, values)
        if q not in exclude:
            out.append((q, sql))
    return out


# --- model and tokenizer -----------------------------------------------------------------------------------

PAD, EOS = "<pad>", "<eos>"
VOCAB_SIZE = 1000
N_POSITIONS = 2048  # room for a judge request (~850 tokens) when the model stands in as the CPU judge


def build_tokenizer(corpus: list[str], system: str | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style) trained on the corpus: any text encodes, and a prompt followed by a
    completion that starts with a space tokenizes as the two apart (what TRL's prompt/completion SFT needs)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=N_POSITIONS,
    )
    if system is not None:
        # The whole system prompt is one token: a ~500-character schema then costs one position instead of
        # ~170, which makes CPU pretraining ~4x cheaper. Any other text still encodes byte by byte.
        tok.add_tokens([AddedToken(system, normalized=False, special=False)])
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
        n_positions=N_POSITIONS,
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
    model.loss_type = "ForCausalLM"
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.eos_token_id
    return model


# --- pretraining ------------------------------------------------------------------------------------------

BATCH_SIZE = 32
LEARNING_RATE = 2e-3
WARMUP_STEPS = 50
EVAL_EVERY = 100
MAX_STEPS = 300
MAX_NEW_TOKENS = 64
N_TRAIN_PAIRS = 20000
N_CHECK_PAIRS = 64


def encode_pairs(
    tok: PreTrainedTokenizerFast, system: str, pairs: list[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids + EOS) per pair."""
    prompts = tok([render(system, q) for q, _ in pairs], add_special_tokens=False)["input_ids"]
    completions = tok([" " + sql for _, sql in pairs], add_special_tokens=False)["input_ids"]
    return [(p, c + [tok.eos_token_id]) for p, c in zip(prompts, completions, strict=True)]


def batch_tensors(
    examples: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids, and labels on the completion (and EOS) only."""
    import torch

    width = max(len(p) + len(c) for p, c in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(examples):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p) : len(p) + len(c)] = torch.tensor(c)
    return ids, labels


def greedy_sql(
    model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, system: str, questions: list[str]
) -> list[str]:
    import torch

    model.eval()
    out: list[str] = []
    with torch.no_grad():
        for i in range(0, len(questions), 64):
            enc = tok(
                [render(system, q) for q in questions[i : i + 64]],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            gen = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train()
    return [t.strip() for t in out]


def check(
    model: Any,
    tok: Any,
    system: str,
    conn: sqlite3.Connection,
    pairs: list[tuple[str, str]],
    questions: list[str],
) -> dict[str, float]:
    """Greedy SQL on reserved template pairs (exact match, runs) and on the task's questions (runs only:
    no reference is read)."""
    got = greedy_sql(model, tok, system, [q for q, _ in pairs] + questions)
    mine, task = got[: len(pairs)], got[len(pairs) :]
    return {
        "template_exact": sum(g == s for g, (_, s) in zip(mine, pairs, strict=True)) / len(pairs),
        "template_runs": sum(run_sql(conn, g) is not None for g in mine) / len(mine),
        "task_runs": sum(run_sql(conn, g) is not None for g in task) / len(task),
    }


def pretrain(
    model: Any,
    tok: Any,
    system: str,
    seed: int,
    train: list[tuple[list[int], list[int]]],
    on_check: Callable[[int], dict[str, float]],
    max_steps: int,
) -> dict[str, float]:
    import torch

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP_STEPS) * max(0.1, 1 - s / max_steps)
    )
    model.train()
    stats: dict[str, float] = {}
    t0 = time.monotonic()
    for step in range(1, max_steps + 1):
        ids, labels = batch_tensors(rng.sample(train, BATCH_SIZE), tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % EVAL_EVERY == 0 or step == max_steps:
            stats = on_check(step)
            print(
                f"step {step:4d}  loss {loss.item():.3f}  template exact {stats['template_exact']:.2f} "
                f"runs {stats['template_runs']:.2f}  task questions run {stats['task_runs']:.2f}  "
                f"{time.monotonic() - t0:.0f}s",
                flush=True,
            )
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS, help="pretraining steps (batch 32)")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    db = out / "shop.sqlite"
    counts = build_database(db)
    print(f"database {db}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), flush=True)

    questions = load_questions()
    conn = open_read_only(db)
    for q in questions:  # every reference must run and return rows, or the question is not answerable
        if not run_sql(conn, q["reference_sql"]):
            raise SystemExit(f"questions.jsonl {q['id']}: reference_sql fails or returns no rows")
    with open(out / "prompts.jsonl", "w") as f:
        for q in questions:
            f.write(
                json.dumps({"prompt": q["question"], "qid": q["id"], "reference_sql": q["reference_sql"]})
                + "\n"
            )
    print(f"{len(questions)} questions -> {out / 'prompts.jsonl'}", flush=True)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    system = system_prompt()
    task_questions = {q["question"] for q in questions}
    rng = random.Random(args.seed)
    pairs = synthetic_pairs(rng, N_TRAIN_PAIRS + N_CHECK_PAIRS, exclude=task_questions)
    train_pairs, check_pairs = pairs[:N_TRAIN_PAIRS], pairs[N_TRAIN_PAIRS:]
    # The tokenizer sees the system prompt, the template pairs and the (unlabeled) task questions.
    corpus = [system] + [f"{q} {s}" for q, s in train_pairs] + sorted(task_questions)
    tok = build_tokenizer(corpus, system)
    model = build_model(tok)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tok)}", flush=True)
    train = encode_pairs(tok, system, train_pairs)
    p, c = train[0]
    assert (
        tok(render(system, train_pairs[0][0]) + " " + train_pairs[0][1], add_special_tokens=False)[
            "input_ids"
        ]
        == p + c[:-1]
    ), "prompt + completion must tokenize as the two apart"

    def on_check(step: int) -> dict[str, float]:
        return check(model, tok, system, conn, check_pairs, [q["question"] for q in questions])

    stats = pretrain(model, tok, system, args.seed, train, on_check, args.max_steps)
    conn.close()

    model_dir = out / "base-model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    portable_tokenizer_class(model_dir)
    print(
        f"base model {model_dir}: greedy SQL runs on {stats['task_runs']:.0%} of the task's questions "
        f"({stats['template_exact']:.0%} exact on held-back template pairs)"
    )
    print(f"total {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()

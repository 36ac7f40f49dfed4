"""The `sql` scorer: good, wrong, slow and hostile queries against a small SQLite database.

Every test that runs queries goes through the `shop` fixture, which checks at teardown that the
database file (content and mtime) is exactly as it was.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tao_trainer.scorers import SqlScorer, build_scorer
from tao_trainer.scorers.base import ScorerError
from tao_trainer.scorers.sql import open_read_only, run_query


def _fingerprint(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_size


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Path]:
    """users(id, name, age) and orders(id, user_id, total); unchanged at the end of the test."""
    db = tmp_path / "data" / "shop.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER);
            CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), total REAL);
            INSERT INTO users VALUES (1, 'ada', 36), (2, 'bob', 25), (3, 'cy', 41);
            INSERT INTO orders VALUES (1, 1, 10.5), (2, 1, 0.1), (3, 3, 0.2), (4, 2, 7.0);
            """
        )
    conn.close()
    before = _fingerprint(db)
    yield db
    assert _fingerprint(db) == before, "the database changed"


def scorer_for(db: Path | str, **fields: Any) -> SqlScorer:
    return SqlScorer(database=str(db), **fields)


def test_good_empty_and_broken_queries(shop: Path) -> None:
    scorer = scorer_for(shop)
    completions = [
        "SELECT name FROM users WHERE age > 30",
        "Here it is:\n```sql\nSELECT name FROM users WHERE age > 30;\n```\nThis lists users over 30.",
        "SELECT name FROM users WHERE age > 99",
        "SELECT nam FROM users",
        "I cannot answer that.",
        "",
    ]
    detailed = scorer.detailed(["q"] * 6, completions)
    assert detailed.values == [1.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    assert detailed.details is not None
    assert detailed.details[0] == {"executes": True, "rows": 2, "matchesReference": None, "error": None}
    assert detailed.details[2]["rows"] == 0
    assert detailed.details[3]["executes"] is False and "no such column" in detailed.details[3]["error"]
    assert detailed.details[5]["error"] == "no query found"
    assert scorer.stats == {"executed": 3, "errors": 3}


def test_reference_match_mismatch_and_normalisation(shop: Path) -> None:
    scorer = scorer_for(shop)
    reference = "SELECT u.name, SUM(o.total) FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.name"
    completions = [
        # Same rows, other order, other column names, and float sums that differ in the last bits.
        "SELECT name AS who, total FROM (SELECT u.name, SUM(o.total) AS total FROM orders o "
        "JOIN users u ON u.id = o.user_id GROUP BY u.name) ORDER BY total",
        "SELECT 'ada', 10.6 UNION ALL SELECT 'bob', 7 UNION ALL SELECT 'cy', 0.2",  # literal rows, 7 == 7.0
        "SELECT u.name, SUM(o.total) FROM users u JOIN orders o ON o.user_id = u.id WHERE u.age > 30 GROUP BY u.name",
        "SELECT u.name, SUM(o.total) FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.name, o.id",
        "SELECT nope FROM users",
    ]
    detailed = scorer.detailed(["q"] * 5, completions, reference_sql=[reference] * 5)
    assert detailed.values == [1.0, 1.0, 0.1, 0.1, 0.0]
    assert [d["matchesReference"] for d in detailed.details] == [True, True, False, False, None]


def test_multiset_versus_order(shop: Path) -> None:
    reference = "SELECT name FROM users ORDER BY age"
    completions = ["SELECT name FROM users ORDER BY age DESC", "SELECT name FROM users ORDER BY age"]
    assert scorer_for(shop)(["q", "q"], completions, reference_sql=[reference] * 2) == [1.0, 1.0]
    ordered = scorer_for(shop, order_matters=True)
    assert ordered(["q", "q"], completions, reference_sql=[reference] * 2) == [0.1, 1.0]
    # Duplicates count: a multiset, not a set.
    doubled = "SELECT name FROM users UNION ALL SELECT name FROM users"
    assert scorer_for(shop)(["q"], [doubled], reference_sql=["SELECT name FROM users"]) == [0.1]


def test_broken_reference_is_no_judgement(shop: Path) -> None:
    scorer = scorer_for(shop, reference_field="gold")
    detailed = scorer.detailed(
        ["q", "q", "q"],
        ["SELECT 1", "SELECT nope", "SELECT 1"],
        gold=["SELECT * FROM missing_table", "SELECT * FROM missing_table", None],
    )
    # A broken reference judges no one; the candidate that fails on its own still gets 0; a record
    # without a reference falls back to "returns rows".
    assert detailed.values == [None, 0.0, 1.0]
    assert "reference query failed" in detailed.details[0]["error"]
    assert scorer.stats["referenceErrors"] == 1  # the same reference runs once per batch


def test_max_rows(shop: Path) -> None:
    scorer = scorer_for(shop, max_rows=2)
    detailed = scorer.detailed(
        ["q", "q"], ["SELECT * FROM orders"] * 2, reference_sql=[None, "SELECT * FROM orders"]
    )
    assert detailed.values[0] == 1.0 and detailed.details[0]["rows"] == 3  # maxRows + 1 fetched
    assert detailed.values[1] is None  # a reference over maxRows cannot be compared
    result = run_query(shop, "SELECT * FROM orders", timeout=5, max_rows=2)
    assert result.truncated and len(result.rows or []) == 2


def test_infinite_recursive_query_times_out(shop: Path) -> None:
    scorer = scorer_for(shop, timeout_seconds=1)
    endless = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
    start = time.monotonic()
    detailed = scorer.detailed(["q"], [endless])
    elapsed = time.monotonic() - start
    assert detailed.values == [0.0]
    assert detailed.details[0]["error"] == "timeout after 1 s"
    assert scorer.stats == {"errors": 1, "timeouts": 1}
    assert elapsed < 2.0
    # A huge result set is cut at maxRows + 1 rows rather than read whole.
    rows = scorer_for(shop, max_rows=5)(
        ["q"], ["WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r"]
    )
    assert rows == [1.0]


HOSTILE = [
    "INSERT INTO users VALUES (9, 'eve', 1)",
    "UPDATE users SET name = 'eve'",
    "DELETE FROM orders",
    "DROP TABLE users",
    "CREATE TABLE evil (x)",
    "CREATE TEMP TABLE evil (x)",
    "ALTER TABLE users ADD COLUMN evil TEXT",
    "REPLACE INTO users VALUES (1, 'eve', 1)",
    "ATTACH DATABASE '{tmp}/evil.db' AS evil",
    "VACUUM INTO '{tmp}/copy.db'",
    "PRAGMA writable_schema = ON",
    "PRAGMA query_only = OFF",
    "PRAGMA journal_mode = DELETE",
    "BEGIN",
    "SELECT 1; DROP TABLE users",
    "SELECT 1; ATTACH DATABASE '{tmp}/evil.db' AS evil",
    "SELECT load_extension('/tmp/evil')",
    "CREATE VIEW v AS SELECT 1",
    "CREATE TRIGGER t AFTER INSERT ON users BEGIN DELETE FROM orders; END",
    "REINDEX",
    "ANALYZE",
    "WITH x AS (SELECT 1) DELETE FROM users",
    "SELECT name FROM pragma_table_info('users')",  # sets up a virtual table: refused, harmless
    "-- only a comment",
]


@pytest.mark.parametrize("statement", HOSTILE)
def test_hostile_statements_score_zero_and_change_nothing(shop: Path, tmp_path: Path, statement: str) -> None:
    scorer = scorer_for(shop)
    query = statement.format(tmp=tmp_path)
    detailed = scorer.detailed(["q"], [query])
    assert detailed.values == [0.0], detailed.details
    assert detailed.details[0]["executes"] is False
    assert scorer.stats.get("executed", 0) == 0
    assert scorer.stats["denied"] == 1, detailed.details
    private = scorer.database_path()
    assert private != shop and private.read_bytes() == shop.read_bytes()
    assert not (tmp_path / "evil.db").exists() and not (tmp_path / "copy.db").exists()


def test_read_only_pragmas_and_schema_queries_allowed(shop: Path) -> None:
    scorer = scorer_for(shop)
    completions = [
        "PRAGMA table_info(users)",
        "PRAGMA index_list(orders)",
        "SELECT name FROM sqlite_master WHERE type = 'table'",
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 5) SELECT x FROM r",
        "SELECT upper(name), length(name), abs(-age) FROM users",
    ]
    assert scorer(["q"] * 5, completions) == [1.0, 0.5, 1.0, 1.0, 1.0]


def test_authorizer_alone_refuses_writes(tmp_path: Path) -> None:
    # The authorizer and query_only hold even if the file itself were writable.
    db = tmp_path / "w.db"
    sqlite3.connect(db).close()
    conn, denials = open_read_only(db)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert denials


def test_database_from_s3(s3_admin: Any, s3_bucket: str, shop: Path, tmp_path: Path) -> None:
    s3_admin.put_object(Bucket=s3_bucket, Key="dbs/shop.db", Body=shop.read_bytes())
    scorer = build_scorer(
        {"type": "sql", "database": f"s3://{s3_bucket}/dbs/shop.db", "extract": r"<sql>(.*?)</sql>"}
    )
    assert scorer(["q", "q"], ["<sql>SELECT name FROM users</sql>", "SELECT name FROM users"]) == [1.0, 0.0]
    # Downloaded once, then reused.
    path = scorer.database_path()
    assert scorer(["q"], ["<sql>SELECT 1</sql>"]) == [1.0] and scorer.database_path() == path
    assert oct(path.stat().st_mode & 0o777) == "0o400"


def test_relative_database_path_and_pickle(shop: Path) -> None:
    scorer = SqlScorer.from_spec(
        SqlScorer.spec_model.model_validate({"type": "sql", "database": "shop.db"}), base_dir=shop.parent
    )
    assert scorer(["q"], ["SELECT count(*) FROM users"]) == [1.0]
    clone = pickle.loads(pickle.dumps(scorer))
    assert clone(["q"], ["SELECT count(*) FROM orders"]) == [1.0]
    assert clone.database_path() != scorer.database_path()  # each copy of the scorer has its own copy


def test_missing_or_invalid_database(tmp_path: Path) -> None:
    with pytest.raises(ScorerError, match="not found"):
        scorer_for(tmp_path / "absent.db")(["q"], ["SELECT 1"])
    not_sqlite = tmp_path / "text.db"
    not_sqlite.write_text("hello, this is not a database")
    with pytest.raises(ScorerError, match="not a SQLite database"):
        scorer_for(not_sqlite)(["q"], ["SELECT 1"])


def test_private_copy_removed_with_scorer(shop: Path) -> None:
    scorer = scorer_for(shop)
    path = scorer.database_path()
    assert path.exists()
    del scorer
    import gc

    gc.collect()
    assert not path.parent.exists()


def test_mismatched_reference_column(shop: Path) -> None:
    with pytest.raises(ValueError, match="reference_sql"):
        scorer_for(shop)(["q", "q"], ["SELECT 1", "SELECT 1"], reference_sql=["SELECT 1"])


def test_private_copy_is_not_the_users_file(shop: Path) -> None:
    scorer = scorer_for(shop)
    scorer(["q"], ["SELECT 1"])
    assert not os.path.samefile(scorer.database_path(), shop)

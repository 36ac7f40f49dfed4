"""Hostile regexes and SQL: rejected at validation with a clear message, or contained at run time."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from tao_trainer.safe_regex import RegexTimeout, UserRegex
from tao_trainer.scorers import build_scorer
from tao_trainer.scorers.sql import SqlScorer, run_query
from tao_trainer.stages.evaluate import extract_answer

CATASTROPHIC = [r"(a+)+$", r"(a|a)*", r"(.*)*", r"(\w+\s?)+$", r"(x+x+)+y", r"((a+)b?)+", r"(a*)*"]
FINE = [r"ANSWER:\s*(-?\d+)", r"(\d+,)*\d+", r"(?:cat|dog)+", r"<sql>(.*?)</sql>", r"(?>a+)+"]
# Slow without being one of the rejected shapes: only the run-time budget stops these.
SLOW_BUT_ACCEPTED = r"\d+\d+\d+[^\d]"  # cubic: the static check lets it through


@pytest.mark.parametrize("pattern", CATASTROPHIC)
@pytest.mark.parametrize(
    "family", [("regex", "pattern"), ("majority", "extract"), ("sql", "extract"), ("python_tests", "extract")]
)
def test_catastrophic_patterns_are_rejected_with_a_clear_message(
    pattern: str, family: tuple[str, str]
) -> None:
    kind, field = family
    extra = {"database": "x.db"} if kind == "sql" else {}
    with pytest.raises((ValidationError, ValueError), match="exponential time"):
        build_scorer({"type": kind, field: pattern, **extra})


def test_json_field_check_patterns_are_validated() -> None:
    with pytest.raises((ValidationError, ValueError), match="exponential time"):
        build_scorer({"type": "json", "checks": [{"path": "a", "pattern": r"(a|a)*"}]})


@pytest.mark.parametrize("pattern", FINE)
def test_ordinary_patterns_pass(pattern: str) -> None:
    build_scorer({"type": "regex", "pattern": pattern})


def test_the_run_time_budget_abstains_and_counts() -> None:
    hostile = "1" * 5000
    start = time.monotonic()
    scorer = build_scorer({"type": "regex", "pattern": SLOW_BUT_ACCEPTED, "mode": "search"})
    assert scorer(["q"], [hostile]) == [None]
    assert scorer.stats["regexTimeouts"] == 1
    majority = build_scorer({"type": "majority", "extract": SLOW_BUT_ACCEPTED})
    assert majority(["q", "q"], [hostile, hostile]) == [None, None]
    assert majority.stats["regexTimeouts"] >= 2
    assert extract_answer(hostile, SLOW_BUT_ACCEPTED) is None
    with pytest.raises(RegexTimeout):
        UserRegex(SLOW_BUT_ACCEPTED, budget=0.05).search(hostile)
    assert time.monotonic() - start < 10  # 4 budgets of 0.25 s, with generous slack on busy machines


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    conn.close()
    return path


def test_sql_result_byte_budget(database: Path) -> None:
    # 100 rows x 100 x 1 MiB would be ~10 GiB; the budget stops it at a few MiB.
    query = "SELECT zeroblob(1048576) FROM t a, t b"
    start = time.monotonic()
    result = run_query(database, query, timeout=30, max_rows=100_000, max_bytes=8 << 20)
    assert not result.ok and result.too_large and "larger than" in (result.error or "")
    assert time.monotonic() - start < 10


def test_sql_memory_error_scores_zero_and_the_stage_goes_on(database: Path, monkeypatch) -> None:
    import tao_trainer.scorers.sql as sql

    real = sql._fetch

    def exhausted(cursor, max_rows, max_bytes):  # type: ignore[no-untyped-def]
        if "boom" in str(cursor.description):
            raise MemoryError
        return real(cursor, max_rows, max_bytes)

    monkeypatch.setattr(sql, "_fetch", exhausted)
    scorer = SqlScorer(database=str(database))
    assert scorer(["q", "q"], ["SELECT x AS boom FROM t", "SELECT x FROM t"]) == [0.0, 1.0]
    assert scorer.stats["memoryErrors"] == 1


def test_sql_attach_and_writes_are_denied(database: Path) -> None:
    for query in (f"ATTACH '{database}.evil' AS e", "VACUUM INTO '/tmp/x.db'", "DELETE FROM t"):
        assert not run_query(database, query, timeout=5, max_rows=10).ok
    assert not Path(f"{database}.evil").exists()

"""Executable SQL: run each candidate query against a SQLite database, strictly read-only.

Text-to-SQL is the classic task where a verifier beats a judge: a query either runs and returns the
right rows or it does not. Four layers keep the database intact, each enough on its own for the
statements it covers:

1. the scorer works on a private copy of the database (downloaded once per scorer, mode 0400), so
   even a bypass of everything below cannot change the user's file;
2. the copy is opened through a `file:...?mode=ro&immutable=1` URI;
3. `PRAGMA query_only=ON`;
4. an authorizer that allows reads only: SELECT, reading columns, recursive CTEs, functions (but
   not `load_extension`), and a few read-only PRAGMAs (`PRAGMA table_info(t)`, `index_list`, ...).
   Writes, DDL, ATTACH (and so `VACUUM INTO`), transactions and state-changing PRAGMAs are denied
   when the statement is prepared, before anything runs. (Table-valued pragma functions such as
   `pragma_table_info('t')` are denied too: SQLite asks to update the schema table to set them up.)
   A statement that returns no columns is refused as "not a query".

A query also gets a deadline (a progress handler interrupts it, and a timer calls
`Connection.interrupt` half a second later should one VM step run long), at most `maxRows + 1` rows
are fetched, values may not grow past a few MiB, the rows fetched may not add up to more than
`MAX_RESULT_BYTES` (64 MiB: an error, so 0, for the candidate), and only one statement is accepted. A
MemoryError while running or fetching one query scores that candidate 0 (counted as `memoryErrors`);
the stage goes on. A user's `extract` pattern that runs past its time budget gives None
(`regexTimeouts`).

Scores (see `SqlSpec`): without a reference query, rows -> 1.0, runs with no rows -> 0.5, fails -> 0.0.
With a reference query in the record (`referenceField`): the same result set -> 1.0, a different one
-> 0.1, fails -> 0.0. Result sets are compared as multisets of rows unless `orderMatters`; column
names do not matter; floats compare rounded to 6 decimal places and 2.0 equals 2. A reference query
that fails gives no judgement (None), not a 0 for the candidate.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tao_trainer.safe_regex import RegexTimeout
from tao_trainer.spec import SqlSpec

from .. import storage
from .base import Detail, Detailed, Score, Scorer, ScorerError, completion_text
from .code import extract_code

__all__ = ["QueryResult", "SqlScorer", "normalize_row", "open_read_only", "run_query"]

SCORE_MATCH = 1.0
SCORE_ROWS = 1.0
SCORE_NO_ROWS = 0.5
SCORE_MISMATCH = 0.1
SCORE_ERROR = 0.0

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Every VM step count between deadline checks: ~microseconds, so a timeout is overshot by very little.
_PROGRESS_STEPS = 1000
_INTERRUPT_GRACE = 0.5
_MAX_VALUE_BYTES = 8 << 20
_MAX_SQL_BYTES = 1 << 20
MAX_RESULT_BYTES = 64 << 20
_FETCH_CHUNK = 256
_ROW_OVERHEAD = 64  # bytes counted per row and per value beyond the value's own size
_ERROR_CHARS = 200

_ALLOWED_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_DENIED_FUNCTIONS = frozenset({"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"})
# PRAGMAs that only report on the schema, whatever their argument.
_READ_ONLY_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "collation_list",
        "function_list",
    }
)


class QueryResult:
    """What running one query gave: rows (normalized) or an error, and how it failed."""

    __slots__ = ("denied", "error", "memory_error", "rows", "timed_out", "too_large", "truncated")

    def __init__(
        self,
        rows: list[tuple[Any, ...]] | None = None,
        error: str | None = None,
        *,
        truncated: bool = False,
        timed_out: bool = False,
        denied: bool = False,
        memory_error: bool = False,
        too_large: bool = False,
    ) -> None:
        self.rows = rows
        self.error = error
        self.truncated = truncated
        self.timed_out = timed_out
        self.denied = denied
        self.memory_error = memory_error
        self.too_large = too_large

    @property
    def ok(self) -> bool:
        return self.error is None

    def __repr__(self) -> str:
        if self.error is not None:
            return f"QueryResult(error={self.error!r})"
        return f"QueryResult(rows={self.rows!r}{', truncated=True' if self.truncated else ''})"


def _normalize_value(value: Any) -> Any:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        return round(value, 6)
    return value


def normalize_row(row: Sequence[Any]) -> tuple[Any, ...]:
    """A row with floats rounded to 6 places and integral floats as ints, so that AVG(x) = 2.0
    matches a reference computing 2, and 0.1 + 0.2 matches 0.3.

    >>> normalize_row((2.0, 0.1 + 0.2, "a", None, 7))
    (2, 0.3, 'a', None, 7)
    """
    return tuple(_normalize_value(value) for value in row)


def _authorizer(denials: list[str]) -> Any:
    def authorize(action: int, arg1: str | None, arg2: str | None, db: str | None, source: str | None) -> int:
        if action in _ALLOWED_ACTIONS:
            if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").casefold() in _DENIED_FUNCTIONS:
                denials.append(f"function {arg2}")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").casefold() in _READ_ONLY_PRAGMAS:
            return sqlite3.SQLITE_OK
        denials.append(f"action {action} {arg1 or ''}".strip())
        return sqlite3.SQLITE_DENY

    return authorize


def open_read_only(path: Path | str) -> tuple[sqlite3.Connection, list[str]]:
    """A connection that can only read `path`, and the list its authorizer appends denials to.

    Read-only three times over: a `mode=ro&immutable=1` URI, `PRAGMA query_only`, and an authorizer
    that allows nothing but reads. No database may be attached, and no value may exceed a few MiB.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro&immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, _MAX_SQL_BYTES)
        denials: list[str] = []
        conn.set_authorizer(_authorizer(denials))
    except BaseException:
        conn.close()
        raise
    return conn, denials


def _short(message: str) -> str:
    message = " ".join(message.split())
    return message if len(message) <= _ERROR_CHARS else message[: _ERROR_CHARS - 3] + "..."


def _strip_terminators(query: str) -> str:
    query = query.strip()
    while query.endswith(";"):
        query = query[:-1].rstrip()
    return query


def _value_bytes(value: Any) -> int:
    if isinstance(value, str | bytes):
        return len(value) + _ROW_OVERHEAD
    return _ROW_OVERHEAD


def _fetch(cursor: sqlite3.Cursor, max_rows: int, max_bytes: int) -> list[Any] | None:
    """Up to `max_rows + 1` rows, or None once they add up to more than `max_bytes`."""
    fetched: list[Any] = []
    total = 0
    while len(fetched) <= max_rows:
        chunk = cursor.fetchmany(min(_FETCH_CHUNK, max_rows + 1 - len(fetched)))
        if not chunk:
            break
        for row in chunk:
            total += _ROW_OVERHEAD + sum(_value_bytes(value) for value in row)
        if total > max_bytes:
            return None
        fetched.extend(chunk)
    return fetched


def run_query(
    path: Path | str, query: str, *, timeout: float, max_rows: int, max_bytes: int = MAX_RESULT_BYTES
) -> QueryResult:
    """Run one query read-only against the SQLite file at `path`, within `timeout` seconds.

    Returns at most `max_rows` rows (`truncated` tells whether there were more) adding up to at most
    `max_bytes`; never raises for a bad query (nor a MemoryError), only for a database that cannot
    be opened.
    """
    query = _strip_terminators(query)
    if not query:
        return QueryResult(error="no query found")
    conn, denials = open_read_only(path)
    deadline = time.monotonic() + timeout
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1  # nonzero interrupts the statement
        return 0

    def interrupt() -> None:
        # A backstop for a single long VM step (a big sort) between two progress callbacks.
        nonlocal timed_out
        timed_out = True
        with contextlib.suppress(sqlite3.Error):
            conn.interrupt()

    conn.set_progress_handler(progress, _PROGRESS_STEPS)
    timer = threading.Timer(timeout + _INTERRUPT_GRACE, interrupt)
    timer.daemon = True
    timer.start()
    try:
        cursor = conn.execute(query)
        if cursor.description is None:
            return QueryResult(error="not a query: the statement returns no columns", denied=True)
        fetched = _fetch(cursor, max_rows, max_bytes)
        if fetched is None:
            return QueryResult(error=f"result larger than {max_bytes >> 20} MiB", too_large=True)
    except MemoryError:
        return QueryResult(error="MemoryError: the query's result does not fit in memory", memory_error=True)
    except (sqlite3.Error, sqlite3.Warning) as exc:
        message = str(exc)
        if timed_out:
            return QueryResult(error=f"timeout after {timeout:g} s", timed_out=True)
        if "one statement at a time" in message:
            return QueryResult(error="only one statement is allowed", denied=True)
        if denials:
            return QueryResult(error=_short(f"not allowed (read-only): {denials[0]}"), denied=True)
        return QueryResult(error=_short(f"{type(exc).__name__}: {message}"))
    finally:
        timer.cancel()
        timer.join()
        conn.close()
    truncated = len(fetched) > max_rows
    try:
        rows = [normalize_row(row) for row in fetched[:max_rows]]
    except MemoryError:
        return QueryResult(error="MemoryError: the query's result does not fit in memory", memory_error=True)
    return QueryResult(rows, truncated=truncated)


def same_result(
    candidate: Sequence[tuple[Any, ...]], reference: Sequence[tuple[Any, ...]], order_matters: bool
) -> bool:
    """Equal row lists (`order_matters`) or equal multisets of rows.

    >>> same_result([(1,), (2,)], [(2,), (1,)], order_matters=False)
    True
    >>> same_result([(1,), (2,)], [(2,), (1,)], order_matters=True)
    False
    >>> same_result([(1,), (1,)], [(1,)], order_matters=False)
    False
    """
    if order_matters:
        return list(candidate) == list(reference)
    return len(candidate) == len(reference) and Counter(candidate) == Counter(reference)


class SqlScorer(Scorer[SqlSpec]):
    """Runs each candidate's SQL read-only against a SQLite database; see the module docstring.

    Details per completion: `{"executes", "rows", "matchesReference", "error"}` (`rows` is the
    number fetched, at most maxRows + 1; `matchesReference` is None without a reference).
    Counters: executed, errors (timeouts and denials included), timeouts, denied, memoryErrors,
    resultTooLarge, regexTimeouts, referenceErrors.

    Example (a database built on the spot):

    ```python
    >>> import sqlite3, tempfile, os
    >>> db = os.path.join(tempfile.mkdtemp(), "shop.db")
    >>> with sqlite3.connect(db) as conn:
    ...     _ = conn.execute("CREATE TABLE items (name TEXT, price REAL)")
    ...     _ = conn.executemany("INSERT INTO items VALUES (?, ?)", [("pen", 1.5), ("ink", 4.0)])
    >>> conn.close()
    >>> scorer = SqlScorer(database=db)
    >>> completions = ["```sql\\nSELECT name FROM items WHERE price > 2;\\n```",
    ...                "SELECT name FROM items WHERE price > 9", "SELECT nme FROM items", "DROP TABLE items"]
    >>> scorer(["q"] * 4, completions)
    [1.0, 0.5, 0.0, 0.0]
    >>> scorer(["q", "q"], ["SELECT name FROM items WHERE price > 2", "SELECT name FROM items"],
    ...        reference_sql=["SELECT 'ink'"] * 2)
    [1.0, 0.1]
    >>> scorer.stats["denied"]
    1

    ```
    """

    spec_model = SqlSpec
    scorer_type = "sql"

    def __init__(
        self, spec: SqlSpec | None = None, /, *, base_dir: Path | None = None, **fields: Any
    ) -> None:
        super().__init__(spec, **fields)
        self.base_dir = base_dir
        self._lock = threading.Lock()
        self._db_path: Path | None = None

    @classmethod
    def from_spec(cls, spec: SqlSpec, *, base_dir: Path | None = None) -> SqlScorer:
        return cls(spec, base_dir=base_dir)

    def _database_uri(self) -> str:
        database = self.spec.database
        if "://" not in database and not Path(database).is_absolute() and self.base_dir is not None:
            return str(Path(self.base_dir) / database)
        return database

    def database_path(self) -> Path:
        """The scorer's private, read-only copy of the database (made on first use)."""
        with self._lock:
            if self._db_path is None:
                self._db_path = self._copy_database()
            return self._db_path

    def _copy_database(self) -> Path:
        uri = self._database_uri()
        workdir = Path(tempfile.mkdtemp(prefix="tao-sql-"))
        # The copy goes when the scorer does (and at interpreter exit at the latest).
        weakref.finalize(self, shutil.rmtree, workdir, True)
        target = workdir / "database.sqlite"
        try:
            with storage.open_read(uri) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        except FileNotFoundError:
            raise ScorerError(f"scorer {self.name!r}: database {uri!r} not found") from None
        with open(target, "rb") as f:
            header = f.read(len(_SQLITE_MAGIC))
        if header != _SQLITE_MAGIC and target.stat().st_size > 0:
            raise ScorerError(f"scorer {self.name!r}: {uri!r} is not a SQLite database")
        target.chmod(0o400)
        return target

    def _run(self, query: str) -> QueryResult:
        return run_query(
            self.database_path(), query, timeout=self.spec.timeout_seconds, max_rows=self.spec.max_rows
        )

    def _detailed(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> Detailed:
        references = kwargs.get(self.spec.reference_field)
        if references is not None and len(references) != len(completions):
            raise ValueError(
                f"scorer {self.name!r}: got {len(references)} values of {self.spec.reference_field!r} "
                f"for {len(completions)} completions"
            )
        reference_results: dict[str, QueryResult] = {}
        values: list[Score] = []
        details: list[Detail] = []
        for index, completion in enumerate(completions):
            try:
                query = extract_code(completion_text(completion), self.spec.extract, language="sql")
            except RegexTimeout as exc:  # the extract pattern ran out of time: no judgement
                self.count("regexTimeouts")
                values.append(None)
                details.append({"executes": None, "rows": None, "matchesReference": None, "error": str(exc)})
                continue
            result = self._run(query)
            self._count_candidate(result)
            detail: dict[str, Any] = {
                "executes": result.ok,
                "rows": None if result.rows is None else len(result.rows) + int(result.truncated),
                "matchesReference": None,
                "error": result.error,
            }
            reference = references[index] if references is not None else None
            if not isinstance(reference, str) or not reference.strip():
                values.append(SCORE_ERROR if not result.ok else SCORE_ROWS if result.rows else SCORE_NO_ROWS)
                details.append(detail)
                continue
            expected = reference_results.get(reference)
            if expected is None:
                expected = reference_results[reference] = self._run(reference)
                if not expected.ok or expected.truncated:
                    self.count("referenceErrors")
            if not result.ok:
                values.append(SCORE_ERROR)
            elif not expected.ok or expected.truncated:
                values.append(None)  # no judgement: the record's reference is broken, not the candidate
                detail["error"] = _short(
                    "reference query failed: "
                    + (expected.error or f"returns more than {self.spec.max_rows} rows")
                )
            else:
                assert result.rows is not None and expected.rows is not None
                match = not result.truncated and same_result(
                    result.rows, expected.rows, self.spec.order_matters
                )
                detail["matchesReference"] = match
                values.append(SCORE_MATCH if match else SCORE_MISMATCH)
            details.append(detail)
        return Detailed(values, details)

    def _count_candidate(self, result: QueryResult) -> None:
        if result.ok:
            self.count("executed")
            return
        self.count("errors")
        if result.timed_out:
            self.count("timeouts")
        if result.denied:
            self.count("denied")
        if result.memory_error:
            self.count("memoryErrors")
        if result.too_large:
            self.count("resultTooLarge")

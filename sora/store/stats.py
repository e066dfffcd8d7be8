"""Figures over the invocation records: per function calls, errors, p50/p99 latency and cold
starts over a time window (`summary`), and the same in equal time buckets for charts (`series`).

What the dashboard's pages, `GET /api/stats` and `sora top` show. A record belongs to the
window its `start` falls in. Errors are records whose status is not `ok` (error, timeout,
crashed). Percentiles are exact, by nearest rank over the window's durations: the p-th is the
ceil(p/100 * n)-th smallest of n, so p50 and p99 are durations some call really took.

Each function's rows come from the covering index `invocations_by_function_start` (function,
start, duration_ms, status, cold; sora.store.db), never from the table: a day of 100,000
records is summed in ~0.1 s, an hour in a few ms (bench/dashboard.py), and the functions are
found by one index seek each. Sorting the durations in Python measured faster than SQLite's
window functions (ROW_NUMBER() OVER ...) or ORDER BY ... LIMIT 1 OFFSET k per percentile.

On PostgreSQL (sora.store.backend) the same queries run (the counts written with CASE, which
both dialects take), a summary's in one REPEATABLE READ transaction.
"""
from __future__ import annotations

import contextlib
import math
import time

from .backend import Connection

PERCENTILES = (50, 99)

_WINDOW = "FROM invocations WHERE function = ? AND start >= ? AND start < ?"
_COUNTS = (f"SELECT COUNT(*), SUM(CASE WHEN status <> 'ok' THEN 1 ELSE 0 END), "
           f"SUM(CASE WHEN cold <> 0 THEN 1 ELSE 0 END) {_WINDOW}")
_DURATIONS = f"SELECT duration_ms {_WINDOW}"
_ROWS = f"SELECT start, duration_ms, status, cold {_WINDOW}"


def _plain(conn: Connection):
    """What runs a figure query: on SQLite a cursor giving tuples (the store's connections make
    sqlite3.Row objects, which cost more than the rest of a summary's work per row); on
    PostgreSQL the connection (its rows are tuples already)."""
    if conn.dialect != "sqlite":
        return conn
    cursor = conn.cursor()
    cursor.row_factory = None
    return cursor


@contextlib.contextmanager
def _snapshot(conn: Connection):
    """One read transaction over the queries of a summary (WAL: the recorder's commits go on
    meanwhile; PostgreSQL: REPEATABLE READ, one snapshot for every statement), so a
    function's counts and durations are of the same records."""
    if conn.in_transaction:
        yield
        return
    if conn.dialect != "sqlite":
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _figures(durations: list[float], errors: int, cold: int) -> dict:
    """One group's figures; `durations` is sorted here."""
    durations.sort()
    n = len(durations)
    figures = {"calls": n, "errors": errors}
    for p in PERCENTILES:
        figures[f"p{p}"] = round(durations[math.ceil(n * p / 100) - 1], 3) if n else None
    figures["coldStarts"] = cold
    return figures


def empty() -> dict:
    """The figures of a window without calls."""
    return _figures([], 0, 0)


def _group(rows) -> tuple[list[float], int, int]:
    durations, errors, cold = [], 0, 0
    for _start, duration, status, was_cold in rows:
        durations.append(duration)
        errors += status != "ok"
        cold += bool(was_cold)
    return durations, errors, cold


def summary(conn: Connection, since: float,
            until: float | None = None) -> dict[str, dict]:
    """{function: {"calls", "errors", "p50", "p99", "coldStarts"}} over [since, until)
    (errors = status != 'ok'; p50/p99 in ms, None with no calls). Only the functions with
    records in the window appear, by name; `until` None is now."""
    if until is None:
        until = time.time()
    cursor = _plain(conn)
    result = {}
    # Counted by SQLite, then only the durations fetched (in CPU time: 55 ms for a day of
    # 100,000 records against 95 ms fetching status and cold too and counting in Python).
    with _snapshot(conn):
        for function in functions(conn):
            args = (function, since, until)
            calls, errors, cold = cursor.execute(_COUNTS, args).fetchone()
            if calls:
                durations = [row[0] for row in cursor.execute(_DURATIONS, args)]
                result[function] = _figures(durations, errors, cold)
    return result


def functions(conn: Connection) -> list[str]:
    """The functions with records, by name: one index seek each, from the previous name to the
    next (SELECT DISTINCT would walk every record's index entry: 5 ms for 100,000)."""
    names = []
    row = conn.execute("SELECT MIN(function) FROM invocations").fetchone()
    while row[0] is not None:
        names.append(row[0])
        row = conn.execute("SELECT MIN(function) FROM invocations WHERE function > ?",
                           (row[0],)).fetchone()
    return names


def series(conn: Connection, function: str, since: float, until: float,
           buckets: int) -> list[dict]:
    """`buckets` equal time buckets of [since, until): [{"start", "calls", "errors", "p50",
    "p99", "coldStarts"}], oldest first, empty buckets with zeros/None."""
    if buckets < 1 or not until > since:
        raise ValueError(f"series: expected buckets >= 1 and since < until, got {buckets} "
                         f"buckets over [{since}, {until})")
    width = (until - since) / buckets
    grouped: list[list] = [[] for _ in range(buckets)]
    for row in _plain(conn).execute(_ROWS, (function, since, until)):
        # min(): a start just below `until` may round up to `buckets` in float division.
        grouped[min(int((row[0] - since) / width), buckets - 1)].append(row)
    return [{"start": since + i * width, **_figures(*_group(rows))}
            for i, rows in enumerate(grouped)]

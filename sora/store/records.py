"""Invocation records: what the store holds, how it is pruned and read back.

Workers do not write the store themselves: they send records and log lines to the recorder
process (`sora.store.recorder`) in one message per loop turn, so the invocation path pays for a
tuple and a formatted line, never for a database write or a lock.

The same SQL serves both backends (sora.store.backend); where they differ it says so: a record
stored again (an event's retry keeps its request id) replaces the old one and takes a new id
(SQLite's INSERT OR REPLACE; on PostgreSQL a DELETE and an INSERT in the same transaction),
and the store's size is measured by SQLite's pages only (`store_bytes`).
"""
from __future__ import annotations

import time
from typing import Callable

from .backend import Connection

STATUSES = ("ok", "error", "timeout", "crashed")


RECORD_COLUMNS = ("request_id", "function", "version", "trigger", "start", "duration_ms",
                  "status", "error_type", "cold", "error_message", "max_memory_mb",
                  "init_duration_ms")
LINE_COLUMNS = ("function", "request_id", "time", "stream", "line")
_INSERT_RECORD = (f"INSERT INTO invocations ({', '.join(RECORD_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(RECORD_COLUMNS))})")


def commit(conn: Connection, records: list[tuple], lines: list[tuple],
           batches: dict[bytes, int] | None = None) -> None:
    """Write a batch in one transaction: record rows (request id, function, version, trigger,
    start, duration ms, status, error type, cold, error message, max memory used MB, init
    duration ms) and log lines (function, request id, time,
    stream, text), as `recorder.parse` makes them, and the last batch of each sender they came
    from (`batches`: sender key -> seq), so that none of those batches is stored again."""
    if not records and not lines and not batches:
        return
    with conn.transaction():
        if batches:
            now = time.time()
            conn.executemany("INSERT INTO record_senders (sender, last_batch, seen) "
                             "VALUES (?, ?, ?) ON CONFLICT (sender) DO UPDATE SET "
                             "last_batch = excluded.last_batch, seen = excluded.seen",
                             [(key.decode(), seq, now) for key, seq in batches.items()])
        if conn.dialect == "sqlite":
            conn.executemany("INSERT INTO log_lines (function, request_id, time, stream, "
                             "line) VALUES (?, ?, ?, ?, ?)", lines)
            conn.executemany("INSERT OR REPLACE" + _INSERT_RECORD[6:], records)
            return
        # PostgreSQL: COPY, one round trip per table (INSERTs, even pipelined, stored about
        # half as many records a second: bench/records_rate.py). The last record of each
        # request id replaces any stored one, as INSERT OR REPLACE does.
        if lines:
            conn.copy_rows("log_lines", LINE_COLUMNS, lines)
        if records:
            latest, seen = [], set()      # each id's last record, in the order of those
            for record in reversed(records):
                if record[0] not in seen:
                    seen.add(record[0])
                    latest.append(record)
            latest.reverse()
            conn.execute("DELETE FROM invocations WHERE request_id = ANY(?)",
                         ([record[0] for record in latest],))
            conn.copy_rows("invocations", RECORD_COLUMNS, latest)


def last_batches(conn: Connection) -> dict[bytes, int]:
    """Sender key -> the last of its batches committed."""
    return {row[0].encode(): row[1] for row in
            conn.execute("SELECT sender, last_batch FROM record_senders")}


def forget_senders(conn: Connection, before: float) -> list[bytes]:
    """Forget the senders not heard from since `before`; returns their keys."""
    with conn.transaction():
        return [row[0].encode() for row in conn.execute(
            "DELETE FROM record_senders WHERE seen < ? RETURNING sender", (before,))]


def prune(conn: Connection, max_per_function: int, max_age_seconds: float) -> int:
    """Keep at most `max_per_function` records per function and none older than the age;
    log lines go with their records, and any line older than the age goes too (lines printed
    outside an invocation). Returns how many records were removed."""
    cutoff = time.time() - max_age_seconds
    doomed = [("start < ?", (cutoff,))]
    with conn.transaction():
        for (function,) in conn.execute("SELECT DISTINCT function FROM invocations").fetchall():
            row = conn.execute("SELECT id FROM invocations WHERE function = ? ORDER BY id DESC "
                               "LIMIT 1 OFFSET ?", (function, max_per_function)).fetchone()
            if row is not None:
                doomed.append(("function = ? AND id <= ?", (function, row[0])))
        removed = 0
        for where, args in doomed:
            conn.execute("DELETE FROM log_lines WHERE request_id IN "
                         f"(SELECT request_id FROM invocations WHERE {where})", args)
            removed += conn.execute(f"DELETE FROM invocations WHERE {where}", args).rowcount
        conn.execute("DELETE FROM log_lines WHERE time < ?", (cutoff,))
    return removed


def store_bytes(conn: Connection) -> int:
    """SQLite: bytes of the store's pages in use (its file less the free pages it will
    reuse): two header reads, no scan. PostgreSQL: the records tables' size on disk with their
    indexes and TOAST (pg_total_relation_size), which a delete does not lower (the space is
    reused, not given back, until a VACUUM FULL): shown, never pruned to (sora.store.recorder
    keeps records.maxStoreMB for SQLite only)."""
    if conn.dialect == "postgresql":
        return conn.execute("SELECT pg_total_relation_size('invocations') + "
                            "pg_total_relation_size('log_lines')").fetchone()[0]
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * page_size


def prune_to_size(conn: Connection, target: int, step: int,
                  after_round: Callable[[Connection], None] | None = None,
                  rounds: int = 32) -> int:
    """Delete the oldest log lines and records, oldest first, until the pages in use fit in
    `target` bytes. Each round deletes, of both tables, the oldest share of ids that the
    excess (at most `step` bytes: a delete writes what it changes into the WAL) is of the
    whole (ids are in order of arrival, so an id range is a range of ages and a delete walks
    a contiguous part of each index, freeing whole pages), then calls `after_round` (the
    recorder checkpoints the WAL there). Returns how many records were removed."""
    removed = 0
    for _ in range(rounds):
        used = store_bytes(conn)
        if used <= target:
            break
        share = min(1.0, min(used - target, step) / used + 0.01)
        with conn.transaction():
            lo, hi = conn.execute("SELECT MIN(id), MAX(id) FROM invocations").fetchone()
            if lo is not None:
                cut = lo + int((hi - lo + 1) * share)
                conn.execute("DELETE FROM log_lines WHERE request_id IN "
                             "(SELECT request_id FROM invocations WHERE id < ?)", (cut,))
                removed += conn.execute("DELETE FROM invocations WHERE id < ?",
                                        (cut,)).rowcount
            lo, hi = conn.execute("SELECT MIN(id), MAX(id) FROM log_lines").fetchone()
            if lo is not None:
                conn.execute("DELETE FROM log_lines WHERE id < ?",
                             (lo + int((hi - lo + 1) * share),))
        if after_round is not None:
            after_round(conn)
    return removed


TRIGGER_KINDS = ("schedule", "file")


def trigger_fields(stored: str) -> dict:
    """How a stored trigger shows: a scheduled or file trigger's firing is stored as its
    route, `schedule:N` / `file:N` (N: its index in the function's `trigger` list), and shown
    as `{"trigger": "schedule", "triggerIndex": N}`; any other as it is."""
    kind, _, index = stored.partition(":")
    if kind in TRIGGER_KINDS and index.isdigit():
        return {"trigger": kind, "triggerIndex": int(index)}
    return {"trigger": stored}


def _invocation(row) -> dict:
    return {"requestId": row["request_id"], "function": row["function"],
            "version": row["version"], **trigger_fields(row["trigger"]), "start": row["start"],
            "durationMs": round(row["duration_ms"], 3), "status": row["status"],
            "errorType": row["error_type"], "errorMessage": row["error_message"],
            "cold": bool(row["cold"]), **_reported(row)}


def _reported(row) -> dict:
    """The REPORT line's figures that the record keeps: Max Memory Used (not for an invocation
    no instance ran) and Init Duration (cold starts only)."""
    reported = {}
    if row["max_memory_mb"] is not None:
        reported["maxMemoryUsedMB"] = row["max_memory_mb"]
    if row["init_duration_ms"] is not None:
        reported["initDurationMs"] = round(row["init_duration_ms"], 2)
    return reported


def list_invocations(conn: Connection, function: str, status: str | None = None,
                     since: float | None = None, limit: int = 50,
                     cursor: int | None = None) -> tuple[list[dict], int | None]:
    """Newest first; returns the page and the cursor of the next page (None at the end)."""
    sql = "SELECT * FROM invocations WHERE function = ?"
    args: list = [function]
    if status is not None:
        sql += " AND status = ?"
        args.append(status)
    if since is not None:
        sql += " AND start >= ?"
        args.append(since)
    if cursor is not None:
        sql += " AND id < ?"
        args.append(cursor)
    sql += " ORDER BY id DESC LIMIT ?"
    rows = conn.execute(sql, (*args, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [_invocation(r) for r in rows], (rows[-1]["id"] if more else None)


def get_invocation(conn: Connection, request_id: str) -> dict | None:
    row = conn.execute("SELECT * FROM invocations WHERE request_id = ?",
                       (request_id,)).fetchone()
    if row is None:
        return None
    result = _invocation(row)
    # Only lines its own function's worker stored: a worker stores lines under the ids its
    # instances' markers name, and no other function's lines belong in this record.
    result["logs"] = [_line(r) for r in conn.execute(
        "SELECT * FROM log_lines WHERE request_id = ? AND function = ? ORDER BY id",
        (request_id, row["function"]))]
    return result


def _line(row) -> dict:
    return {"id": row["id"], "time": row["time"], "requestId": row["request_id"],
            "stream": row["stream"], "line": row["line"]}


def log_lines(conn: Connection, function: str, after: int = 0,
              request_id: str | None = None, limit: int = 1000) -> list[dict]:
    """A function's log lines with ids above `after`, oldest first (the follow cursor)."""
    sql = "SELECT * FROM log_lines WHERE function = ? AND id > ?"
    args: list = [function, after]
    if request_id is not None:
        sql += " AND request_id = ?"
        args.append(request_id)
    return [_line(r) for r in conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit))]


def log_lines_between(conn: Connection, function: str, low: int, high: int,
                      request_id: str | None = None, limit: int = 10_000) -> list[dict]:
    """A function's log lines with ids in (low, high], oldest first: what a follower reads
    again behind its cursor (sora.gateway.log_follow) for lines committed late."""
    sql = "SELECT * FROM log_lines WHERE function = ? AND id > ? AND id <= ?"
    args: list = [function, low, high]
    if request_id is not None:
        sql += " AND request_id = ?"
        args.append(request_id)
    return [_line(r) for r in conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit))]


def recent_log_lines(conn: Connection, function: str, limit: int) -> list[dict]:
    """A function's last `limit` log lines, oldest first: what a live tail shows before it
    follows (the dashboard's logs page), so the page is not empty until the next line."""
    rows = conn.execute("SELECT * FROM log_lines WHERE function = ? ORDER BY id DESC LIMIT ?",
                        (function, limit)).fetchall()
    return [_line(r) for r in reversed(rows)]


def last_log_id(conn: Connection, function: str) -> int:
    row = conn.execute("SELECT MAX(id) FROM log_lines WHERE function = ?",
                       (function,)).fetchone()
    return row[0] or 0


def status_of(conn: Connection, request_id: str) -> str | None:
    """The recorded status of one invocation (ok, error, timeout, crashed), or None: what the
    triggers' listing shows for a firing's run, without reading its log lines."""
    row = conn.execute("SELECT status FROM invocations WHERE request_id = ?",
                       (request_id,)).fetchone()
    return None if row is None else row["status"]

"""The triggers' state in queue.db: what each trigger fired, and when.

A trigger's firing is a row of the existing `events` table (its `trigger` column, the route,
is `schedule:N` or `file:N`), so retries, the dead-letter list and replay are the queue's.
What this module adds is, per trigger (function + the trigger's stable key):

- `trigger_state`: when it was first seen (a rate()'s anchor), the last due time it handled
  (fired or skipped: a restart never fires a time twice) and its last firing;
- `trigger_firings`: the recent firings and skips, newest last, for `status` and the API.

A firing is ONE transaction: the caps check, the event's insert, the state's update, the
history's row and the caller's own update (`also`, the file watcher's seen-state). A crash
leaves all of them or none, so a due time is fired once and a file is processed once.
"""
from __future__ import annotations

import sqlite3
import uuid
from typing import Callable

from . import queue

SCHEMA = """
CREATE TABLE IF NOT EXISTS trigger_state (
    function        TEXT NOT NULL,
    trigger_key     TEXT NOT NULL,            -- the trigger's key (ScheduleTrigger.key ...)
    first_seen      REAL,                     -- epoch seconds: a rate() counts from it
    last_due        REAL,                     -- the last due time handled (fired or skipped)
    last_fired      REAL,                     -- when the last firing or skip was decided
    last_request_id TEXT,                     -- the last enqueued firing's event
    last_outcome    TEXT,                     -- enqueued | skipped
    last_reason     TEXT,                     -- why it was skipped
    paused          INTEGER NOT NULL DEFAULT 0, -- 1: seen disabled (`enabled: false`)
    PRIMARY KEY (function, trigger_key)
);
CREATE TABLE IF NOT EXISTS trigger_firings (
    id          INTEGER PRIMARY KEY,
    function    TEXT NOT NULL,
    trigger_key TEXT NOT NULL,
    route       TEXT NOT NULL,                -- schedule:N | file:N
    due         REAL NOT NULL,
    fired       REAL NOT NULL,
    request_id  TEXT,                         -- NULL: skipped
    outcome     TEXT NOT NULL,                -- enqueued | skipped
    reason      TEXT
);
CREATE INDEX IF NOT EXISTS trigger_firings_by_key ON trigger_firings (function, trigger_key, id);
"""

# The history kept per trigger: enough to show, small enough never to grow.
KEEP_FIRINGS = 100


class AlreadyFired(Exception):
    """The due time was handled already (by this process before a crash, or another)."""


def ensure_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def _missing_table(exc: sqlite3.OperationalError) -> bool:
    return "no such table" in str(exc)


def _record(conn: sqlite3.Connection, function: str, route: str, trigger_key: str, due: float,
            now: float, request_id: str | None, outcome: str, reason: str | None,
            advance: bool) -> None:
    conn.execute(
        "INSERT INTO trigger_state (function, trigger_key, first_seen, last_due, last_fired, "
        "last_request_id, last_outcome, last_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (function, trigger_key) DO UPDATE SET "
        "last_due = CASE WHEN ? THEN MAX(COALESCE(last_due, excluded.last_due), "
        "excluded.last_due) ELSE last_due END, "
        "last_fired = excluded.last_fired, "
        "last_request_id = COALESCE(excluded.last_request_id, last_request_id), "
        "last_outcome = excluded.last_outcome, last_reason = excluded.last_reason",
        (function, trigger_key, now, due if advance else None, now, request_id, outcome,
         reason, 1 if advance else 0))
    conn.execute("INSERT INTO trigger_firings (function, trigger_key, route, due, fired, "
                 "request_id, outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (function, trigger_key, route, due, now, request_id, outcome, reason))
    conn.execute("DELETE FROM trigger_firings WHERE function = ? AND trigger_key = ? AND id <= "
                 "(SELECT id FROM trigger_firings WHERE function = ? AND trigger_key = ? "
                 "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                 (function, trigger_key, function, trigger_key, KEEP_FIRINGS))


def _check_once(conn: sqlite3.Connection, function: str, trigger_key: str, due: float) -> None:
    row = conn.execute("SELECT last_due FROM trigger_state WHERE function = ? AND "
                       "trigger_key = ?", (function, trigger_key)).fetchone()
    if row is not None and row[0] is not None and row[0] >= due:
        raise AlreadyFired(f"{function} {trigger_key}: {due} was handled already")


def fire(conn: sqlite3.Connection, function: str, route: str, trigger_key: str,
         payload: bytes, due: float, now: float, caps: tuple[int, int] | None, *,
         also: Callable[[sqlite3.Connection], None] | None = None,
         request_id: str | None = None, once: bool = False, advance: bool = True
         ) -> str | None:
    """Enqueue one firing; returns its request id, or None when the function's caps
    (most events, most payload bytes stored) refused it: then nothing is stored and `also`
    is not run.

    `once`: raise AlreadyFired if `due` is not later than the last due time handled (a
    schedule's guard against firing a time twice). `advance=False` (a manual firing) leaves
    the last due time as it was, so the schedule's own times still fire."""
    request_id = request_id or str(uuid.uuid4())
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        if once:
            _check_once(conn, function, trigger_key, due)
        if caps is not None:
            events, size = queue.stored_totals(conn, function)
            if events >= caps[0] or size + len(payload) > caps[1]:
                return None
        conn.execute("INSERT INTO events (request_id, function, trigger, payload, accepted, "
                     "state, due) VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                     (request_id, function, route, payload, now, now))
        _record(conn, function, route, trigger_key, due, now, request_id, "enqueued", None,
                advance)
        if also is not None:
            also(conn)
    return request_id


def skip(conn: sqlite3.Connection, function: str, route: str, trigger_key: str, due: float,
         now: float, reason: str, *, advance: bool = True) -> None:
    """A firing not enqueued (Overlap, QueueFull, Missed, LowDisk): the due time counts as
    handled and the history says why."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        _record(conn, function, route, trigger_key, due, now, None, "skipped", reason,
                advance)


def state(conn: sqlite3.Connection, function: str, trigger_key: str) -> dict | None:
    """first_seen, last_due, last_fired, last_request_id, last_outcome, last_reason, paused."""
    try:
        row = conn.execute("SELECT * FROM trigger_state WHERE function = ? AND trigger_key = ?",
                           (function, trigger_key)).fetchone()
    except sqlite3.OperationalError as exc:
        if _missing_table(exc):
            return None
        raise
    if row is None:
        return None
    return {name: row[name] for name in ("first_seen", "last_due", "last_fired",
                                         "last_request_id", "last_outcome", "last_reason",
                                         "paused")}


def first_seen(conn: sqlite3.Connection, function: str, trigger_key: str, now: float) -> float:
    """When the trigger was first seen on this host (persisted on the first call): a rate()
    schedule fires at first_seen + k·period, across restarts."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO trigger_state (function, trigger_key, first_seen) "
                     "VALUES (?, ?, ?) ON CONFLICT (function, trigger_key) DO UPDATE SET "
                     "first_seen = COALESCE(first_seen, excluded.first_seen)",
                     (function, trigger_key, now))
        row = conn.execute("SELECT first_seen FROM trigger_state WHERE function = ? AND "
                           "trigger_key = ?", (function, trigger_key)).fetchone()
    return row[0]


def set_paused(conn: sqlite3.Connection, function: str, trigger_key: str, paused: bool,
               now: float) -> bool:
    """Note that the trigger is disabled (`paused`) or running again; returns whether it was
    paused before. The times a disabled schedule passes are not missed: when it is enabled
    again it starts from then (sora.triggers.scheduler), even across a restart."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT paused FROM trigger_state WHERE function = ? AND "
                           "trigger_key = ?", (function, trigger_key)).fetchone()
        was = bool(row[0]) if row is not None else False
        if was != paused or row is None:
            conn.execute("INSERT INTO trigger_state (function, trigger_key, first_seen, paused) "
                         "VALUES (?, ?, ?, ?) ON CONFLICT (function, trigger_key) DO UPDATE "
                         "SET paused = excluded.paused", (function, trigger_key, now,
                                                          int(paused)))
    return was


def firings(conn: sqlite3.Connection, function: str, trigger_key: str,
            limit: int = 10) -> list[dict]:
    """The latest firings and skips, newest first."""
    try:
        rows = conn.execute("SELECT * FROM trigger_firings WHERE function = ? AND "
                            "trigger_key = ? ORDER BY id DESC LIMIT ?",
                            (function, trigger_key, limit)).fetchall()
    except sqlite3.OperationalError as exc:
        if _missing_table(exc):
            return []
        raise
    return [{"route": r["route"], "due": r["due"], "fired": r["fired"],
             "requestId": r["request_id"], "outcome": r["outcome"], "reason": r["reason"]}
            for r in rows]


def in_flight(conn: sqlite3.Connection, request_id: str | None) -> bool:
    """The event is still queued or leased (running): `overlap: forbid` skips meanwhile.
    A dead-lettered or acknowledged one is over."""
    if request_id is None:
        return False
    row = conn.execute("SELECT state FROM events WHERE request_id = ?",
                       (request_id,)).fetchone()
    return row is not None and row[0] in ("queued", "leased")

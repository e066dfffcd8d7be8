"""The triggers' state in the store: what each trigger fired, and when.

A trigger's firing is a row of the existing `events` table (its `trigger` column, the route,
is `schedule:N` or `file:N`), so retries, the dead-letter list and replay are the queue's.
What this module adds is, per trigger (function + the trigger's stable key):

- `trigger_state`: when it was first seen (a rate()'s anchor), the last due time it handled
  (fired or skipped: a restart never fires a time twice) and its last firing;
- `trigger_firings`: the recent firings and skips, newest last, for `status` and the API.

A firing is ONE transaction: the caps check, the event's insert, the state's update, the
history's row and the caller's own update (`also`, the file watcher's seen-state). A crash
leaves all of them or none, so a due time is fired once and a file is processed once.

Both store backends (sora.store.backend): the tables are sora.store.schema's, in queue.db on
SQLite and in the one database on PostgreSQL, where every host of a cluster shares them. There
a schedule's due time fires once cluster-wide: `fire(once=True)` and `skip(once=True)` take the
trigger's state row with `SELECT ... FOR UPDATE` before deciding, so a second host deciding the
same due time waits for the first one's commit, then sees the time handled (AlreadyFired). On
SQLite, BEGIN IMMEDIATE already makes every decision one at a time.
"""
from __future__ import annotations

import uuid
from typing import Callable

from . import queue

# The history kept per trigger: enough to show, small enough never to grow.
KEEP_FIRINGS = 100


class AlreadyFired(Exception):
    """The due time was handled already (by this process before a crash, or by another host
    sharing the store)."""


def _greatest(conn) -> str:
    """The larger of two values: SQLite's scalar max() is PostgreSQL's GREATEST()."""
    return "GREATEST" if conn.dialect == "postgresql" else "MAX"


def _record(conn, function: str, route: str, trigger_key: str, due: float, now: float,
            request_id: str | None, outcome: str, reason: str | None, advance: bool) -> None:
    conn.execute(
        "INSERT INTO trigger_state (function, trigger_key, first_seen, last_due, last_fired, "
        "last_request_id, last_outcome, last_reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (function, trigger_key) DO UPDATE SET "
        f"last_due = CASE WHEN ? THEN {_greatest(conn)}("
        "COALESCE(trigger_state.last_due, excluded.last_due), excluded.last_due) "
        "ELSE trigger_state.last_due END, "
        "last_fired = excluded.last_fired, "
        "last_request_id = COALESCE(excluded.last_request_id, trigger_state.last_request_id), "
        "last_outcome = excluded.last_outcome, last_reason = excluded.last_reason",
        (function, trigger_key, now, due if advance else None, now, request_id, outcome,
         reason, bool(advance)))
    conn.execute("INSERT INTO trigger_firings (function, trigger_key, route, due, fired, "
                 "request_id, outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                 (function, trigger_key, route, due, now, request_id, outcome, reason))
    conn.execute("DELETE FROM trigger_firings WHERE function = ? AND trigger_key = ? AND id <= "
                 "(SELECT id FROM trigger_firings WHERE function = ? AND trigger_key = ? "
                 "ORDER BY id DESC LIMIT 1 OFFSET ?)",
                 (function, trigger_key, function, trigger_key, KEEP_FIRINGS))


def _check_once(conn, function: str, trigger_key: str, due: float, now: float) -> None:
    """Raise AlreadyFired when `due` is not later than the last due time handled. Inside the
    caller's transaction; on PostgreSQL the state row is made if missing and then locked until
    the commit, so another host's check of the same trigger waits and then sees this one's
    decision (READ COMMITTED re-reads a row it waited for)."""
    if conn.dialect == "postgresql":
        conn.execute("INSERT INTO trigger_state (function, trigger_key, first_seen) "
                     "VALUES (?, ?, ?) ON CONFLICT (function, trigger_key) DO NOTHING",
                     (function, trigger_key, now))
        lock = " FOR UPDATE"
    else:
        lock = ""              # BEGIN IMMEDIATE: this transaction is the only writer
    row = conn.execute("SELECT last_due FROM trigger_state WHERE function = ? AND "
                       "trigger_key = ?" + lock, (function, trigger_key)).fetchone()
    if row is not None and row[0] is not None and row[0] >= due:
        raise AlreadyFired(f"{function} {trigger_key}: {due} was handled already")


def _refused_by_caps(conn, function: str, size: int, caps: tuple[int, int]) -> bool:
    """The function's caps (most events, most payload bytes stored) leave no room for one more
    event of `size` bytes: the queue's own check (sora.store.queue). On PostgreSQL the
    function's totals row stays locked until the firing commits, as intake holds it, so
    gateways and trigger services of several hosts cannot pass a cap together."""
    events, stored = queue.stored_totals(conn, function, lock=True)
    return events >= caps[0] or stored + size > caps[1]


def fire(conn, function: str, route: str, trigger_key: str, payload: bytes, due: float,
         now: float, caps: tuple[int, int] | None, *, also: Callable | None = None,
         request_id: str | None = None, once: bool = False, advance: bool = True
         ) -> str | None:
    """Enqueue one firing; returns its request id, or None when the function's caps
    (most events, most payload bytes stored) refused it: then nothing is stored and `also`
    is not run.

    `once`: raise AlreadyFired if `due` is not later than the last due time handled (a
    schedule's guard against firing a time twice, on this host or any other sharing the
    store). `advance=False` (a manual firing) leaves the last due time as it was, so the
    schedule's own times still fire; manual firings are never deduplicated."""
    request_id = request_id or str(uuid.uuid4())
    with conn.transaction():
        if once:
            _check_once(conn, function, trigger_key, due, now)
        if caps is not None and _refused_by_caps(conn, function, len(payload), caps):
            return None
        conn.execute("INSERT INTO events (request_id, function, trigger, payload, accepted, "
                     "state, due) VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                     (request_id, function, route, payload, now, now))
        _record(conn, function, route, trigger_key, due, now, request_id, "enqueued", None,
                advance)
        if also is not None:
            also(conn)
    return request_id


def skip(conn, function: str, route: str, trigger_key: str, due: float, now: float,
         reason: str, *, advance: bool = True, once: bool = False) -> None:
    """A firing not enqueued (Overlap, QueueFull, Missed, LowDisk): the due time counts as
    handled and the history says why. `once`: raise AlreadyFired if the due time was handled
    already (another host fired or skipped it: its outcome stands, one entry per due time)."""
    with conn.transaction():
        if once:
            _check_once(conn, function, trigger_key, due, now)
        _record(conn, function, route, trigger_key, due, now, None, "skipped", reason,
                advance)


def state(conn, function: str, trigger_key: str) -> dict | None:
    """first_seen, last_due, last_fired, last_request_id, last_outcome, last_reason, paused."""
    row = conn.execute("SELECT * FROM trigger_state WHERE function = ? AND trigger_key = ?",
                       (function, trigger_key)).fetchone()
    if row is None:
        return None
    return {name: row[name] for name in ("first_seen", "last_due", "last_fired",
                                         "last_request_id", "last_outcome", "last_reason",
                                         "paused")}


def first_seen(conn, function: str, trigger_key: str, now: float) -> float:
    """When the trigger was first seen (persisted on the first call): a rate() schedule fires
    at first_seen + k·period, across restarts and, on a shared store, on every host alike."""
    with conn.transaction():
        conn.execute("INSERT INTO trigger_state (function, trigger_key, first_seen) "
                     "VALUES (?, ?, ?) ON CONFLICT (function, trigger_key) DO UPDATE SET "
                     "first_seen = COALESCE(trigger_state.first_seen, excluded.first_seen)",
                     (function, trigger_key, now))
        row = conn.execute("SELECT first_seen FROM trigger_state WHERE function = ? AND "
                           "trigger_key = ?", (function, trigger_key)).fetchone()
    return row[0]


def set_paused(conn, function: str, trigger_key: str, paused: bool, now: float) -> bool:
    """Note that the trigger is disabled (`paused`) or running again; returns whether it was
    paused before. The times a disabled schedule passes are not missed: when it is enabled
    again it starts from then (sora.triggers.scheduler), even across a restart; and the last
    due time handled moves up to `now`, so another host sharing the store, enabling it a
    moment later (it finds it no longer paused), does not take those times as missed."""
    with conn.transaction():
        row = conn.execute("SELECT paused FROM trigger_state WHERE function = ? AND "
                           "trigger_key = ?", (function, trigger_key)).fetchone()
        was = bool(row[0]) if row is not None else False
        if was != paused or row is None:
            conn.execute("INSERT INTO trigger_state (function, trigger_key, first_seen, paused) "
                         "VALUES (?, ?, ?, ?) ON CONFLICT (function, trigger_key) DO UPDATE "
                         "SET paused = excluded.paused", (function, trigger_key, now,
                                                          int(paused)))
        if was and not paused:
            conn.execute(f"UPDATE trigger_state SET last_due = {_greatest(conn)}("
                         "COALESCE(last_due, ?), ?) WHERE function = ? AND trigger_key = ?",
                         (now, now, function, trigger_key))
    return was


def firings(conn, function: str, trigger_key: str, limit: int = 10) -> list[dict]:
    """The latest firings and skips, newest first."""
    rows = conn.execute("SELECT * FROM trigger_firings WHERE function = ? AND "
                        "trigger_key = ? ORDER BY id DESC LIMIT ?",
                        (function, trigger_key, limit)).fetchall()
    return [{"route": r["route"], "due": r["due"], "fired": r["fired"],
             "requestId": r["request_id"], "outcome": r["outcome"], "reason": r["reason"]}
            for r in rows]


def in_flight(conn, request_id: str | None) -> bool:
    """The event is still queued or leased (running): `overlap: forbid` skips meanwhile.
    A dead-lettered or acknowledged one is over."""
    if request_id is None:
        return False
    row = conn.execute("SELECT state FROM events WHERE request_id = ?",
                       (request_id,)).fetchone()
    return row is not None and row[0] in ("queued", "leased")

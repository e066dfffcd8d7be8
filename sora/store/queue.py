"""The event queue: asynchronous invocations, from acceptance to acknowledgement.

An event is committed (synchronous=FULL, see db.connect_queue) before the caller gets 202. The
dispatcher leases events (state `leased`, an attempt counted, a lease deadline) rather than
deleting them on read; only a success acknowledges (deletes) one. A failure puts it back
`queued` with a later `due`, or, when its retries or its age are used up, `dead`: the
dead-letter list, kept with every attempt's error until replayed. Leases that no dispatcher
holds any more (it crashed, the host was killed) go back to `queued`, so an accepted event runs
at least once.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from .records import TRIGGER_KINDS, trigger_fields

EVENT_STATES = ("queued", "leased", "dead")


@dataclass(frozen=True)
class Event:
    id: int
    request_id: str
    function: str
    trigger: str
    payload: bytes
    accepted: float
    attempts: int      # including the attempt this lease is for


@dataclass(frozen=True)
class Attempt:
    """One failed attempt, as the dead-letter list shows it."""
    start: float
    duration_ms: float
    error_type: str
    error_message: str


def enqueue(conn: sqlite3.Connection, events: list[tuple[str, str, str, bytes, float]],
            caps: dict[str, tuple[int, int]] | None = None) -> list[bool]:
    """Store accepted events (request id, function, trigger, payload, time accepted) in one
    transaction; returns once they are durable, raises sqlite3.Error if they are not.

    `caps` gives per function the most events and payload bytes it may have stored (in any
    state); an event that would pass either is not stored. Returns, per event, whether it was
    stored. The check and the insert are one transaction, so gateways in other processes
    cannot pass a cap together."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        stored = [True] * len(events)
        if caps:
            totals = {fn: list(stored_totals(conn, fn)) for fn in {e[1] for e in events}}
            for i, (_, function, _, payload, _) in enumerate(events):
                cap, total = caps.get(function), totals[function]
                if cap is not None and (total[0] >= cap[0] or total[1] + len(payload) > cap[1]):
                    stored[i] = False
                else:
                    total[0] += 1
                    total[1] += len(payload)
        conn.executemany("INSERT INTO events (request_id, function, trigger, payload, "
                         "accepted, state, due) VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                         [(*event, event[4]) for event, ok in zip(events, stored) if ok])
    return stored


def stored_totals(conn: sqlite3.Connection, function: str) -> tuple[int, int]:
    """How many events the function has stored (in any state), and their payloads' bytes."""
    row = conn.execute("SELECT events, bytes FROM event_totals WHERE function = ?",
                       (function,)).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def release_leases(conn: sqlite3.Connection, now: float, expired_only: bool = True) -> int:
    """Put leased events back in the queue: those whose lease ran out, or (at a dispatcher's
    start, when no lease can still be held) all of them. The attempt stays counted."""
    sql = "UPDATE events SET state = 'queued', lease_until = NULL WHERE state = 'leased'"
    args: tuple = ()
    if expired_only:
        sql += " AND lease_until < ?"
        args = (now,)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        return conn.execute(sql, args).rowcount


def lease(conn: sqlite3.Connection, function: str, limit: int, now: float,
          lease_seconds: float) -> list[Event]:
    """Take up to `limit` due events of a function, the longest due first, and count an
    attempt.

    Only the one dispatcher leases, so the due events are found before the write lock is
    taken: a look that finds none costs no lock (gateways commit new events meanwhile).
    """
    rows = conn.execute(
        "SELECT id, request_id, function, trigger, payload, accepted, attempts FROM events "
        "WHERE function = ? AND state = 'queued' AND due <= ? ORDER BY due LIMIT ?",
        (function, now, limit)).fetchall()
    if not rows:
        return []
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("UPDATE events SET state = 'leased', attempts = attempts + 1, "
                         "lease_until = ? WHERE id = ? AND state = 'queued'",
                         [(now + lease_seconds, row["id"]) for row in rows])
    return [Event(row["id"], row["request_id"], row["function"], row["trigger"],
                  bytes(row["payload"]), row["accepted"], row["attempts"] + 1) for row in rows]


def ack(conn: sqlite3.Connection, event_id: int) -> None:
    """The event ran successfully: it and its attempts are purged."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM attempts WHERE event_id = ?", (event_id,))
        conn.execute("DELETE FROM events WHERE id = ?", (event_id,))


def _add_attempt(conn: sqlite3.Connection, event_id: int, attempt: Attempt | None) -> None:
    if attempt is not None:
        conn.execute("INSERT INTO attempts (event_id, start, duration_ms, error_type, "
                     "error_message) VALUES (?, ?, ?, ?, ?)",
                     (event_id, attempt.start, attempt.duration_ms, attempt.error_type,
                      attempt.error_message))


def requeue(conn: sqlite3.Connection, event_id: int, due: float, attempt: Attempt | None,
            counted: bool = True) -> None:
    """Back to the queue until `due`; with the failed attempt's error, or (`counted=False`,
    the function could not take it: throttled, not ready) without using up an attempt."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        _add_attempt(conn, event_id, attempt)
        conn.execute("UPDATE events SET state = 'queued', lease_until = NULL, due = ?, "
                     "attempts = attempts - ? WHERE id = ?", (due, 0 if counted else 1,
                                                               event_id))


def bury(conn: sqlite3.Connection, event_id: int, reason: str,
         attempt: Attempt | None) -> None:
    """Into the dead-letter list, with the last attempt's error."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        _add_attempt(conn, event_id, attempt)
        conn.execute("UPDATE events SET state = 'dead', lease_until = NULL, dead_reason = ? "
                     "WHERE id = ?", (reason, event_id))


def bury_expired(conn: sqlite3.Connection, function: str, cutoff: float, reason: str) -> int:
    """Dead-letter the function's queued events accepted before `cutoff` (too old to run)."""
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        return conn.execute("UPDATE events SET state = 'dead', dead_reason = ? WHERE "
                            "function = ? AND state = 'queued' AND accepted < ?",
                            (reason, function, cutoff)).rowcount


def next_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT MIN(due) FROM events WHERE state = 'queued'").fetchone()
    return row[0]


def queued_functions(conn: sqlite3.Connection, now: float) -> list[str]:
    """Functions with events due now."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT function FROM events WHERE state = 'queued' AND due <= ?", (now,))]


def queued_versions(conn: sqlite3.Connection, now: float) -> list[str]:
    """The published versions (`NAME:N`, resolved when the event was accepted) with events
    due now: the dispatcher runs them beside the functions it knows by name."""
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT function FROM events WHERE state = 'queued' AND due <= ? AND "
        "function LIKE '%:%'", (now,))]


def _attempts(conn: sqlite3.Connection, event_id: int) -> list[dict]:
    return [{"start": r["start"], "durationMs": round(r["duration_ms"], 3),
             "errorType": r["error_type"], "errorMessage": r["error_message"]}
            for r in conn.execute("SELECT * FROM attempts WHERE event_id = ? ORDER BY id",
                                  (event_id,))]


def _event(conn: sqlite3.Connection, row: sqlite3.Row, payload: bool) -> dict:
    # An event runs as trigger `event`, as its invocation records say; the route that
    # accepted it (`invoke`: the Invoke API, `http`: a function URL) is its `route`. A
    # scheduled or file trigger's firing (route `schedule:N` / `file:N`) runs as that trigger.
    shown = trigger_fields(row["trigger"])
    if shown["trigger"] not in TRIGGER_KINDS:
        shown = {"trigger": "event"}
    out = {"requestId": row["request_id"], "function": row["function"], **shown,
           "route": row["trigger"], "accepted": row["accepted"], "state": row["state"],
           "attempts": row["attempts"], "due": row["due"], "deadReason": row["dead_reason"],
           "errors": _attempts(conn, row["id"])}
    if payload:
        out["payload"] = bytes(row["payload"]).decode("utf-8", "replace")
    return out


def dead_letters(conn: sqlite3.Connection, function: str, limit: int = 50,
                 cursor: int | None = None) -> tuple[list[dict], int | None]:
    """The function's dead-letter list, oldest first, with each attempt's error."""
    sql = "SELECT * FROM events WHERE function = ? AND state = 'dead'"
    args: list = [function]
    if cursor is not None:
        sql += " AND id > ?"
        args.append(cursor)
    rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return [_event(conn, r, payload=True) for r in rows], (rows[-1]["id"] if more else None)


def _dead(function: str, request_ids: list[str] | None) -> tuple[str, list]:
    """The WHERE clause for a function's dead events: all of them, or those named."""
    where = "function = ? AND state = 'dead'"
    args: list = [function]
    if request_ids is not None:
        where += f" AND request_id IN ({', '.join('?' * len(request_ids))})"
        args += request_ids
    return where, args


def replay(conn: sqlite3.Connection, function: str, request_ids: list[str] | None,
           now: float) -> list[str]:
    """Dead events (all of the function's, or those named) back to the queue, as if accepted
    now, with their retries restored; earlier attempts' errors are kept. Returns their ids."""
    where, args = _dead(function, request_ids)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute(f"SELECT id, request_id FROM events WHERE {where}", args).fetchall()
        conn.executemany("UPDATE events SET state = 'queued', attempts = 0, due = ?, "
                         "accepted = ?, dead_reason = NULL WHERE id = ?",
                         [(now, now, r["id"]) for r in rows])
    return [r["request_id"] for r in rows]


def discard(conn: sqlite3.Connection, function: str, request_ids: list[str] | None) -> int:
    """Delete dead events (all of the function's, or those named) for good."""
    where, args = _dead(function, request_ids)
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"DELETE FROM attempts WHERE event_id IN (SELECT id FROM events WHERE "
                     f"{where})", args)
        return conn.execute(f"DELETE FROM events WHERE {where}", args).rowcount


def find_event(conn: sqlite3.Connection, request_id: str) -> dict | None:
    """An event not yet acknowledged (queued, leased or dead), without its payload."""
    row = conn.execute("SELECT * FROM events WHERE request_id = ?", (request_id,)).fetchone()
    return None if row is None else _event(conn, row, payload=False)


def counts(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    """Per function, how many events are in each state."""
    out: dict[str, dict[str, int]] = {}
    for function, state, n in conn.execute(
            "SELECT function, state, COUNT(*) FROM events GROUP BY function, state"):
        out.setdefault(function, dict.fromkeys(EVENT_STATES, 0))[state] = n
    return out
